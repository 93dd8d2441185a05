import { describe, expect, it } from "vitest";
import { hookEvents, hookEventsFor, hookUrl } from "./hooks.ts";

describe("webhook events", () => {
  it("a deployment without require_checks needs push only", () => {
    expect(hookEvents({ name: "api", require_checks: [] })).toEqual(["push"]);
  });

  it("a deployment with require_checks also needs every event that wakes a push waiting for its checks", () => {
    expect(hookEvents({ name: "api", require_checks: ["ci / test"] })).toEqual(["push", "check_run", "check_suite", "status", "workflow_run"]);
  });

  it("one hook for several deployments of a repository subscribes to the union, push first, once each", () => {
    const events = hookEventsFor([
      { name: "api", require_checks: [] },
      { name: "worker", require_checks: ["build"] },
      { name: "docs", require_checks: ["lint"] },
    ]);
    expect(events).toEqual(["push", "check_run", "check_suite", "status", "workflow_run"]);
    expect(hookEventsFor([{ name: "api", require_checks: [] }])).toEqual(["push"]);
  });

  it("the hook's URL is public_url + /github-webhook, whatever trailing slashes public_url has", () => {
    expect(hookUrl("https://deploy.example.com//")).toBe("https://deploy.example.com/github-webhook");
  });
});
