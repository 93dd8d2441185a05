import { mkdir, rename, writeFile } from "node:fs/promises";
import path from "node:path";
import { asc, eq } from "drizzle-orm";
import { afterEach, describe, expect, it } from "vitest";
import { type Daemon, startDaemon } from "../../src/daemon.ts";
import { deliveries } from "../../src/db/schema.ts";
import { silentLogger } from "../../src/log.ts";
import { serializeEntry } from "../../src/queue/entry.ts";
import { queueLayout } from "../../src/queue/layout.ts";
import { writeEntryDurably } from "../../src/queue/write.ts";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import { allNames, entryNames, plannedNames, pushEntry, waitUntil } from "../helpers/load.ts";
import { type Workspace, createWorkspace } from "../helpers/workspace.ts";

const BURST = 5_000;

async function inParallel<T>(items: readonly T[], concurrency: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < items.length) await fn(items[next++]!);
    }),
  );
}

/** How many fs.watch handles (the queue watchers') this process holds. */
const watchHandles = () => process.getActiveResourcesInfo().filter((r) => r === "FSEventWrap").length;

describe("watcher loss: the directory is the truth", () => {
  const cleanups: Array<() => Promise<void>> = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });

  async function setUp(watch: boolean): Promise<{ ws: Workspace; tdb: TestDatabase; daemon: Daemon; router: string; api: string }> {
    const ws = await createWorkspace();
    cleanups.push(() => ws.dispose());
    // Postgres rather than PGlite: created in ~0.1 s instead of several, and faster per row.
    const tdb = await createTestDatabase("postgres");
    cleanups.push(() => tdb.dispose());
    const daemon = await startDaemon({ settings: ws.settings, role: "workers", watch, logger: silentLogger(), database: tdb.database });
    cleanups.push(() => daemon.close());
    // Only the router is under test. The deployment workers take entries out of
    // deployments/<name>/ (newest wins): stop them before any entry arrives, so that
    // deployments/api/ keeps everything the router hands over.
    await Promise.all([...daemon.deployments.values()].map((w) => w.close()));
    return { ws, tdb, daemon, router: path.join(ws.queuesDir, "router"), api: path.join(ws.queuesDir, "deployments", "api") };
  }

  async function routedRows(tdb: TestDatabase) {
    return tdb.database.db.select().from(deliveries).where(eq(deliveries.outcome, "routed")).orderBy(asc(deliveries.id));
  }

  it("without a watcher, the periodic rescan alone routes entries that arrive after start", async () => {
    const handlesBefore = watchHandles();
    const { ws, tdb, router, api } = await setUp(false);
    // No fs.watch handle was opened: nothing but the rescan timer can notice new files.
    expect(watchHandles()).toBe(handlesBefore);
    expect(ws.settings.rescanIntervalMs).toBe(100);
    const layout = queueLayout(ws.queuesDir);

    const all: string[] = [];
    // Three separate arrivals, each after the queue went idle: each needs a later rescan.
    for (let batch = 0; batch < 3; batch++) {
      const names = plannedNames(10, BigInt(Date.now()) * 1_000_000n);
      for (const name of names) await writeEntryDurably(layout, layout.router, name, pushEntry(name));
      all.push(...names);
      await waitUntil(async () => (await entryNames(router)).length === 0 && (await entryNames(api)).length === all.length, {
        timeoutMs: 10_000,
        what: `batch ${batch} is routed by the rescan`,
        describe: async () => `router: ${(await entryNames(router)).length}, api: ${(await entryNames(api)).length}`,
      });
    }

    expect(await allNames(router)).toEqual([]);
    expect(await entryNames(api)).toEqual(all);
    expect((await routedRows(tdb)).map((r) => r.entry)).toEqual(all);
  });

  it(`a burst of ${BURST} entries with the watcher on: every one is routed, router/ ends empty`, async () => {
    const handlesBefore = watchHandles();
    const { ws, tdb, router, api } = await setUp(true);
    expect(watchHandles()).toBeGreaterThan(handlesBefore);

    // Written whole beside the queue (same filesystem), then renamed in as fast as the
    // kernel allows: a backlog arriving at once, thousands of watcher events in a burst.
    const staging = path.join(ws.dir, "staging");
    await mkdir(staging);
    const names = plannedNames(BURST);
    const staged = Date.now();
    await inParallel(names, 16, (name) => writeFile(path.join(staging, name), serializeEntry(pushEntry(name))));
    const stagedMs = Date.now() - staged;
    const started = Date.now();
    await inParallel(names, 32, (name) => rename(path.join(staging, name), path.join(router, name)));
    const renamedMs = Date.now() - started;

    await waitUntil(async () => (await entryNames(router)).length === 0 && (await entryNames(api)).length === BURST, {
      timeoutMs: 60_000,
      intervalMs: 100,
      what: `all ${BURST} entries are routed`,
      describe: async () => `router: ${(await entryNames(router)).length}, api: ${(await entryNames(api)).length}`,
    });
    const routedMs = Date.now() - started;

    expect(await allNames(router)).toEqual([]);
    expect(await entryNames(api)).toEqual(names);
    expect(await entryNames(path.join(ws.queuesDir, "deployments", "api-staging"))).toEqual([]);
    const rows = await routedRows(tdb);
    expect(rows).toHaveLength(BURST);
    expect(new Set(rows.map((r) => r.entry)).size).toBe(BURST);
    expect(rows.map((r) => r.entry).sort()).toEqual(names);
    console.info(`rescan burst: ${BURST} staged in ${stagedMs} ms, renamed into router/ in ${renamedMs} ms, all routed after ${routedMs} ms`);
  }, 100_000);
});
