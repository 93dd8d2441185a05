import { describe, expect, it } from "vitest";
import { classify } from "./client.ts";
import type { DeploymentStatusWrite, GithubWrite } from "./outbox.ts";
import { GithubReports } from "./reports.ts";

const sha = "a".repeat(40);
const head = "b".repeat(40);
const settings = (deployments: boolean) => ({ publicUrl: "https://deploy.example.com", dashboard: { path: "/dashboard" }, github: { apiUrl: "", writeIntervalMs: 0, timeoutMs: 100, deployments, redeliverIntervalMs: 0, allowlist: false } });
const deps = (writes: GithubWrite[]) => writes.filter((w): w is DeploymentStatusWrite => w.kind === "deployment_status");
const said = (w: DeploymentStatusWrite) => `${w.target.sha[0]} ${w.state}: ${w.description}`;

describe("GitHub reports", () => {
  const on = new GithubReports(settings(true), { name: "api", repository: "o/r", github: { environment: "production", production_environment: true, environment_url: "https://api.example.com" } });

  it("write commit statuses only, unless deployments are on (for all, or for this deployment)", () => {
    const off = new GithubReports(settings(false), { name: "api", repository: "o/r", github: undefined });
    expect(off.queued("e", sha).map((w) => w.kind)).toEqual(["status"]);
    const optedIn = new GithubReports(settings(false), { name: "api", repository: "o/r", github: { deployments: true } });
    expect(deps(optedIn.queued("e", sha)).map((w) => w.target.environment)).toEqual(["api"]);
    const optedOut = new GithubReports(settings(true), { name: "api", repository: "o/r", github: { deployments: false } });
    expect(deps(optedOut.queued("e", sha))).toEqual([]);
  });

  it("target the entry's deployment of the exact commit, in the configured environment, linked to the deploy", () => {
    const [w] = deps(on.started("e1", sha, 7, 2));
    expect(w).toMatchObject({
      state: "in_progress",
      description: "Deploying to api (attempt 2)",
      logUrl: "https://deploy.example.com/dashboard/deploys/7",
      environmentUrl: "https://api.example.com",
      target: { deployment: "api", entry: "e1", sha, repository: "o/r", context: "deployq/api", environment: "production", productionEnvironment: true },
    });
    expect(deps(on.queued("e1", sha))[0]!.logUrl).toBe("https://deploy.example.com/dashboard/deployments/api");
  });

  it("end every path in a final state", () => {
    expect(deps(on.succeeded("e", sha, 1, undefined)).map((w) => [said(w), w.replaces?.description])).toEqual([[`a success: Live on api`, "Replaced by aaaaaaa on api"]]);
    // The branch had moved on: the head gets a deployment of its own, the pushed commit is superseded.
    expect(deps(on.succeeded("e", head, 1, sha)).map(said)).toEqual(["b success: Live on api", "a inactive: Superseded: bbbbbbb was deployed to api instead"]);
    expect(deps(on.superseded("e", sha, head, undefined)).map(said)).toEqual(["a inactive: Superseded: bbbbbbb was deployed to api instead"]);
    expect(deps(on.superseded("e", sha, "1700000000000000000-x.json", undefined)).map(said)).toEqual(["a inactive: Superseded by a newer entry for api, deployed instead"]);
    expect(deps(on.failed("e", sha, 1, "build", head)).map(said)).toEqual(["a failure: The build failed on api; the previous release (bbbbbbb) is still serving"]);
    expect(deps(on.failed("e", sha, 1, "fetch", undefined)).map(said)).toEqual(["a error: deployq could not deploy it (fetch step); nothing was put live"]);
    expect(deps(on.cancelled("e", sha, 1, "alice")).map(said)).toEqual(["a error: Cancelled by alice; the previous release is still serving"]);
    expect(deps(on.branchDeleted("e", sha, 1)).map(said)).toEqual(["a error: Not deployed to api: its branch no longer exists"]);
    expect(deps(on.retrying("e", sha, 1, 1)).map(said)).toEqual(["a queued: Attempt 1 failed on a transient error; retrying"]);
    expect(deps(on.rolledBack("r", sha, head, 1)).map((w) => [said(w), w.replaces?.description])).toEqual([["a success: Live again on api: rolled back from bbbbbbb", "Rolled back on api: aaaaaaa is live instead"]]);
  });

  it("write nothing for what is not a full commit id", () => {
    for (const bad of [undefined, "abc", "0".repeat(40), "../../x"]) expect(on.queued("e", bad)).toEqual([]);
  });
});

describe("classify, for the Deployments API", () => {
  const error = (status: number) => Object.assign(new Error("nope"), { status, response: { headers: {}, data: { message: "nope" } } });
  it("names the Deployments permission", () => {
    expect(classify(error(404), undefined, Date.now(), "deployment")).toMatchObject({ kind: "permanent", message: expect.stringMatching(/"Deployments: read and write"/) });
    expect(classify(error(422), undefined, Date.now(), "deployment")).toMatchObject({ kind: "permanent", message: expect.stringMatching(/refused the deployment/) });
    expect(classify(error(403), undefined, Date.now(), "deployment")).toMatchObject({ kind: "transient", message: expect.stringMatching(/"Deployments: read and write"/) });
  });
});
