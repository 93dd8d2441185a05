import { mkdtemp, rm } from "node:fs/promises";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { eq, inArray } from "drizzle-orm";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Daemon, startDaemon } from "../../src/daemon.ts";
import { deliveries, githubHookCursors, githubRedeliveries } from "../../src/db/schema.ts";
import { GithubRedeliverer, MAX_REQUESTS, startRedelivererIfConfigured } from "../../src/github/redeliver.ts";
import { createHooksApi } from "../../src/github/hooks.ts";
import { silentLogger } from "../../src/log.ts";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import { type FakeDelivery, type FakeGithub, type FakeHook, startFakeGithub } from "../helpers/fake-github.ts";
import { type TestRepo, createRepo } from "../helpers/git.ts";
import { until } from "../helpers/wait.ts";
import { SECRET, type Workspace, createWorkspace, followingDeployment, pushPayload } from "../helpers/workspace.ts";

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/**
 * Deliveries GitHub could not make while deployq was stopped: at its next start deployq
 * finds them in the hook's recent deliveries and has GitHub redeliver them, once each.
 */
describe("lost-delivery recovery", () => {
  let dir: string;
  let repo: TestRepo;
  let fake: FakeGithub;
  let ws: Workspace;
  let tdb: TestDatabase;
  let hook: FakeHook;
  let other: FakeHook;
  let daemon: Daemon | undefined;
  const lost: FakeDelivery[] = [];
  const taken: FakeDelivery[] = [];

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "deployq-redeliver-"));
    repo = await createRepo(dir);
    fake = await startFakeGithub();
    const port = await freePort();
    ws = await createWorkspace({
      port,
      topLevel: "[github]\nwrite_interval_ms = 0\ntimeout_ms = 2000\nredeliver_interval_s = 3600\n",
      env: { GITHUB_TOKEN: fake.token, GITHUB_API_URL: fake.url },
      deployments: `public_url = "http://127.0.0.1:${port}"\n${followingDeployment("app", repo.bare, 'restart = { script = ["true"] }')}`,
    });
    tdb = await createTestDatabase("postgres");
    hook = fake.addHook("octo-org/app", { url: `http://127.0.0.1:${port}/github-webhook`, secret: SECRET });
    // Another service's webhook on the same repository, failing too: not deployq's to recover.
    other = fake.addHook("octo-org/app", { url: "http://127.0.0.1:9/elsewhere", secret: "theirs" });
  });
  afterAll(async () => {
    await daemon?.close();
    await fake?.close();
    await tdb?.dispose();
    await ws?.dispose();
    await rm(dir, { recursive: true, force: true });
  });

  const start = () => startDaemon({ settings: ws.settings, role: "serve", logger: silentLogger(), database: tdb.database });
  const push = async (recordAs?: number) => fake.deliver(hook.id, "push", pushPayload({ repository: "octo-org/app", after: await repo.commit({ "index.html": String(Math.random()) }) }), recordAs ? { recordAs } : {});
  const rowsOf = (guids: string[]) => tdb.database.db.select().from(deliveries).where(inArray(deliveries.deliveryId, guids));
  /** The pass at start has looked at every delivery of the hook up to `id`. */
  const lookedUpTo = (id: number) =>
    until(`the cursor to reach ${id}`, async () => {
      const [cursor] = await tdb.database.db.select().from(githubHookCursors).where(eq(githubHookCursors.hookId, hook.id));
      return cursor !== undefined && cursor.lastDeliveryId >= id;
    });

  it("while deployq runs, GitHub's deliveries arrive; while it is stopped, three fail with 502", async () => {
    daemon = await start();
    taken.push(await push());
    // deployq took this one, but GitHub gave up waiting (as after a 10 s timeout): not to be redelivered.
    taken.push(await push(504));
    expect(taken.map((d) => d.statusCode)).toEqual([202, 504]);
    expect(await rowsOf(taken.map((d) => d.guid))).toHaveLength(2);
    await daemon.close();
    daemon = undefined;
    for (let i = 0; i < 3; i++) lost.push(await push());
    expect(lost.map((d) => d.statusCode)).toEqual([502, 502, 502]);
    expect((await fake.deliver(other.id, "push", pushPayload({ repository: "octo-org/app" }))).statusCode).toBe(502);
    expect(await rowsOf(lost.map((d) => d.guid))).toHaveLength(0);
  });

  it("at the next start, GitHub is asked exactly once for each lost delivery, and deployq queues each once", async () => {
    daemon = await start();
    await lookedUpTo(lost.at(-1)!.id);
    await fake.settled();
    const asked = fake.redeliveryRequests().map((r) => r.path);
    expect(asked.sort()).toEqual(lost.map((d) => `/repos/octo-org/app/hooks/${hook.id}/deliveries/${d.id}/attempts`).sort());
    // GitHub redelivered each with its GUID, signed, and deployq took it (202).
    const again = fake.deliveries.filter((d) => d.redelivery);
    expect(again.map((d) => [d.guid, d.hookId, d.statusCode]).sort()).toEqual(lost.map((d) => [d.guid, hook.id, 202]).sort());
    const rows = await until("the redelivered pushes to be routed", async () => {
      const r = await rowsOf(lost.map((d) => d.guid));
      return r.length === 3 && r.every((x) => x.outcome === "routed") ? r : undefined;
    });
    for (const row of rows) expect(row).toMatchObject({ hookId: String(hook.id), event: "push", duplicates: 0, routedTo: ["app"] });
    expect(new Set(rows.map((r) => r.entry)).size).toBe(3);
    const recorded = await tdb.database.db.select().from(githubRedeliveries);
    expect(recorded.map((r) => [r.guid, r.requests]).sort()).toEqual(lost.map((d) => [d.guid, 1]).sort());
    const metrics = await (await fetch(daemon.metricsUrl!)).text();
    expect(metrics).toMatch(/^deployq_github_redeliveries_total\{result="requested"\} 3$/m);
    expect(metrics).toMatch(/^deployq_github_redeliveries_total\{result="failed"\} 0$/m);
    // The exposition with the new counter still passes promtool's checks.
    const checked = await execa("promtool", ["check", "metrics"], { input: metrics, reject: false, all: true });
    expect(checked.all, "promtool check metrics").toBe("");
  });

  it("a restart asks for nothing again: the lost ones are received now, the others were all along", async () => {
    await daemon!.close();
    daemon = await start();
    await lookedUpTo(Math.max(...fake.deliveries.filter((d) => d.hookId === hook.id).map((d) => d.id)));
    expect(fake.redeliveryRequests()).toHaveLength(3);
    expect((await tdb.database.db.select().from(githubRedeliveries)).every((r) => r.requests === 1)).toBe(true);
    const metrics = await (await fetch(daemon.metricsUrl!)).text();
    expect(metrics).toMatch(/^deployq_github_redeliveries_total\{result="requested"\} 0$/m);
    // Nothing was ever asked of the other service's webhook.
    expect(fake.requests.some((r) => r.path.startsWith(`/repos/octo-org/app/hooks/${other.id}/`))).toBe(false);
    await daemon.close();
    daemon = undefined;
  });

  it("a redelivery still in flight is not asked for twice; once it has failed too, it is asked for again; the pages are followed", async () => {
    const redeliverer = (abort = new AbortController()) =>
      new GithubRedeliverer({
        db: tdb.database.db,
        api: createHooksApi({ apiUrl: fake.url, token: fake.token, timeoutMs: 2000, writeIntervalMs: 0, signal: abort.signal }),
        logger: silentLogger(),
        publicUrl: ws.settings.publicUrl!,
        repositories: ["octo-org/app"],
        intervalMs: 0,
        abort,
      });
    // deployq is stopped: 120 more deliveries fail (more than one page of 100).
    const failed: FakeDelivery[] = [];
    for (let i = 0; i < 120; i++) failed.push(await fake.deliver(hook.id, "push", pushPayload({ repository: "octo-org/app" })));
    const guids = failed.map((d) => d.guid).sort();
    fake.holdRedeliveries(true);
    const one = redeliverer();
    const first = await one.runOnce();
    expect(first).toMatchObject({ leader: true, hooks: 1, failed: 0 });
    // All 120: the second page was followed.
    expect(first.requested.sort()).toEqual(guids);
    expect(fake.requests.filter((r) => r.method === "GET" && r.path === `/repos/octo-org/app/hooks/${hook.id}/deliveries`).length).toBeGreaterThanOrEqual(2);
    const asked = fake.redeliveryRequests().length;
    // Even looking at every delivery again (no cursor), while GitHub has not sent them yet: nothing is asked twice.
    await tdb.database.db.update(githubHookCursors).set({ lastDeliveryId: 0 }).where(eq(githubHookCursors.hookId, hook.id));
    expect((await one.runOnce()).requested).toEqual([]);
    expect(fake.redeliveryRequests()).toHaveLength(asked);
    // GitHub sends them, and they fail as well (deployq still stopped): each is asked for once more, and only once.
    fake.holdRedeliveries(false);
    await fake.settled();
    expect(fake.deliveries.filter((d) => d.redelivery && d.statusCode === 502 && guids.includes(d.guid))).toHaveLength(120);
    fake.holdRedeliveries(true);
    expect((await one.runOnce()).requested.sort()).toEqual(guids);
    expect((await one.runOnce()).requested).toEqual([]);
    expect(fake.redeliveryRequests()).toHaveLength(asked + 120);
    const recorded = await tdb.database.db.select().from(githubRedeliveries).where(inArray(githubRedeliveries.guid, guids));
    expect(recorded.every((r) => r.requests === 2)).toBe(true);
    // Failing again and again (the receiver never comes back): asked for at most MAX_REQUESTS times, then left to the operator.
    for (let requests = 3; requests <= MAX_REQUESTS + 1; requests++) {
      fake.holdRedeliveries(false);
      await fake.settled();
      fake.holdRedeliveries(true);
      expect((await one.runOnce()).requested, `round ${requests}`).toHaveLength(requests <= MAX_REQUESTS ? 120 : 0);
    }
    expect(fake.redeliveryRequests()).toHaveLength(asked + 120 * (MAX_REQUESTS - 1));
    const capped = await tdb.database.db.select().from(githubRedeliveries).where(inArray(githubRedeliveries.guid, guids));
    expect(capped.every((r) => r.requests === MAX_REQUESTS + 1)).toBe(true);
    fake.holdRedeliveries(false);
    await fake.settled();
    // Only one process at a time: another one, while this one holds the lease, does nothing.
    const two = redeliverer();
    expect(await two.runOnce()).toMatchObject({ leader: false, requested: [] });
    await Promise.all([one.close(), two.close()]);
  });

  it("is off with redeliver_interval_s = 0, without GITHUB_TOKEN, or without public_url", () => {
    const deps = { db: tdb.database.db, logger: silentLogger(), metrics: undefined };
    const { settings } = ws;
    expect(startRedelivererIfConfigured({ ...deps, settings: { ...settings, github: { ...settings.github, redeliverIntervalMs: 0 } } })).toBeUndefined();
    expect(startRedelivererIfConfigured({ ...deps, settings: { ...settings, secrets: { ...settings.secrets, githubToken: undefined } } })).toBeUndefined();
    expect(startRedelivererIfConfigured({ ...deps, settings: { ...settings, publicUrl: undefined } })).toBeUndefined();
  });
});
