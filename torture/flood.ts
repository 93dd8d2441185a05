import { mkdir, mkdtemp, readFile, rename, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { eq } from "drizzle-orm";
import { deliveries } from "../src/db/schema.ts";
import { serializeEntry } from "../src/queue/entry.ts";
import { queueLayout } from "../src/queue/layout.ts";
import { createTestDatabase } from "../test/helpers/db.ts";
import { allNames, entryNames, plannedNames, pushEntry } from "../test/helpers/load.ts";
import { type Spawned, spawnDeployq } from "../test/helpers/processes.ts";
import { until } from "../test/helpers/wait.ts";
import { createWorkspace, followingDeployment } from "../test/helpers/workspace.ts";
import { killIfRunning } from "./ledger.ts";
import { createRng } from "./rng.ts";
import { type Scenario, must } from "./scenario.ts";

const QUEUED_EVENTS = "/proc/sys/fs/inotify/max_queued_events";
/** The inotify queue the workers' watcher gets: a burst of thousands overflows it for certain. */
const SMALL_QUEUE = 256;

export interface FloodOptions {
  seed: number;
  rounds: number;
  /** How many entries each round drops into router/ at once: at random in [min, max]. */
  entries: [number, number];
  log?: (line: string) => void;
}

export interface FloodResult {
  seed: number;
  rounds: number;
  /** Entries dropped into router/ in all, and the largest drop. */
  dropped: number;
  largest: number;
  /** The slowest round: from the first rename to router/ empty (ms). */
  slowestMs: number;
  /** Entries not routed (left in router/, or missing from the deployment's queue, or without their row). */
  lost: number;
  /** Entries with more than one `routed` row, or handed over under another name. */
  duplicated: number;
  seconds: number;
  problems: string[];
}

async function inParallel<T>(items: readonly T[], concurrency: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < items.length) await fn(items[next++]!);
    }),
  );
}

/**
 * Tens of thousands of entries dropped into router/ at once (written beside it, then renamed
 * in as fast as the kernel allows), while `deployq workers` runs with the design's rescan
 * interval (5 s) and an inotify queue of 256 events (fs.inotify.max_queued_events, lowered
 * only while its watcher is created): the kernel drops most of the burst's events, and only
 * the directory, re-read, can tell what arrived. The deployment is paused, so that its queue
 * keeps what the router hands over. Invariants, after each round: router/ is empty, every
 * entry is in the deployment's queue under its own name, and has exactly one `routed` row.
 */
export async function flood(options: FloodOptions): Promise<FloodResult> {
  const started = Date.now();
  const rng = createRng(options.seed);
  const log = options.log ?? (() => {});
  const work = await mkdtemp(path.join(tmpdir(), "deployq-torture-flood-"));
  const tdb = await createTestDatabase("postgres");
  const ws = await createWorkspace({ deployments: followingDeployment("app", "/nonexistent/app.git"), env: { DATABASE_URL: tdb.url! } });
  // The design's rescan interval, not the tests' 100 ms: between rescans only the watcher's (lost) events could tell.
  await writeFile(ws.configPath, (await readFile(ws.configPath, "utf8")).replace("rescan_interval_ms = 100", "rescan_interval_ms = 5000"));
  const layout = queueLayout(ws.queuesDir);
  await mkdir(path.dirname(layout.pause("app")), { recursive: true });
  await writeFile(layout.pause("app"), JSON.stringify({ reason: "torture: flood keeps what the router hands over", by: "torture", at: new Date().toISOString() }));
  const staging = path.join(work, "staging");
  await mkdir(staging);
  const original = (await readFile(QUEUED_EVENTS, "utf8")).trim();
  let workers: Spawned | undefined;
  const problems: string[] = [];
  const planted: string[] = [];
  let largest = 0;
  let slowestMs = 0;
  try {
    await writeFile(QUEUED_EVENTS, String(SMALL_QUEUE));
    try {
      workers = spawnDeployq(["workers", "--config", ws.configPath], { ...ws.env, DEPLOYQ_LOG_LEVEL: "info", DEPLOYQ_LOG_FORMAT: "json" });
      const w = workers;
      // Its watchers are made before it says it started: from then on the machine's own limit again.
      await until("deployq workers started", async () => w.output().includes('"msg":"deployq started"') || w.child.exitCode !== null, 60_000, 20);
    } finally {
      await writeFile(QUEUED_EVENTS, original);
    }
    if (workers.child.exitCode !== null) throw new Error(`deployq workers exited before it started:\n${workers.output().slice(-3000)}`);
    const router = layout.router;
    const app = layout.deployment("app");
    for (let round = 1; round <= options.rounds; round++) {
      const names = plannedNames(rng.int(...options.entries));
      largest = Math.max(largest, names.length);
      await inParallel(names, 16, (name) => writeFile(path.join(staging, name), serializeEntry(pushEntry(name, { repository: "octo-org/app" }))));
      const dropped = Date.now();
      await inParallel(names, 64, (name) => rename(path.join(staging, name), path.join(router, name)));
      planted.push(...names);
      await until(`round ${round}: router/ empty`, async () => (await entryNames(router)).length === 0, 300_000, 100).catch(async () => {
        problems.push(`round ${round}: ${(await entryNames(router)).length} of ${names.length} entries still in router/ after 300 s`);
      });
      const ms = Date.now() - dropped;
      slowestMs = Math.max(slowestMs, ms);
      log(`  round ${round}/${options.rounds}: ${names.length} entries dropped, router/ empty after ${ms} ms`);
    }
    workers.child.kill("SIGTERM");
    await workers.exited;
    if (/TypeError|uncaught/i.test(workers.output())) problems.push(`deployq workers logged: ${/.*(TypeError|uncaught).*/i.exec(workers.output())?.[0]}`);
    workers = undefined;

    let lost = 0;
    let duplicated = 0;
    const left = await allNames(router);
    if (left.length > 0) problems.push(`${left.length} files left in router/`);
    const handed = new Set(await entryNames(app));
    const rows = await tdb.database.db.select({ entry: deliveries.entry }).from(deliveries).where(eq(deliveries.outcome, "routed"));
    const rowsOf = new Map<string, number>();
    for (const r of rows) rowsOf.set(r.entry ?? "", (rowsOf.get(r.entry ?? "") ?? 0) + 1);
    for (const name of planted) {
      const n = rowsOf.get(name) ?? 0;
      if (!handed.has(name) || n === 0) {
        lost++;
        if (lost <= 5) problems.push(`lost: ${name} ${handed.has(name) ? "has no routed row" : "is not in deployments/app/"}`);
      } else if (n > 1) {
        duplicated++;
        problems.push(`duplicated: ${name} has ${n} routed rows`);
      }
    }
    const dropped = new Set(planted);
    const strays = [...handed].filter((n) => !dropped.has(n));
    if (strays.length > 0) {
      duplicated += strays.length;
      problems.push(`${strays.length} entries in deployments/app/ that were never dropped (${strays.slice(0, 3).join(", ")})`);
    }
    return {
      seed: rng.seed,
      rounds: options.rounds,
      dropped: planted.length,
      largest,
      slowestMs,
      lost,
      duplicated,
      seconds: Math.round((Date.now() - started) / 1000),
      problems: [...problems.slice(0, 20), ...(problems.length > 20 ? [`… and ${problems.length - 20} more`] : [])],
    };
  } finally {
    if (workers) await killIfRunning(workers);
    await writeFile(QUEUED_EVENTS, original).catch(() => {});
    await tdb.dispose();
    await ws.dispose();
    await rm(work, { recursive: true, force: true });
  }
}

export const floodScenario: Scenario = {
  name: "flood",
  title: "tens of thousands of entries at once, an inotify queue that overflows",
  unit: "rounds",
  count: 3,
  async run(seed, rounds) {
    const r = await flood({ seed, rounds, entries: [10_000, 40_000], log: (l) => console.log(l) });
    return {
      header: ["rounds", "entries dropped", "largest drop", "inotify queue (events)", "slowest round to router/ empty (s)", "lost", "duplicated", "seconds"],
      row: [r.rounds, r.dropped, r.largest, SMALL_QUEUE, (r.slowestMs / 1000).toFixed(1), must(r.lost), must(r.duplicated), r.seconds],
      problems: r.problems,
    };
  },
};
