/**
 * The queue directory watcher: Node's fs.watch (one inotify watch on the directory, what
 * src/queue/watch.ts uses) against chokidar 4 (what the design first named), in this process.
 *
 * - Pickup latency: from the rename() that puts an entry into the directory to the watcher's
 *   callback naming it (fs.watch: its "rename" event with the file name; chokidar: its "add"
 *   event), with the directory otherwise empty, and with 1,000 and 10,000 entries piled up in
 *   it (not consumed). Samples are spaced out; the two watchers take turns, alternately first.
 * - Drain: a 5,000-entry backlog handled by the same QueueWorker (src/queue/watch.ts) with its
 *   handler doing the router's file work (read, parseEntry, remove), woken either by its own
 *   fs.watch or by chokidar's "add" events (QueueWorker with watch off, kick() on each event):
 *   once with the backlog already there when the worker starts, once with the 5,000 entries
 *   renamed into the directory while it runs (a burst, as the receiver would write it).
 *
 *   npx tsx bench/watcher.ts [--samples 200] [--spacing 5] [--drain 5000] [--piles 0,1000,10000]
 *
 * Also the `watcher` section of `npm run bench`. It asserts nothing about time.
 */
import { randomUUID } from "node:crypto";
import { type FSWatcher, closeSync, fsyncSync, openSync, renameSync, watch, writeFileSync } from "node:fs";
import { mkdir, mkdtemp, readFile, readdir, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { watch as chokidarWatch } from "chokidar";
import { silentLogger } from "../src/log.ts";
import { pushPayload } from "../src/push-payload.ts";
import { type QueueEntry, parseEntry, serializeEntry } from "../src/queue/entry.ts";
import { removeEntries } from "../src/queue/move.ts";
import { QueueWorker } from "../src/queue/watch.ts";

export type WatcherKind = "fs.watch" | "chokidar";
export const WATCHERS: WatcherKind[] = ["fs.watch", "chokidar"];

export interface PickupRow {
  watcher: WatcherKind;
  piled: number;
  samples: number;
  p50: number;
  p99: number;
  max: number;
  /** chokidar: time from watch() to its "ready" (its initial scan of the directory); fs.watch: to the watch being set. */
  readyMs: number;
  missed: number;
}

export interface DrainRow {
  watcher: WatcherKind;
  mode: "backlog at start" | "burst while running";
  entries: number;
  /** From the worker's start (backlog) or the first rename (burst) until the directory is empty. */
  ms: number;
  passes: number;
  events: number;
}

export interface WatcherFigures {
  pickup: PickupRow[];
  drain: DrainRow[];
  spacingMs: number;
  chokidarVersion: string;
}

export interface WatcherOptions {
  workDir: string;
  samples: number;
  spacingMs: number;
  piles: number[];
  drainEntries: number;
  progress?: (line: string) => void;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

let nameCounter = 0n;
const nameBase = BigInt(Date.now()) * 1_000_000n;
/** Entry names in arrival order (a 19-digit nanosecond prefix, a fresh GUID). */
function nextName(): string {
  nameCounter += 1000n;
  return `${(nameBase + nameCounter).toString().padStart(19, "0")}-${randomUUID()}.json`;
}

let entryBody: string | undefined;
function entryText(name: string): string {
  entryBody ??= JSON.stringify(pushPayload({ repository: "octo-org/api", branch: "main", after: "0".repeat(40) }));
  const entry: QueueEntry = {
    event: "push",
    delivery_id: name.slice(20, 56),
    hook_id: "123456",
    received_at: new Date().toISOString(),
    source: "github",
    payload: JSON.parse(entryBody) as QueueEntry["payload"],
  };
  return serializeEntry(entry);
}

/** Writes entry files straight into `dir` (the pile: no watcher looks yet). */
async function pile(dir: string, count: number): Promise<void> {
  const text = entryText(nextName());
  for (let i = 0; i < count; i++) {
    writeFileSync(path.join(dir, nextName()), text);
    // Let signals in: tsx relays Ctrl-C and kills a child that does not answer in time.
    if (i % 500 === 499) await new Promise((resolve) => setImmediate(resolve));
  }
}

/** A whole entry in `tmp`, fsync'd, ready to be renamed in. */
function prepared(tmpDir: string): { tmp: string; name: string } {
  const name = nextName();
  const tmp = path.join(tmpDir, `${name}.tmp`);
  const fd = openSync(tmp, "wx", 0o640);
  try {
    writeFileSync(fd, entryText(name));
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  return { tmp, name };
}

interface Watching {
  readyMs: number;
  close(): Promise<void>;
}

async function startWatcher(kind: WatcherKind, dir: string, onName: (name: string) => void): Promise<Watching> {
  const t0 = performance.now();
  if (kind === "fs.watch") {
    const w: FSWatcher = watch(dir, (_event, name) => {
      if (name !== null) onName(String(name));
    });
    return { readyMs: performance.now() - t0, close: async () => w.close() };
  }
  const w = chokidarWatch(dir, { ignoreInitial: true, depth: 0, persistent: true });
  w.on("add", (file: string) => onName(path.basename(file)));
  await new Promise<void>((resolve, reject) => {
    w.once("ready", () => resolve());
    w.once("error", reject);
  });
  return { readyMs: performance.now() - t0, close: () => w.close() };
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1]!;
}

async function measurePickup(kind: WatcherKind, root: string, piled: number, samples: number, spacingMs: number): Promise<PickupRow> {
  const dir = path.join(root, `pickup-${kind.replace(".", "")}-${piled}-${randomUUID().slice(0, 8)}`);
  const tmp = path.join(dir, ".tmp");
  await mkdir(tmp, { recursive: true });
  await pile(dir, piled);
  const renamedAt = new Map<string, number>();
  const latencies: number[] = [];
  const seen = new Set<string>();
  const watching = await startWatcher(kind, dir, (name) => {
    const at = performance.now();
    const t0 = renamedAt.get(name);
    if (t0 === undefined || seen.has(name)) return;
    seen.add(name);
    latencies.push(at - t0);
  });
  try {
    const warmup = 10;
    for (let i = 0; i < samples + warmup; i++) {
      const { tmp: from, name } = prepared(tmp);
      renameSync(from, path.join(dir, name));
      if (i >= warmup) renamedAt.set(name, performance.now());
      else seen.add(name);
      await sleep(spacingMs);
    }
    const deadline = Date.now() + 5000;
    while (latencies.length < samples && Date.now() < deadline) await sleep(10);
  } finally {
    await watching.close();
  }
  await rm(dir, { recursive: true, force: true });
  latencies.sort((a, b) => a - b);
  return {
    watcher: kind,
    piled,
    samples: latencies.length,
    p50: percentile(latencies, 50),
    p99: percentile(latencies, 99),
    max: latencies[latencies.length - 1] ?? NaN,
    readyMs: watching.readyMs,
    missed: samples - latencies.length,
  };
}

/** The router's file work per entry (read, validate, remove), no database. */
async function routerFileWork(dir: string, names: string[], stopping: () => boolean): Promise<void> {
  const batch: string[] = [];
  for (const name of names) {
    if (stopping()) break;
    const file = path.join(dir, name);
    let text: string;
    try {
      text = await readFile(file, "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") continue;
      throw err;
    }
    if (!parseEntry(text).ok) throw new Error(`bench entry ${name} does not parse`);
    batch.push(file);
    if (batch.length === 200) await removeEntries(batch.splice(0));
  }
  if (batch.length > 0) await removeEntries(batch);
}

async function measureDrain(kind: WatcherKind, root: string, entries: number, mode: DrainRow["mode"]): Promise<DrainRow> {
  const dir = path.join(root, `drain-${kind.replace(".", "")}-${mode === "burst while running" ? "burst" : "start"}-${randomUUID().slice(0, 8)}`);
  const tmp = path.join(dir, ".tmp");
  await mkdir(tmp, { recursive: true });
  let passes = 0;
  let events = 0;
  const worker = new QueueWorker({
    name: "router",
    dir,
    // Long: in this measurement every pass after the first comes from the watcher.
    rescanIntervalMs: 60_000,
    watch: kind === "fs.watch",
    logger: silentLogger(),
    handle: async (names, stopping) => {
      passes++;
      await routerFileWork(dir, names, stopping);
    },
  });
  let chokidar: Watching | undefined;
  let empty: () => void = () => {};
  const emptied = new Promise<void>((resolve) => (empty = resolve));
  // Whether the directory is empty: looked at on a timer, not from the worker (both alike).
  const poll = setInterval(() => {
    // Only a listing begun after the clock started counts (one begun before may end after it).
    if (!started) return;
    void readdir(dir).then((names) => {
      if (names.filter((n) => n.endsWith(".json")).length === 0) empty();
    });
  }, 20);
  let started = false;
  let t0 = 0;
  try {
    const files: Array<{ tmp: string; name: string }> = [];
    for (let i = 0; mode === "burst while running" && i < entries; i++) {
      files.push(prepared(tmp));
      if (i % 200 === 199) await new Promise((resolve) => setImmediate(resolve)); // let signals in
    }
    if (mode === "backlog at start") {
      await pile(dir, entries);
      // The watcher's own start (chokidar's initial scan of the backlog) counts.
      t0 = performance.now();
      started = true;
    }
    if (kind === "chokidar") {
      chokidar = await startWatcher("chokidar", dir, () => {
        events++;
        void worker.kick();
      });
    }
    if (mode === "backlog at start") {
      await worker.start();
    } else {
      await worker.start();
      await worker.idle;
      t0 = performance.now();
      started = true;
      for (const f of files) renameSync(f.tmp, path.join(dir, f.name));
    }
    const timeout = setTimeout(() => empty(), 600_000);
    await emptied;
    clearTimeout(timeout);
    const ms = performance.now() - t0;
    return { watcher: kind, mode, entries, ms, passes, events };
  } finally {
    clearInterval(poll);
    await chokidar?.close();
    await worker.close();
    await rm(dir, { recursive: true, force: true });
  }
}

export async function runWatcherBench(o: WatcherOptions): Promise<WatcherFigures> {
  const root = await mkdtemp(path.join(o.workDir, "watcher-"));
  const pickup: PickupRow[] = [];
  const drain: DrainRow[] = [];
  let turn = 0;
  for (const piled of o.piles) {
    // Alternate which watcher goes first, so that drift in the machine's load falls on both.
    const order = turn++ % 2 === 0 ? WATCHERS : [...WATCHERS].reverse();
    for (const kind of order) {
      o.progress?.(`  watcher pickup: ${kind}, ${piled} entries piled up, ${o.samples} renames ${o.spacingMs} ms apart…`);
      pickup.push(await measurePickup(kind, root, piled, o.samples, o.spacingMs));
    }
  }
  for (const mode of ["backlog at start", "burst while running"] as const) {
    const order = turn++ % 2 === 0 ? WATCHERS : [...WATCHERS].reverse();
    for (const kind of order) {
      o.progress?.(`  watcher drain: ${kind}, ${o.drainEntries} entries, ${mode}…`);
      drain.push(await measureDrain(kind, root, o.drainEntries, mode));
    }
  }
  await rm(root, { recursive: true, force: true });
  let chokidarVersion = "";
  try {
    const pkg = JSON.parse(await readFile(fileURLToPath(new URL("../node_modules/chokidar/package.json", import.meta.url)), "utf8")) as { version: string };
    chokidarVersion = pkg.version;
  } catch {
    chokidarVersion = "?";
  }
  return { pickup, drain, spacingMs: o.spacingMs, chokidarVersion };
}

type Table = (rows: string[][]) => string;

export function watcherReport(f: WatcherFigures, table: Table): string {
  const out: string[] = [];
  out.push(`directory watcher: fs.watch (src/queue/watch.ts) vs chokidar ${f.chokidarVersion}, rename into the directory -> callback naming the entry, ${f.spacingMs} ms apart`);
  const rows = [["watcher", "entries piled up", "samples", "p50 ms", "p99 ms", "max ms", "missed", "watch ready ms"]];
  for (const r of f.pickup) rows.push([r.watcher, String(r.piled), String(r.samples), r.p50.toFixed(3), r.p99.toFixed(3), r.max.toFixed(3), String(r.missed), r.readyMs.toFixed(1)]);
  out.push(table(rows));
  for (const piled of [...new Set(f.pickup.map((r) => r.piled))]) {
    const a = f.pickup.find((r) => r.piled === piled && r.watcher === "fs.watch");
    const b = f.pickup.find((r) => r.piled === piled && r.watcher === "chokidar");
    if (a && b) out.push(`  ${piled} piled up: chokidar/fs.watch p50 ${(b.p50 / a.p50).toFixed(2)}x, p99 ${(b.p99 / a.p99).toFixed(2)}x`);
  }
  out.push("");
  out.push("drain: QueueWorker (router file work: read, parseEntry, remove; no database), woken by fs.watch or by chokidar's add events");
  const drows = [["watcher", "mode", "entries", "drained in ms", "entries/s", "passes", "chokidar events"]];
  for (const r of f.drain) drows.push([r.watcher, r.mode, String(r.entries), r.ms.toFixed(0), (r.entries / (r.ms / 1000)).toFixed(0), String(r.passes), r.watcher === "chokidar" ? String(r.events) : ""]);
  out.push(table(drows));
  for (const mode of [...new Set(f.drain.map((r) => r.mode))]) {
    const a = f.drain.find((r) => r.mode === mode && r.watcher === "fs.watch");
    const b = f.drain.find((r) => r.mode === mode && r.watcher === "chokidar");
    if (a && b) out.push(`  ${mode}: chokidar/fs.watch drain time ${(b.ms / a.ms).toFixed(2)}x`);
  }
  return out.join("\n");
}

function simpleTable(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  const line = (r: string[]) => `| ${r.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(" | ")} |`;
  const sep = `|${widths.map((w, i) => (i === 0 ? "-".repeat(w + 2) : `${"-".repeat(w + 1)}:`)).join("|")}|`;
  return [line(rows[0]!), sep, ...rows.slice(1).map(line)].join("\n");
}

// Standalone: npx tsx bench/watcher.ts
if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const { values } = parseArgs({
    options: {
      samples: { type: "string", default: "200" },
      spacing: { type: "string", default: "5" },
      drain: { type: "string", default: "5000" },
      piles: { type: "string", default: "0,1000,10000" },
    },
  });
  const workDir = await mkdtemp(path.join(os.tmpdir(), "deployq-bench-watcher-"));
  // Retried: on Ctrl-C the measurement may still be writing files while the directory is removed.
  const cleanup = () => rm(workDir, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
  let interrupted = false;
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    // `on`: tsx relays Ctrl-C, so it comes twice; the second must not cut the cleanup short.
    process.on(signal, () => {
      if (interrupted) return;
      interrupted = true;
      void cleanup().finally(() => process.exit(130));
    });
  }
  try {
    console.log(`deployq watcher bench — ${new Date().toISOString()}, node ${process.version}, load ${os.loadavg().map((l) => l.toFixed(2)).join(" ")}`);
    const figures = await runWatcherBench({
      workDir,
      samples: Number(values.samples),
      spacingMs: Number(values.spacing),
      drainEntries: Number(values.drain),
      piles: values.piles.split(",").map(Number),
      progress: (line) => process.stderr.write(`${line}\n`),
    });
    console.log(watcherReport(figures, simpleTable));
    console.log(`load at the end: ${os.loadavg().map((l) => l.toFixed(2)).join(" ")}`);
  } catch (err) {
    console.error(`watcher bench failed: ${(err as Error).stack ?? String(err)}`);
    process.exitCode = 1;
  } finally {
    await cleanup();
  }
}
