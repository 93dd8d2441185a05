import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import express from "express";
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

describe("[server] trust_proxy and [github] allowlist", () => {
  it("are off by default: no proxy is believed, deliveries come from anywhere", async () => {
    const settings = (await settingsOf(""))();
    expect(settings.trustProxy).toEqual([]);
    expect(settings.github.allowlist).toBe(false);
  });

  const accepted = ["127.0.0.1", "10.0.0.0/8", "192.168.1.0/24", "::1", "fd00::/8", "2a0a:a440::/29", "::ffff:127.0.0.1", "1.0.0.0/1", "loopback", "uniquelocal", "linklocal"];

  it("takes addresses, CIDR ranges (IPv4 and IPv6) and proxy-addr's names, each of which express's trust proxy compiles", async () => {
    const settings = (await settingsOf(`[server]\ntrust_proxy = ${JSON.stringify(accepted)}\n\n[github]\nallowlist = true\n`))();
    expect(settings.trustProxy).toEqual(accepted);
    expect(settings.github.allowlist).toBe(true);
    // What the configuration accepts, the receiver's express takes (it throws on what proxy-addr cannot read).
    for (const entry of accepted) expect(() => express().set("trust proxy", [entry])).not.toThrow();
  });

  it.each(["0.0.0.0/0", "::/0", "10.0.0.0/33", "::1/129", "10.0.0", "proxy.example.com", "10.0.0.0/", "10.0.0.0/8/8", "", " 127.0.0.1", "127.0.0.1/-1"])("refuses trust_proxy entry %j, naming it and showing the form", async (entry) => {
    const load = await settingsOf(`[server]\ntrust_proxy = ["127.0.0.1", ${JSON.stringify(entry)}]\n`);
    expect(load).toThrow(ConfigError);
    expect(load).toThrow(`server.trust_proxy.1: ${JSON.stringify(entry)} is not an IP address or CIDR range: write it as "127.0.0.1", "10.0.0.0/8", "::1" or "fd00::/8"`);
  });

  it.each([
    ['[server]\ntrust_proxy = "127.0.0.1"\n', /server\.trust_proxy/],
    ["[github]\nallowlist = \"yes\"\n", /github\.allowlist/],
  ])("refuses %j", async (toml, message) => {
    const load = await settingsOf(toml);
    expect(load).toThrow(ConfigError);
    expect(load).toThrow(message);
  });
});
