import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ConfigError } from "../errors.ts";
import { loadSettings } from "./load.ts";
import { reportsDeployments } from "../github/reports.ts";

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), "deployq-config-"));
});
afterAll(() => rm(dir, { recursive: true, force: true }));

async function settingsOf(toml: string, env: NodeJS.ProcessEnv = {}) {
  const file = path.join(dir, `c${Math.random().toString(36).slice(2)}.toml`);
  await writeFile(file, toml);
  return () => loadSettings({ configPath: file, env });
}

describe("[github] and GITHUB_API_URL: where and how commit statuses are sent", () => {
  it("defaults to api.github.com, a second between writes, 10 s per request", async () => {
    expect((await settingsOf(""))().github).toEqual({ apiUrl: "https://api.github.com", writeIntervalMs: 1000, timeoutMs: 10_000, deployments: false, redeliverIntervalMs: 300_000, allowlist: false });
  });

  it("takes GitHub Enterprise Server's API root from GITHUB_API_URL, without a trailing slash", async () => {
    const settings = (await settingsOf("[github]\nwrite_interval_ms = 0\ntimeout_ms = 500\nredeliver_interval_s = 0\n", { GITHUB_API_URL: "https://github.example.com/api/v3/", GITHUB_TOKEN: "t" }))();
    expect(settings.github).toEqual({ apiUrl: "https://github.example.com/api/v3", writeIntervalMs: 0, timeoutMs: 500, deployments: false, redeliverIntervalMs: 0, allowlist: false });
    expect(settings.secrets.githubToken).toBe("t");
  });

  it.each(["github.example.com", "ftp://github.example.com", "https://user:pw@github.example.com/api/v3"])("refuses GITHUB_API_URL=%j", async (url) => {
    expect(await settingsOf("", { GITHUB_API_URL: url })).toThrow(/GITHUB_API_URL must be the http\(s\) address/);
  });

  it.each([
    ["[github]\nwrite_interval_ms = -1\n", /github\.write_interval_ms/],
    ["[github]\ntimeout_ms = 10\n", /github\.timeout_ms/],
    ["[github]\nredeliver_interval_s = -5\n", /github\.redeliver_interval_s/],
    ["[github]\nredeliver_interval_s = 1.5\n", /github\.redeliver_interval_s: must be a whole number/],
    ['[github]\ntoken = "x"\n', /unknown key "token" in \[github\]/],
  ])("refuses %j", async (toml, message) => {
    const load = await settingsOf(toml);
    expect(load).toThrow(ConfigError);
    expect(load).toThrow(message);
  });
});

const DEPLOYMENT = (extra = "") => `
[deployments.api]
repository = "octo-org/api"
branch = "main"
remote = "https://github.com/octo-org/api.git"
path = "./api"
${extra}
`;

describe("[github] deployments and [deployments.x.github]: GitHub Deployments", () => {
  it("are off by default, on with [github] deployments, and each deployment may say otherwise", async () => {
    const off = (await settingsOf(DEPLOYMENT()))();
    expect(reportsDeployments(off, off.deployments.get("api")!)).toBe(false);
    const on = (await settingsOf(`[github]\ndeployments = true\n${DEPLOYMENT()}`))();
    expect(reportsDeployments(on, on.deployments.get("api")!)).toBe(true);
    const optedOut = (await settingsOf(`[github]\ndeployments = true\n${DEPLOYMENT("[deployments.api.github]\ndeployments = false")}`))();
    expect(reportsDeployments(optedOut, optedOut.deployments.get("api")!)).toBe(false);
    const optedIn = (await settingsOf(DEPLOYMENT('[deployments.api.github]\ndeployments = true\nenvironment = "production"\nproduction_environment = true\nenvironment_url = "https://api.example.com"')))();
    expect(reportsDeployments(optedIn, optedIn.deployments.get("api")!)).toBe(true);
    expect(optedIn.deployments.get("api")!.github).toEqual({ deployments: true, environment: "production", production_environment: true, environment_url: "https://api.example.com" });
  });

  it.each([
    ['[deployments.api.github]\nenvironment = ""', /deployments\.api\.github\.environment: may not be empty/],
    ['[deployments.api.github]\nenvironment = " prod"', /deployments\.api\.github\.environment: may not start or end with spaces/],
    ['[deployments.api.github]\nenvironment_url = "ftp://x"', /deployments\.api\.github\.environment_url: must be an http/],
    ['[deployments.api.github]\ndeployments = "yes"', /deployments\.api\.github\.deployments/],
    ['[deployments.api.github]\nenviroment = "x"', /unknown key "enviroment" in \[deployments\.api\.github\]/],
  ])("refuses %j", async (extra, message) => {
    const load = await settingsOf(DEPLOYMENT(extra));
    expect(load).toThrow(ConfigError);
    expect(load).toThrow(message);
  });
});
