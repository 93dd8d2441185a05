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
});
