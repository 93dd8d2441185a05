import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
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

describe("[dashboard] and DEPLOYQ_ADMIN_TOKEN", () => {
  it("serves at /dashboard by default, and takes the admin token from the environment only", async () => {
    expect((await settingsOf(""))()).toMatchObject({ dashboard: { path: "/dashboard" }, secrets: { adminToken: undefined } });
    expect((await settingsOf(`[dashboard]\npath = "/ops/deployq"\n`, { DEPLOYQ_ADMIN_TOKEN: "t0ken" }))()).toMatchObject({
      dashboard: { path: "/ops/deployq" },
      secrets: { adminToken: "t0ken" },
    });
    // Empty counts as unset: no dashboard with an empty token.
    expect((await settingsOf("", { DEPLOYQ_ADMIN_TOKEN: "" }))().secrets.adminToken).toBeUndefined();
  });

  it.each([
    ["dashboard", /start with "\/"/],
    ["/dashboard/", /no trailing slash/],
    ["/", /start with "\/"/],
    ["/a/../b", /"\.\."/],
    ["/a/./b", /"\."/],
    ["/dash board", /letters, digits/],
    ["/dash?x=1", /letters, digits/],
    ["//evil.example", /letters, digits|start with/],
    ["/github-webhook", /receiver's own paths/],
    ["/status/x", /receiver's own paths/],
  ])("refuses path %j, naming the key", async (value, why) => {
    const load = await settingsOf(`[dashboard]\npath = ${JSON.stringify(value)}\n`);
    expect(load).toThrow(/dashboard\.path/);
    expect(load).toThrow(why);
  });

  it("refuses unknown keys in [dashboard]", async () => {
    expect(await settingsOf(`[dashboard]\nprefix = "/d"\n`)).toThrow(/unknown key "prefix" in \[dashboard\]/);
  });
});
