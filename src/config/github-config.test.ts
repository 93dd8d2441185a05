import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ConfigError } from "../errors.ts";
import { loadSettings } from "./load.ts";

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
    expect((await settingsOf(""))().github).toEqual({ apiUrl: "https://api.github.com", writeIntervalMs: 1000, timeoutMs: 10_000 });
  });

  it("takes GitHub Enterprise Server's API root from GITHUB_API_URL, without a trailing slash", async () => {
    const settings = (await settingsOf("[github]\nwrite_interval_ms = 0\ntimeout_ms = 500\n", { GITHUB_API_URL: "https://github.example.com/api/v3/", GITHUB_TOKEN: "t" }))();
    expect(settings.github).toEqual({ apiUrl: "https://github.example.com/api/v3", writeIntervalMs: 0, timeoutMs: 500 });
    expect(settings.secrets.githubToken).toBe("t");
  });

  it.each(["github.example.com", "ftp://github.example.com", "https://user:pw@github.example.com/api/v3"])("refuses GITHUB_API_URL=%j", async (url) => {
    expect(await settingsOf("", { GITHUB_API_URL: url })).toThrow(/GITHUB_API_URL must be the http\(s\) address/);
  });

  it.each([
    ["[github]\nwrite_interval_ms = -1\n", /github\.write_interval_ms/],
    ["[github]\ntimeout_ms = 10\n", /github\.timeout_ms/],
    ['[github]\ntoken = "x"\n', /unknown key "token" in \[github\]/],
  ])("refuses %j", async (toml, message) => {
    const load = await settingsOf(toml);
    expect(load).toThrow(ConfigError);
    expect(load).toThrow(message);
  });
});
