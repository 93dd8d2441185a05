import { mkdir, mkdtemp, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ConfigError } from "../errors.ts";
import { defaultLockPrefix } from "../lock/lock.ts";
import { secretAssignment } from "../cli/serve.ts";
import { loadSettings } from "./load.ts";

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), "deployq-overrides-"));
});
afterAll(() => rm(dir, { recursive: true, force: true }));

async function config(toml: string): Promise<string> {
  const file = path.join(dir, `c${Math.random().toString(36).slice(2)}.toml`);
  await writeFile(file, toml);
  return file;
}

function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return err as ConfigError;
  }
  throw new Error("expected a ConfigError");
}

describe("the listen port: --port, DEPLOYQ_PORT, [server] port", () => {
  it("--port wins over DEPLOYQ_PORT, which wins over the file; 0 is allowed (the system picks)", async () => {
    const file = await config(`[server]\nport = 3401\n`);
    expect(loadSettings({ configPath: file, env: {} }).port).toBe(3401);
    expect(loadSettings({ configPath: file, env: { DEPLOYQ_PORT: "3402" } }).port).toBe(3402);
    expect(loadSettings({ configPath: file, env: { DEPLOYQ_PORT: "3402" }, port: "3403" }).port).toBe(3403);
    expect(loadSettings({ configPath: file, env: { DEPLOYQ_PORT: "3402" }, port: "0" }).port).toBe(0);
    expect(loadSettings({ configPath: file, env: { DEPLOYQ_PORT: "65535" } }).port).toBe(65535);
  });

  it.each(["65536", "-1", "3400x", "0x10", "1e3", " 80", "", "99999999"])("refuses --port %j and DEPLOYQ_PORT %j, saying what is allowed", async (value) => {
    const file = await config(`[server]\nport = 3401\n`);
    const flag = configError(() => loadSettings({ configPath: file, env: {}, port: value }));
    expect(flag.message).toBe(`--port must be a port number from 1 to 65535, or 0 to let the system pick a free one (printed at start), not ${JSON.stringify(value)}`);
    // An empty DEPLOYQ_PORT counts as unset, like the other variables.
    if (value !== "") {
      const variable = configError(() => loadSettings({ configPath: file, env: { DEPLOYQ_PORT: value } }));
      expect(variable.message).toContain(`DEPLOYQ_PORT must be a port number from 1 to 65535`);
    }
  });
});

describe("lock_prefix", () => {
  it("defaults to deployq:<8 hex of the queue root's real path>, the same however the root is spelled", async () => {
    const install = path.join(dir, "install");
    await mkdir(path.join(install, "queues"), { recursive: true });
    await symlink(install, path.join(dir, "link"));
    const file = await config(`queues_dir = "./install/queues"\n`);
    const prefix = loadSettings({ configPath: file, env: {} }).lockPrefix;
    expect(prefix).toMatch(/^deployq:[0-9a-f]{8}$/);
    // The receiver, the workers and the CLI may name the root differently: they agree.
    expect(loadSettings({ configPath: file, env: { DEPLOYQ_QUEUES_DIR: path.join(dir, "link", "queues") } }).lockPrefix).toBe(prefix);
    expect(loadSettings({ configPath: file, env: { DEPLOYQ_QUEUES_DIR: path.relative(process.cwd(), path.join(install, "queues")) } }).lockPrefix).toBe(prefix);
    // A root not created yet gets the prefix it will have once it exists.
    const later = path.join(dir, "link", "later", "queues");
    const before = defaultLockPrefix(later);
    await mkdir(later, { recursive: true });
    expect(defaultLockPrefix(later)).toBe(before);
    expect(defaultLockPrefix(path.join(install, "later", "queues"))).toBe(before);
    // Another install on the same host gets another prefix.
    expect(loadSettings({ configPath: file, env: { DEPLOYQ_QUEUES_DIR: path.join(dir, "other", "queues") } }).lockPrefix).not.toBe(prefix);
  });

  it("takes a configured prefix as it is, and refuses one that is not a tame Redis key part", async () => {
    expect(loadSettings({ configPath: await config(`lock_prefix = "deployq:web1"\n`), env: {} }).lockPrefix).toBe("deployq:web1");
    for (const bad of ["", "deployq:", ":x", "a b", "x".repeat(65), "dq/one", "dq*"]) {
      const file = await config(`lock_prefix = ${JSON.stringify(bad)}\n`);
      expect(configError(() => loadSettings({ configPath: file, env: {} })).message, bad).toContain("lock_prefix: must be 1 to 64 letters, digits, : . _ or -");
    }
  });
});

describe("the printed next step", () => {
  it("shows the secret only on a terminal and only when it is the quickstart's public one", () => {
    expect(secretAssignment(["dev-secret"], true)).toBe("GITHUB_WEBHOOK_SECRET=dev-secret");
    expect(secretAssignment(["dev-secret"], false)).toBe("GITHUB_WEBHOOK_SECRET=…");
    expect(secretAssignment(["a-real-secret"], true)).toBe("GITHUB_WEBHOOK_SECRET=…");
    expect(secretAssignment(["dev-secret", "next"], true)).toBe("GITHUB_WEBHOOK_SECRET=…");
  });
});
