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

async function settingsOf(toml: string) {
  const file = path.join(dir, `c${Math.random().toString(36).slice(2)}.toml`);
  await writeFile(file, toml);
  return () => loadSettings({ configPath: file, env: {} });
}

describe("[metrics]: where deployq workers serves /metrics", () => {
  it("is off unless a port is given, on 127.0.0.1 by default", async () => {
    expect((await settingsOf(""))().metrics).toEqual({ host: "127.0.0.1", port: undefined });
    expect((await settingsOf("[metrics]\nport = 9464\n"))().metrics).toEqual({ host: "127.0.0.1", port: 9464 });
    expect((await settingsOf('[metrics]\nhost = "::1"\nport = 0\n'))().metrics).toEqual({ host: "::1", port: 0 });
  });

  it.each([
    ["[metrics]\nport = 70000\n", /metrics\.port/],
    ['[metrics]\nport = "9464"\n', /metrics\.port/],
    ['[metrics]\nhost = ""\nport = 9464\n', /metrics\.host/],
    ["[metrics]\naddress = \"127.0.0.1:9464\"\n", /unknown key "address" in \[metrics\]/],
  ])("names the key that is wrong: %#", async (toml, message) => {
    const load = await settingsOf(toml);
    expect(load).toThrow(ConfigError);
    expect(load).toThrow(message);
  });
});
