import { describe, expect, it } from "vitest";
import { checkEventSha, judgeChecks, nextChecksPoll } from "./checks.ts";
import type { CheckReading } from "./client.ts";

const SHA = "a".repeat(40);
const run = (name: string, state: CheckReading["state"], detail = state === "pending" ? "in_progress" : state): CheckReading => ({ name, source: "check run", state, detail, url: `https://ci/${name}` });
const status = (name: string, state: CheckReading["state"]): CheckReading => ({ name, source: "status", state, detail: state, url: undefined });

describe("judgeChecks", () => {
  it("passes only when every required name has succeeded, as a check run or a status context", () => {
    expect(judgeChecks(["test", "lint"], [run("test", "success"), status("lint", "success"), run("other", "failure")])).toEqual({ state: "passed" });
  });

  it("is pending on a name GitHub has not heard of yet, or one still running", () => {
    expect(judgeChecks(["test", "lint"], [run("test", "pending")])).toEqual({ state: "pending", pending: ["test", "lint"] });
    expect(judgeChecks(["test", "lint"], [run("test", "success")])).toEqual({ state: "pending", pending: ["lint"] });
    expect(judgeChecks(["test"], [])).toEqual({ state: "pending", pending: ["test"] });
  });

  it("fails on the first required name that failed anywhere, even while others are pending", () => {
    const verdict = judgeChecks(["test", "lint"], [run("test", "pending"), status("lint", "failure")]);
    expect(verdict).toEqual({ state: "failed", check: status("lint", "failure") });
    // A name both a check run and a status: the failed one counts.
    expect(judgeChecks(["test"], [run("test", "success"), status("test", "failure")]).state).toBe("failed");
  });

  it("ignores checks that are not required, whatever they say", () => {
    expect(judgeChecks(["test"], [run("test", "success"), run("flaky", "failure")])).toEqual({ state: "passed" });
  });
});

describe("checkEventSha", () => {
  it("reads the commit of each check event, and nothing that is not a full sha", () => {
    expect(checkEventSha("check_run", { check_run: { head_sha: SHA } })).toBe(SHA);
    expect(checkEventSha("check_suite", { check_suite: { head_sha: SHA } })).toBe(SHA);
    expect(checkEventSha("workflow_run", { workflow_run: { head_sha: SHA } })).toBe(SHA);
    expect(checkEventSha("status", { sha: SHA })).toBe(SHA);
    expect(checkEventSha("status", { sha: "main" })).toBeUndefined();
    expect(checkEventSha("check_run", { check_run: "x" })).toBeUndefined();
    expect(checkEventSha("push", { after: SHA })).toBeUndefined();
  });
});

describe("nextChecksPoll", () => {
  it("doubles from 5 s and stays at most a minute apart", () => {
    expect([0, 1, 2, 3, 4, 10].map(nextChecksPoll)).toEqual([5000, 10_000, 20_000, 40_000, 60_000, 60_000]);
  });
});
