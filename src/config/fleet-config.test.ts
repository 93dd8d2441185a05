import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { hostname, tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { deploysHere, isFleet, loadSettings, requireFleetServices } from "./load.ts";

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), "deployq-fleet-config-"));
});
afterAll(() => rm(dir, { recursive: true, force: true }));

async function settingsOf(toml: string, env: NodeJS.ProcessEnv = {}) {
  const file = path.join(dir, `c${Math.random().toString(36).slice(2)}.toml`);
  await writeFile(file, toml);
  return loadSettings({ configPath: file, env });
}

const deployment = (extra: string) => `
[deployments.app]
repository = "octo-org/app"
branch = "main"
remote = "/srv/app.git"
path = "apps/app"
${extra}
`;

describe("fleet configuration: host_name, hosts, rollout", () => {
  it("host_name defaults to the machine's hostname; a deployment without hosts is this host's alone", async () => {
    const s = await settingsOf(deployment(""));
    expect(s.hostName).toBe(hostname());
    const app = s.deployments.get("app")!;
    expect(isFleet(app)).toBe(false);
    expect(app.rollout).toBeUndefined();
    expect(deploysHere(app, "anyone")).toBe(true);
    expect(s.fleetLockPrefix).toBe("deployq");
  });

  it("hosts without rollout take one host at a time and halt on a failure; a host not listed does not deploy it", async () => {
    const s = await settingsOf(`host_name = "web4"\n${deployment(`hosts = ["web1", "web2", "web3"]`)}`);
    const app = s.deployments.get("app")!;
    expect(s.hostName).toBe("web4");
    expect(app.rollout).toEqual({ parallel: 1, on_failure: "halt" });
    expect(deploysHere(app, "web2")).toBe(true);
    expect(deploysHere(app, "web4")).toBe(false);
  });

  it("reads rollout, and takes lock_prefix for the fleet's shared locks", async () => {
    const s = await settingsOf(`lock_prefix = "shop"\n${deployment(`hosts = ["web1", "web2"]\nrollout = { parallel = 2, canary = "web2", on_failure = "rollback" }`)}`);
    expect(s.deployments.get("app")!.rollout).toEqual({ parallel: 2, canary: "web2", on_failure: "rollback" });
    expect(s.fleetLockPrefix).toBe("shop");
  });

  for (const [what, extra, message] of [
    ["a canary that is not one of the hosts", `hosts = ["web1"]\nrollout = { canary = "web9" }`, /app\.rollout\.canary: "web9" is not one of hosts \(web1\)/],
    ["a rollout without hosts", `rollout = { parallel = 2 }`, /app\.rollout: a rollout is how the hosts of a fleet take turns: list them in hosts/],
    ["a host listed twice", `hosts = ["web1", "web1"]`, /app\.hosts: lists a host twice/],
    ["an empty hosts list", `hosts = []`, /app\.hosts: list at least one host/],
    ["a host name with a slash", `hosts = ["web/1"]`, /app\.hosts\.0: must be 1 to 64 letters/],
    ["parallel 0", `hosts = ["web1"]\nrollout = { parallel = 0 }`, /app\.rollout\.parallel: at least 1 host/],
    ["an unknown on_failure", `hosts = ["web1"]\nrollout = { on_failure = "panic" }`, /app\.rollout\.on_failure/],
    ["an unknown rollout key", `hosts = ["web1"]\nrollout = { paralel = 2 }`, /unknown key "paralel"/],
  ] as const) {
    it(`refuses ${what}, saying what to fix`, async () => {
      await expect(settingsOf(deployment(extra))).rejects.toThrow(message);
    });
  }

  it("refuses a bad host_name", async () => {
    await expect(settingsOf(`host_name = "-web1"\n${deployment("")}`)).rejects.toThrow(/host_name: must be 1 to 64 letters/);
  });

  it("a fleet with other hosts needs the shared Postgres and Redis; this host alone needs neither", async () => {
    const fleet = `host_name = "web1"\n${deployment(`hosts = ["web1", "web2"]`)}`;
    const without = await settingsOf(fleet);
    expect(() => requireFleetServices(without)).toThrow(/app lists hosts other than this one \(web1\).*set DATABASE_URL .* and REDIS_URL/);
    const onlyDb = await settingsOf(fleet, { DATABASE_URL: "postgres://x@h/db" });
    expect(() => requireFleetServices(onlyDb)).toThrow(/set REDIS_URL \(the Dragonfly\/Redis nodes every host shares/);
    expect(() => requireFleetServices(onlyDb)).not.toThrow(/DATABASE_URL/);
    const both = await settingsOf(fleet, { DATABASE_URL: "postgres://x@h/db", REDIS_URL: "redis://a,redis://b,redis://c" });
    expect(() => requireFleetServices(both)).not.toThrow();
    const alone = await settingsOf(`host_name = "web1"\n${deployment(`hosts = ["web1"]`)}`);
    expect(() => requireFleetServices(alone)).not.toThrow();
  });
});
