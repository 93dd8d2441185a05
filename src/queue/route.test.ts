import { describe, expect, it } from "vitest";
import { DeploymentConfig } from "../config/schema.ts";
import { routeEvent } from "./route.ts";

const SHA = "6113728f27ae82c7b1a177c8d03f9e96e0adf246";

function deployment(name: string, repository: string, branch: string, enabled = true): DeploymentConfig & { name: string } {
  return { name, ...DeploymentConfig.parse({ repository, branch, remote: "/r.git", path: "/p", enabled }) };
}

const push = (full_name: string, ref: string, extra: Record<string, unknown> = {}) => ({
  event: "push",
  payload: { ref, after: SHA, deleted: false, repository: { full_name }, ...extra },
});

describe("routeEvent", () => {
  const deployments = [
    deployment("api", "Octo-Org/API", "main"),
    deployment("api-mirror", "octo-org/api", "main"),
    deployment("staging", "octo-org/api", "deploy-*"),
    deployment("off", "octo-org/api", "main", false),
  ];

  it("delivers to every enabled deployment of the repository (case-insensitive) and branch", () => {
    expect(routeEvent(push("octo-org/api", "refs/heads/main"), deployments)).toEqual({
      kind: "deliver",
      deployments: ["api", "api-mirror"],
      repository: "octo-org/api",
      ref: "refs/heads/main",
      after: SHA,
    });
    expect(routeEvent(push("OCTO-ORG/Api", "refs/heads/deploy-x"), deployments)).toMatchObject({ kind: "deliver", deployments: ["staging"] });
  });

  it.each([
    ["a tag push", push("octo-org/api", "refs/tags/v1"), /tag push/],
    ["a branch deletion", push("octo-org/api", "refs/heads/main", { deleted: true, after: "0".repeat(40) }), /branch deletion/],
    ["another event", { event: "issues", payload: {} }, /"issues" events do not deploy/],
    ["an unfollowed branch", push("octo-org/api", "refs/heads/other"), /no enabled deployment follows octo-org\/api branch other/],
    ["another repository", push("octo-org/other", "refs/heads/main"), /no enabled deployment/],
    ["a ref that is not a branch", push("octo-org/api", "refs/pull/1/head"), /not a branch/],
    ["a hostile ref", push("octo-org/api", "refs/heads/--upload-pack=x"), /not a valid branch name/],
    ["a bad sha", push("octo-org/api", "refs/heads/main", { after: "$(id)" }), /not a commit sha/],
    ["no repository", { event: "push", payload: { ref: "refs/heads/main", after: SHA } }, /no repository/],
    ["a non-object payload", { event: "push", payload: "x" }, /no repository/],
  ])("voids %s", (_what, entry, reason) => {
    const decision = routeEvent(entry, deployments);
    expect(decision.kind).toBe("void");
    expect(decision.kind === "void" && decision.reason).toMatch(reason);
  });

  it("says which branches the repository's enabled deployments follow, and why a matching one does not count", () => {
    const unfollowed = routeEvent(push("octo-org/api", "refs/heads/feature"), deployments);
    expect(unfollowed).toEqual({
      kind: "void",
      code: "unfollowed",
      reason: "no enabled deployment follows octo-org/api branch feature (api follows main; api-mirror follows main; staging follows deploy-*; off follows main but is disabled)",
      followed: ["main", "deploy-*"],
    });
    expect(routeEvent(push("OCTO-ORG/API", "refs/tags/v1"), deployments)).toMatchObject({ code: "tag", followed: ["main", "deploy-*"] });
    expect(routeEvent({ event: "issues", payload: { repository: { full_name: "octo-org/api" } } }, deployments)).toMatchObject({ code: "event", followed: ["main", "deploy-*"] });
    const onlyDisabled = routeEvent(push("octo-org/api", "refs/heads/main"), [deployment("off", "octo-org/api", "main", false)]);
    expect(onlyDisabled).toMatchObject({ code: "unfollowed", followed: [], reason: expect.stringMatching(/off follows main but is disabled/) });
    const elsewhere = routeEvent(push("someone/else", "refs/heads/main"), deployments);
    expect(elsewhere).toMatchObject({ code: "unfollowed", followed: [], reason: expect.stringMatching(/no deployment has repository = "someone\/else"/) });
  });

  it("sends a check event to the enabled deployments of its repository that require checks, and voids it for the others", () => {
    const gated = { ...deployment("gated", "octo-org/api", "main"), require_checks: ["test"] };
    const off = { ...deployment("gated-off", "octo-org/api", "main", false), require_checks: ["test"] };
    const all = [...deployments, gated, off];
    const checkRun = { event: "check_run", payload: { action: "completed", check_run: { head_sha: SHA }, repository: { full_name: "Octo-Org/Api" } } };
    expect(routeEvent(checkRun, all)).toEqual({ kind: "wake", deployments: ["gated"], repository: "Octo-Org/Api", sha: SHA });
    expect(routeEvent({ event: "status", payload: { sha: SHA, repository: { full_name: "octo-org/api" } } }, all)).toMatchObject({ kind: "wake", deployments: ["gated"] });
    const none = routeEvent(checkRun, deployments);
    expect(none).toMatchObject({ kind: "void", code: "event" });
    expect(none.kind === "void" && none.reason).toContain("no enabled deployment of its repository has require_checks");
    const noSha = routeEvent({ event: "check_suite", payload: { check_suite: {}, repository: { full_name: "octo-org/api" } } }, all);
    expect(noSha.kind === "void" && noSha.reason).toContain("names no commit sha");
  });
});
