import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { fleetHosts, rolloutHosts, rollouts } from "../../src/db/schema.ts";
import { createApp, listen } from "../../src/http/server.ts";
import { silentLogger } from "../../src/log.ts";
import { queueLayout } from "../../src/queue/layout.ts";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import { runDeployq } from "../helpers/processes.ts";
import { type Workspace, createWorkspace } from "../helpers/workspace.ts";
import { FLEET_FIXTURE_DEPLOYMENTS } from "../helpers/fleet.ts";

const OLD_SHA = "a".repeat(40);
const HALTED_SHA = "b1c2d3e4f5".repeat(4);
const SHOP_SHA = "c".repeat(40);

describe("deployq rollout ls | show", () => {
  let ws: Workspace;
  let tdb: TestDatabase;
  let env: NodeJS.ProcessEnv;
  let oldId: number;
  let haltedId: number;
  let shopId: number;
  // Ages print in whole units: three hours and a second ago stays "3h ago" for the whole file.
  const created = new Date(Date.now() - 3 * 3600_000 - 1000);
  const switchStart = new Date("2026-12-04T18:00:01.000Z");
  const switchEnd = new Date("2026-12-04T18:00:04.500Z");

  beforeAll(async () => {
    ws = await createWorkspace({
      topLevel: `host_name = "web1"`,
      deployments: FLEET_FIXTURE_DEPLOYMENTS,
    });
    tdb = await createTestDatabase("postgres");
    env = { ...ws.env, DATABASE_URL: tdb.url, DEPLOYQ_CONFIG: ws.configPath };
    const db = tdb.database.db;
    const base = { parallel: 1, canary: "web1", onFailure: "halt", body: "{}", createdAt: created, hosts: ["web1", "web2", "web3"] };
    [{ id: oldId }] = await db
      .insert(rollouts)
      .values({ ...base, deployment: "app", entry: "e1.json", ref: "refs/heads/main", sha: OLD_SHA, state: "succeeded", finishedAt: created })
      .returning({ id: rollouts.id }) as [{ id: number }];
    await db.insert(rolloutHosts).values(["web1", "web2", "web3"].map((host) => ({ rolloutId: oldId, host, state: "succeeded", release: "r-old" })));
    [{ id: haltedId }] = await db
      .insert(rollouts)
      .values({
        ...base,
        deployment: "app",
        entry: "e2.json",
        ref: "refs/heads/main",
        sha: HALTED_SHA,
        state: "halted",
        failedHost: "web2",
        failedStep: "health-check",
        reason: "GET http://web2/health answered 503\nafter 3 tries",
        finishedAt: new Date(created.getTime() + 3600_000),
      })
      .returning({ id: rollouts.id }) as [{ id: number }];
    await db.insert(rolloutHosts).values([
      { rolloutId: haltedId, host: "web1", state: "succeeded", release: "20261204-180000-b1c2d3e", switchStartedAt: switchStart, switchEndedAt: switchEnd },
      { rolloutId: haltedId, host: "web2", state: "failed", release: "20261204-180005-b1c2d3e", step: "health-check", error: "GET http://web2/health answered 503", switchStartedAt: switchEnd },
    ]);
    [{ id: shopId }] = await db
      .insert(rollouts)
      .values({ ...base, deployment: "shop", entry: "e3.json", ref: null, sha: SHOP_SHA, hosts: ["s1", "s2"], parallel: 2, canary: null, onFailure: "rollback" })
      .returning({ id: rollouts.id }) as [{ id: number }];
  });
  afterAll(async () => {
    await tdb?.dispose();
    await ws?.dispose();
  });

  it("ls: newest first, each host's outcome, '-' for a host not handed over yet", async () => {
    const { code, stdout, stderr } = await runDeployq(["rollout", "ls"], env);
    expect(stderr).toBe("");
    expect(code).toBe(0);
    const lines = stdout.trimEnd().split("\n");
    expect(lines).toHaveLength(4);
    expect(lines[0]).toMatch(/^ID +DEPLOYMENT +SHA +STATE +CREATED +HOSTS$/);
    expect(lines[1]).toMatch(new RegExp(`^${shopId} +shop +ccccccc +running +3h ago +s1 -, s2 -$`));
    expect(lines[2]).toMatch(new RegExp(`^${haltedId} +app +b1c2d3e +halted +3h ago +web1 succeeded, web2 failed, web3 -$`));
    expect(lines[3]).toMatch(new RegExp(`^${oldId} +app +aaaaaaa +succeeded +3h ago +web1 succeeded, web2 succeeded, web3 succeeded$`));
  });

  it("ls <deployment> --limit --json: that deployment's newest, as plain JSON", async () => {
    const { code, stdout } = await runDeployq(["rollout", "ls", "app", "--limit", "1", "--json"], env);
    expect(code).toBe(0);
    const rows = JSON.parse(stdout) as unknown[];
    expect(rows).toEqual([
      {
        id: haltedId,
        deployment: "app",
        entry: "e2.json",
        deliveryId: null,
        ref: "refs/heads/main",
        sha: HALTED_SHA,
        hosts: ["web1", "web2", "web3"],
        parallel: 1,
        canary: "web1",
        onFailure: "halt",
        state: "halted",
        supersededBy: null,
        failedHost: "web2",
        failedStep: "health-check",
        reason: "GET http://web2/health answered 503\nafter 3 tries",
        createdAt: created.toISOString(),
        finishedAt: new Date(created.getTime() + 3600_000).toISOString(),
        hostStates: [
          { host: "web1", state: "succeeded" },
          { host: "web2", state: "failed" },
          { host: "web3", state: "pending" },
        ],
      },
    ]);
    const none = await runDeployq(["rollout", "ls", "nosuch"], env);
    expect(none.code).toBe(0);
    expect(none.stdout).toBe(`no rollouts of nosuch recorded: nosuch is not configured in ${ws.configPath}\n`);
    const badLimit = await runDeployq(["rollout", "ls", "--limit", "0"], env);
    expect(badLimit.code).toBe(2);
    expect(badLimit.stderr).toBe('deployq: --limit must be a whole number from 1 to 200, got "0"\n');
  });

  it("show: the rollout, then one line per listed host with its state, release, switch interval and error", async () => {
    const { code, stdout, stderr } = await runDeployq(["rollout", "show", String(haltedId)], env);
    expect(stderr).toBe("");
    expect(code).toBe(0);
    const lines = stdout.trimEnd().split("\n");
    expect(lines.slice(0, 10)).toEqual([
      `rollout ${haltedId}`,
      "deployment: app",
      `sha:        ${HALTED_SHA}`,
      "ref:        main",
      "entry:      e2.json",
      "hosts:      web1, web2, web3",
      "parallel:   1",
      "canary:     web1",
      "on_failure: halt",
      "state:      halted",
    ]);
    expect(lines[10]).toBe("failed:     web2 at health-check: GET http://web2/health answered 503 after 3 tries");
    expect(lines[11]).toBe(`created:    ${created.toISOString().slice(0, 19).replace("T", " ")}Z (3h ago)`);
    expect(lines[12]).toMatch(/^finished: {3}\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ \(2h ago\)$/);
    expect(lines[13]).toBe("");
    expect(lines[14]).toMatch(/^HOST +STATE +RELEASE +SWITCH +ERROR$/);
    expect(lines[15]).toMatch(/^web1 +succeeded +20261204-180000-b1c2d3e +2026-12-04 18:00:01Z → 18:00:04Z \(3\.5s\)$/);
    expect(lines[16]).toMatch(/^web2 +failed +20261204-180005-b1c2d3e +2026-12-04 18:00:04Z → \(switching\) +health-check: GET http:\/\/web2\/health answered 503$/);
    expect(lines[17]).toMatch(/^web3 +- \(not handed over yet\) +- +-$/);
    expect(lines).toHaveLength(18);
  });

  it("show --json: the rollout with each host's details", async () => {
    const { code, stdout } = await runDeployq(["rollout", "show", String(haltedId), "--json"], env);
    expect(code).toBe(0);
    const detail = JSON.parse(stdout) as { hostDetails: unknown[]; state: string; hostStates: unknown[] };
    expect(detail.state).toBe("halted");
    expect(detail.hostStates).toHaveLength(3);
    expect(detail.hostDetails).toEqual([
      {
        host: "web1",
        state: "succeeded",
        deployId: null,
        release: "20261204-180000-b1c2d3e",
        previousRelease: null,
        step: null,
        error: null,
        handedAt: expect.stringMatching(/^\d{4}-\d\d-\d\dT/),
        switchStartedAt: switchStart.toISOString(),
        switchEndedAt: switchEnd.toISOString(),
        switchSeconds: 3.5,
      },
      expect.objectContaining({ host: "web2", state: "failed", step: "health-check", error: "GET http://web2/health answered 503", switchStartedAt: switchEnd.toISOString(), switchEndedAt: null, switchSeconds: null }),
      { host: "web3", state: "pending", deployId: null, release: null, previousRelease: null, step: null, error: null, handedAt: null, switchStartedAt: null, switchEndedAt: null, switchSeconds: null },
    ]);
  });

  it("show of an unknown id (or not a number) fails naming `deployq rollout ls`", async () => {
    const unknown = await runDeployq(["rollout", "show", "987654"], env);
    expect(unknown.code).toBe(2);
    expect(unknown.stdout).toBe("");
    expect(unknown.stderr).toBe("deployq: there is no rollout 987654: `deployq rollout ls` lists them\n");
    const notNumber = await runDeployq(["rollout", "show", "abc"], env);
    expect(notNumber.code).toBe(2);
    expect(notNumber.stderr).toBe('deployq: a rollout id is a number, got "abc": `deployq rollout ls` lists them\n');
  });

  it("GET /rollouts and /rollouts/:id (what the CLI asks a daemon that owns PGlite) answer the same JSON as the CLI", async () => {
    const app = createApp({ db: tdb.database.db, layout: queueLayout(ws.queuesDir), logger: silentLogger(), deployments: [...ws.settings.deployments.values()] });
    const server = await listen(app, "127.0.0.1", 0);
    try {
      const cli = JSON.parse((await runDeployq(["rollout", "ls", "--json"], env)).stdout) as unknown;
      expect(await (await fetch(`${server.url}/rollouts`)).json()).toEqual(cli);
      const shop = (await (await fetch(`${server.url}/rollouts?deployment=shop&limit=5`)).json()) as Array<{ id: number }>;
      expect(shop.map((r) => r.id)).toEqual([shopId]);
      const show = JSON.parse((await runDeployq(["rollout", "show", String(haltedId), "--json"], env)).stdout) as unknown;
      expect(await (await fetch(`${server.url}/rollouts/${haltedId}`)).json()).toEqual(show);
      expect(await (await fetch(`${server.url}/rollouts/987654`)).json()).toBeNull();
      const bad = await fetch(`${server.url}/rollouts?limit=abc`);
      expect(bad.status).toBe(400);
      expect(await bad.json()).toEqual({ error: "limit must be a whole number from 1 to 200" });
    } finally {
      await server.close();
    }
  });

  it("status shows a fleet deployment's newest rollout and each host's state, release and last check-in; --json has it as fleet", async () => {
    await tdb.database.db.insert(fleetHosts).values([
      { host: "web1", pid: 101, lastSeen: new Date(Date.now() - 3_000) },
      { host: "web2", pid: 102, lastSeen: new Date(Date.now() - 2 * 60_000 - 1000) },
    ]);
    const { code, stdout, stderr } = await runDeployq(["status", "app"], env);
    expect(stderr).toBe("");
    expect(code).toBe(0);
    expect(stdout).toMatch(new RegExp(`^  rollout: +#${haltedId} halted b1c2d3e 3h ago, web2 failed at health-check \\(\`deployq rollout show ${haltedId}\`\\)$`, "m"));
    const lines = stdout.split("\n");
    const at = lines.findIndex((l) => l.startsWith("  hosts:"));
    expect(lines[at]).toMatch(/^ {2}hosts: {8}web1 +succeeded +20261204-180000-b1c2d3e +seen \d+s ago$/);
    expect(lines[at + 1]).toMatch(/^ {16}web2 +failed +20261204-180005-b1c2d3e +seen 2m ago +GET http:\/\/web2\/health answered 503$/);
    expect(lines[at + 2]).toMatch(/^ {16}web3 +- \(not handed over yet\) +- +never seen$/);

    const json = JSON.parse((await runDeployq(["status", "--json"], env)).stdout) as { deployments: Array<{ deployment: string; fleet?: { rollout: Record<string, unknown> | null; hosts: unknown[] } }> };
    const app = json.deployments.find((d) => d.deployment === "app")!;
    expect(app.fleet!.rollout).toEqual(expect.objectContaining({ id: haltedId, state: "halted", sha: HALTED_SHA, failedHost: "web2", hosts: ["web1", "web2", "web3"] }));
    expect(app.fleet!.rollout).not.toHaveProperty("hostStates");
    expect(app.fleet!.hosts).toEqual([
      { host: "web1", state: "succeeded", release: "20261204-180000-b1c2d3e", error: null, lastSeen: expect.stringMatching(/^\d{4}-\d\d-\d\dT/) },
      { host: "web2", state: "failed", release: "20261204-180005-b1c2d3e", error: "GET http://web2/health answered 503", lastSeen: expect.stringMatching(/^\d{4}-\d\d-\d\dT/) },
      { host: "web3", state: "pending", release: null, error: null, lastSeen: null },
    ]);
    // A deployment without hosts has no fleet part.
    expect(json.deployments.find((d) => d.deployment === "plain")).not.toHaveProperty("fleet");
    expect((await runDeployq(["status", "plain"], env)).stdout).not.toContain("rollout:");
    const shop = json.deployments.find((d) => d.deployment === "shop")!;
    expect(shop.fleet).toEqual({ rollout: expect.objectContaining({ id: shopId, state: "running" }), hosts: [
      { host: "s1", state: "pending", release: null, error: null, lastSeen: null },
      { host: "s2", state: "pending", release: null, error: null, lastSeen: null },
    ] });
  });
});
