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

async function settingsOf(server: string, env: NodeJS.ProcessEnv = {}) {
  const file = path.join(dir, `c${Math.random().toString(36).slice(2)}.toml`);
  await writeFile(file, `[server]\n${server}\n`);
  return () => loadSettings({ configPath: file, env });
}

describe("[server] public_url and DEPLOYQ_ADMIN_TOKEN (/ws/v0)", () => {
  it("keeps the public URL's origin, and reads the admin token from the environment", async () => {
    const s = (await settingsOf(`public_url = "https://Deploy.Example.com/deployq/"`, { DEPLOYQ_ADMIN_TOKEN: "t0ken" }))();
    expect(s.publicUrl).toBe("https://deploy.example.com");
    expect(s.secrets.adminToken).toBe("t0ken");
    const none = (await settingsOf(`port = 3400`))();
    expect(none.publicUrl).toBeUndefined();
    expect(none.secrets.adminToken).toBeUndefined();
  });

  it("refuses a public URL that is not http(s)", async () => {
    for (const bad of ["ftp://deploy.example.com", "deploy.example.com", "javascript:alert(1)"]) {
      const load = await settingsOf(`public_url = "${bad}"`);
      expect(load).toThrow(ConfigError);
      expect(load).toThrow(/public_url/);
    }
  });
});
