/**
 * `npm run bench`: deployq's benchmark (not a test: it asserts nothing about time).
 *
 * 1. Receiver throughput and latency: a real `deployq receiver` child process on a fresh
 *    Postgres database, loaded by wrk (C, its own process) with a signed 7-8 KB push
 *    payload and a different X-GitHub-Delivery per request; against the same load on a
 *    bare Express 5 app (bench/bare-express.ts) that reads the body and answers 204.
 *    Besides requests/s and latency, the CPU time each side spends per served request,
 *    read from /proc (the receiver's event loop, its other threads, its Postgres backends):
 *    unlike throughput, that figure barely moves when something else loads the machine.
 *    And against what a user would pick instead: adnanh/webhook (Debian's `webhook`) checking
 *    the same signature and running a script that stores the payload durably (write, fsync,
 *    rename, fsync the directory) before it answers.
 * 2. Router pickup latency: from the rename of an entry into queues/router/ to the
 *    moment the queue worker (directory watcher + scans, src/queue/watch.ts) hands it to
 *    its handler, in process.
 * 3. Where a request's time goes: each step of the webhook handler alone (bench/steps.ts).
 * 4. Deploys (bench/deploy.ts): a real `deployq serve` child, webhook -> `current` switched for
 *    a deploy with no commands, against a shell script doing a classic hook's fetch + checkout
 *    for the same push; and a burst of pushes to one deployment (how many deploys ran).
 * 5-7. Observability, the dashboard, the live log (bench/dashboard.ts, bench/live-log.ts).
 * 8. The directory watcher (bench/watcher.ts): fs.watch against chokidar 4.
 * 9. Scale (bench/scale.ts): `deployq workers` with 1-1000 deployments, a push fanned out to
 *    1000 of them, a 100,000-entry router backlog.
 *
 * Options (npm run bench -- --duration 5 ...): see `usage` below.
 * Every child process is stopped and the temporary database dropped, also on error or Ctrl-C.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { existsSync, readFileSync, renameSync } from "node:fs";
import { mkdir, mkdtemp, open, readFile, readdir, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { sign } from "@octokit/webhooks-methods";
import postgres from "postgres";
import { silentLogger } from "../src/log.ts";
import { pushPayload } from "../src/push-payload.ts";
import { type QueueEntry, serializeEntry } from "../src/queue/entry.ts";
import { entryName } from "../src/queue/entry-name.ts";
import { fsyncDir } from "../src/queue/fsync.ts";
import { type QueueLayout, queueLayout } from "../src/queue/layout.ts";
import { removeEntry } from "../src/queue/move.ts";
import { QueueWorker } from "../src/queue/watch.ts";
import { ensureQueueDirs } from "../src/queue/write.ts";
import { parseEntry } from "../src/queue/entry.ts";
import { type DashboardFigures, dashboardReport, runDashboardBench } from "./dashboard.ts";
import { type DeployFigures, deployReport, runDeployBench } from "./deploy.ts";
import { type LiveLogFigures, liveLogReport, runLiveLogBench } from "./live-log.ts";
import { type ScaleFigures, runScaleBench, scaleReport } from "./scale.ts";
import { GROUP_COMMIT_STEP, type StepFigure, runSteps } from "./steps.ts";
import { type WatcherFigures, runWatcherBench, watcherReport } from "./watcher.ts";
import { type FleetFigures, fleetReport, runFleetBench } from "./fleet.ts";

const REPO_ROOT = fileURLToPath(new URL("..", import.meta.url));
const DEPLOYQ_BIN = path.join(REPO_ROOT, "bin/deployq.js");
const BARE_EXPRESS = path.join(REPO_ROOT, "bench/bare-express.ts");
const RECEIVER_ENTRY = path.join(REPO_ROOT, "bench/receiver-entry.ts");
const WRK_SCRIPT = path.join(REPO_ROOT, "bench/wrk-webhook.lua");
const SECRET = "bench-secret-It's a Secret to Everybody";
const ADMIN_DATABASE_URL = process.env.DATABASE_URL || "postgres://postgres@127.0.0.1:5432/postgres";
const TARGET_RATIO = 0.35;
/** deployq's receiver against adnanh/webhook doing the same durable job (issue 12 §2). */
const TARGET_WEBHOOK_RATIO = 3;
/** The receiver against its own durable path without HTTP (bench/steps.ts, same invocation). */
const TARGET_CEILING_SHARE = 0.75;
const WEBHOOK_BIN = process.env.DEPLOYQ_BENCH_WEBHOOK || "/usr/bin/webhook";
const TARGET_PICKUP_P99_MS = 10;
/** What metrics and the event stream may cost the receiver's throughput. */
const TARGET_OBSERVABILITY_COST = 0.05;

const usage = `usage: npm run bench -- [options]
  --duration <s>      measured seconds per HTTP target (default 10)
  --rounds <n>        split them into n runs, taken in turns with the other target (default 2)
  --warmup <s>        unmeasured seconds before each HTTP run (default 2)
  --connections <n>   concurrent connections (default 32)
  --threads <n>       wrk threads (default 2)
  --entries <n>       router entries for the pickup latency (default 500)
  --spacing <ms>      pause between two router entries (default 5)
  --only <list>       comma-separated subset of: receiver,bare,webhook,router,watcher,steps,deploy,observability,dashboard,live-log,scale,fleet (default all)
                      (webhook: adnanh/webhook, Debian's \`webhook\` package, at $DEPLOYQ_BENCH_WEBHOOK or /usr/bin/webhook)
  --watcher-samples <n>  renames per watcher and pile size in the watcher section (default 200; piles 0, 1000, 10000)
  --watcher-drain <n> the watcher section's backlog to drain (default 5000)
  --scale-sizes <list>  configured deployments in the scale section (default 1,10,100,1000)
  --idle-seconds <s>  idle CPU measured over this long per size (default 10)
  --fanout <n>        deployments one push fans out to (default 1000; 0: skip)
  --backlog <n>       entries in the router backlog (default 100000; 0: skip)
  --deploy-pushes <n> measured pushes, each deployed by deployq and the baseline script (default 30)
  --deploy-warmup <n> unmeasured pushes before them (default 3)
  --burst <n>         pushes in the burst to one deployment (default 100)
  --repo-files <n>    files in the deploy bench's generated repository (default 300)
  --dashboard-requests <n>  measured requests of each kind in the dashboard section (default 300)
  --log-lines <n>     lines the live-log section's build command prints, 5 ms apart (default 1000)
  --fleet-pushes <n>  measured pushes per configuration in the fleet section (default 20)
profiling variants of the receiver (not the default figures):
  --pglite            the embedded PGlite (on disk) instead of Postgres
  --async-commit      Postgres synchronous_commit = off for the bench database (no WAL flush wait)
  --no-file-fsync     the receiver under Debian's libeatmydata (LD_PRELOAD): its fsync calls do nothing
  --uv-threads <n>    UV_THREADPOOL_SIZE for the receiver (Node's default is 4)
  --pool <n>          Postgres pool size (deployq's default is 20), through bench/receiver-entry.ts
  --cpu-prof          write a V8 CPU profile of the receiver (and of deployq serve in the deploy part, the dashboard section's receiver, the scale section's backlog workers) into bench/profiles/`;

const { values: opts } = parseArgs({
  options: {
    duration: { type: "string", default: "10" },
    rounds: { type: "string", default: "2" },
    warmup: { type: "string", default: "2" },
    connections: { type: "string", default: "32" },
    threads: { type: "string", default: "2" },
    entries: { type: "string", default: "500" },
    spacing: { type: "string", default: "5" },
    only: { type: "string", default: "receiver,bare,webhook,router,watcher,steps,deploy,observability,dashboard,live-log,scale,fleet" },
    "watcher-samples": { type: "string", default: "200" },
    "watcher-drain": { type: "string", default: "5000" },
    "scale-sizes": { type: "string", default: "1,10,100,1000" },
    "idle-seconds": { type: "string", default: "10" },
    fanout: { type: "string", default: "1000" },
    backlog: { type: "string", default: "100000" },
    "deploy-pushes": { type: "string", default: "30" },
    "deploy-warmup": { type: "string", default: "3" },
    burst: { type: "string", default: "100" },
    "repo-files": { type: "string", default: "300" },
    "dashboard-requests": { type: "string", default: "300" },
    "log-lines": { type: "string", default: "1000" },
    "fleet-pushes": { type: "string", default: "20" },
    pglite: { type: "boolean", default: false },
    "async-commit": { type: "boolean", default: false },
    "no-file-fsync": { type: "boolean", default: false },
    "uv-threads": { type: "string" },
    pool: { type: "string" },
    "cpu-prof": { type: "boolean", default: false },
    help: { type: "boolean", default: false },
  },
});
if (opts.help) {
  console.log(usage);
  process.exit(0);
}
const DURATION_S = positive("duration");
const ROUNDS = Math.round(positive("rounds"));
const WARMUP_S = Number(opts.warmup);
const CONNECTIONS = positive("connections");
const THREADS = Math.min(positive("threads"), CONNECTIONS);
const ENTRIES = positive("entries");
const SPACING_MS = Number(opts.spacing);
const ONLY = new Set(opts.only.split(",").map((s) => s.trim()));

function positive(name: keyof typeof opts): number {
  const n = Number(opts[name]);
  if (!Number.isFinite(n) || n <= 0) {
    console.error(`--${name} must be a positive number\n${usage}`);
    process.exit(2);
  }
  return n;
}

// ---------------------------------------------------------------------------------------
// Cleanup: everything started registers how to undo it; undone in reverse order, always.

const cleanups: Array<{ what: string; run: () => Promise<void> }> = [];
const children = new Set<ChildProcess>();
let cleaning: Promise<void> | undefined;

function cleanupAll(): Promise<void> {
  cleaning ??= (async () => {
    for (const { what, run } of cleanups.reverse()) {
      try {
        await run();
      } catch (err) {
        console.error(`cleanup: could not ${what}: ${(err as Error).message}`);
      }
    }
  })();
  return cleaning;
}

let interrupted = false;
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  // `on`, not `once`: Ctrl-C reaches tsx and this process both, and tsx relays it, so a second
  // signal comes at once; with no listener left, it would kill the bench mid-cleanup.
  process.on(signal, () => {
    if (interrupted) return;
    interrupted = true;
    console.error(`\n${signal}: stopping children and dropping the database…`);
    void cleanupAll().finally(() => process.exit(130));
  });
}
// Last resort if the process dies some other way: no child outlives the bench.
process.on("exit", () => {
  for (const child of children) child.kill("SIGKILL");
});

// ---------------------------------------------------------------------------------------
// Child processes

interface Child {
  child: ChildProcess;
  output(): string;
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<RegExpExecArray>;
  stop(): Promise<void>;
}

function startChild(name: string, command: string, args: string[], env: NodeJS.ProcessEnv): Child {
  const child = spawn(command, args, { cwd: REPO_ROOT, env, stdio: ["ignore", "pipe", "pipe"] });
  children.add(child);
  let out = "";
  const waiters = new Set<() => void>();
  const onData = (chunk: Buffer) => {
    out += chunk.toString();
    if (out.length > 1_000_000) out = out.slice(-500_000);
    for (const w of waiters) w();
  };
  child.stdout!.on("data", onData);
  child.stderr!.on("data", onData);
  const exited = new Promise<void>((resolve) => {
    child.once("exit", () => {
      children.delete(child);
      for (const w of waiters) w();
      resolve();
    });
  });
  let failed = false;
  child.once("error", (err) => {
    failed = true;
    out += `\n(${name} could not start: ${err.message})`;
    for (const w of waiters) w();
  });
  const running = () => !failed && child.exitCode === null && child.signalCode === null;
  const handle: Child = {
    child,
    output: () => out,
    waitFor(pattern, timeoutMs = 30_000) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`${name}: timed out waiting for ${String(pattern)}; output:\n${out}`));
        }, timeoutMs);
        const check = () => {
          const m = pattern.exec(out);
          if (m) {
            clearTimeout(timer);
            waiters.delete(check);
            resolve(m);
          } else if (!running()) {
            clearTimeout(timer);
            waiters.delete(check);
            reject(new Error(`${name} ended before ${String(pattern)}; output:\n${out}`));
          }
        };
        waiters.add(check);
        check();
      });
    },
    async stop() {
      if (!running() || child.pid === undefined) return;
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(timer);
    },
  };
  cleanups.push({ what: `stop ${name}`, run: () => handle.stop() });
  return handle;
}

/** The environment of a server under test: this one, minus anything that would change its setup. */
function childEnv(extra: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, ...extra };
  for (const key of ["DEPLOYQ_CONFIG", "DEPLOYQ_QUEUES_DIR", "REDIS_URL", "GITHUB_TOKEN", "NODE_OPTIONS"]) {
    if (!(key in extra)) delete env[key];
  }
  return env;
}

// ---------------------------------------------------------------------------------------
// Load generation (wrk)

interface WrkResult {
  duration_us: number;
  requests: number;
  bytes: number;
  errors: { connect: number; read: number; write: number; status: number; timeout: number };
  latency_us: { min: number; max: number; mean: number };
  statuses: Record<string, number>;
  /** 1000 latency quantiles, 0.1 % apart (wrk does not hand its histogram to Lua). */
  quantiles_us: number[];
  /** Added by runWrk: CPU wrk itself used (it shares the machine's CPUs with the target). */
  wrkCpu?: CpuTime;
}

interface Payload {
  file: string;
  signature: string;
  bytes: number;
}

function findWrk(): string {
  try {
    execFileSync("wrk", ["--version"], { stdio: "ignore" });
  } catch (err) {
    // wrk --version exits 1 after printing its banner; only a missing binary is a problem.
    if ((err as NodeJS.ErrnoException).code === "ENOENT") {
      throw new Error("wrk is not installed: `apt-get install -y wrk` (Debian), then run the bench again");
    }
  }
  return "wrk";
}

function findEatMyData(): string {
  const candidates = ["/usr/lib/x86_64-linux-gnu/libeatmydata.so", "/usr/lib/aarch64-linux-gnu/libeatmydata.so", "/usr/lib/libeatmydata.so"];
  const found = candidates.find((p) => existsSync(p));
  if (!found) throw new Error("--no-file-fsync needs libeatmydata: `apt-get install -y eatmydata`");
  return found;
}

async function runWrk(url: string, payload: Payload, seconds: number): Promise<WrkResult> {
  // A fresh nonce per run: delivery GUIDs never repeat, across runs and warm-ups included.
  const nonce = randomBytes(4).toString("hex");
    // wrk takes the host and port from the URL; the script builds the request line (adnanh/webhook serves /hooks/<id>).
  const target = new URL(url);
  const requestPath = target.pathname === "/" ? "/github-webhook" : target.pathname;
  const args = [`-t${THREADS}`, `-c${CONNECTIONS}`, `-d${seconds}s`, "--timeout", "10s", "-s", WRK_SCRIPT, target.origin, "--", payload.file, payload.signature, nonce, requestPath];
  const wrk = startChild("wrk", findWrk(), args, process.env);
  const [, json] = await wrk.waitFor(/WRK_RESULT (\{.*\})\n/, (seconds + 30) * 1000);
  // Read before it exits: wrk's own CPU, spent on the same CPUs as the target's.
  const wrkCpu = wrk.child.pid ? readStat(`/proc/${wrk.child.pid}/stat`) : undefined;
  await wrk.stop();
  return { ...(JSON.parse(json!) as WrkResult), ...(wrkCpu ? { wrkCpu } : {}) };
}

interface HttpTarget {
  name: string;
  url: string;
  /** The status that counts as served: 202 (queued) for deployq, 204 for bare Express, 200 for adnanh/webhook. */
  expected: number;
  runs: WrkResult[];
  /** Load average (1 min) after each measured run: how busy the machine was. */
  load: number[];
  /** What CPU time is charged to this target, by group (resolved after the warm-up). */
  processes(): Promise<Record<string, CpuReader>>;
  /** CPU milliseconds spent by each group during the measured runs. */
  cpu: Record<string, { user: number; sys: number }>;
}

const CLOCK_TICKS = (() => {
  try {
    return Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
  } catch {
    return 100;
  }
})();

type CpuTime = { user: number; sys: number };
/** Reads the CPU time of something (a process, a thread, a set of them). */
type CpuReader = () => CpuTime;

/** User and system CPU milliseconds from a /proc stat file (a process: all its threads; a task: one thread). */
function readStat(file: string): CpuTime {
  try {
    const stat = readFileSync(file, "utf8");
    // After "pid (comm) ": field 3 (state) is index 0, utime (14) index 11, stime (15) index 12.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return { user: (Number(fields[11]) * 1000) / CLOCK_TICKS, sys: (Number(fields[12]) * 1000) / CLOCK_TICKS };
  } catch {
    return { user: 0, sys: 0 };
  }
}

const cpu = {
  processes: (pids: number[]): CpuReader => () => {
    const total = { user: 0, sys: 0 };
    for (const pid of pids) {
      const t = readStat(`/proc/${pid}/stat`);
      total.user += t.user;
      total.sys += t.sys;
    }
    return total;
  },
  /** The children a process has waited for (cutime + cstime): adnanh/webhook's commands. */
  waitedChildren: (pid: number): CpuReader => () => {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      return { user: (Number(fields[13]) * 1000) / CLOCK_TICKS, sys: (Number(fields[14]) * 1000) / CLOCK_TICKS };
    } catch {
      return { user: 0, sys: 0 };
    }
  },
  /** A Node process's main thread: its event loop, where all JavaScript runs. */
  mainThread: (pid: number): CpuReader => () => readStat(`/proc/${pid}/task/${pid}/stat`),
  /** The rest of a Node process: the libuv pool (every fs call), V8's GC and compiler threads. */
  otherThreads: (pid: number): CpuReader => () => {
    const all = readStat(`/proc/${pid}/stat`);
    const main = readStat(`/proc/${pid}/task/${pid}/stat`);
    return { user: all.user - main.user, sys: all.sys - main.sys };
  },
};

function cpuSnapshot(readers: Record<string, CpuReader>): Record<string, CpuTime> {
  return Object.fromEntries(Object.entries(readers).map(([group, read]) => [group, read()]));
}

interface HttpFigures {
  name: string;
  expected: number;
  seconds: number;
  okPerSec: number;
  ok: number;
  other: Record<string, number>;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  maxMs: number;
  perRun: number[];
  load: number[];
  /** CPU milliseconds per served request, by process group. */
  cpuPerOk: Record<string, { user: number; sys: number }>;
}

/** Merges the runs of one target: counts add up; latency quantiles are pooled, weighted by each run's requests. */
function merge(target: HttpTarget): HttpFigures {
  const statuses: Record<string, number> = {};
  let durationUs = 0;
  let socketErrors = 0;
  const pooled: Array<[number, number]> = [];
  for (const run of target.runs) {
    durationUs += run.duration_us;
    for (const [code, n] of Object.entries(run.statuses)) statuses[code] = (statuses[code] ?? 0) + n;
    socketErrors += run.errors.connect + run.errors.read + run.errors.write + run.errors.timeout;
    const weight = run.requests / run.quantiles_us.length;
    for (const q of run.quantiles_us) pooled.push([q, weight]);
  }
  pooled.sort((x, y) => x[0] - y[0]);
  const totalWeight = pooled.reduce((sum, [, w]) => sum + w, 0);
  const quantile = (p: number): number => {
    let acc = 0;
    for (const [value, weight] of pooled) {
      acc += weight;
      if (acc >= (p / 100) * totalWeight - 1e-9) return value / 1000;
    }
    return NaN;
  };
  const ok = statuses[String(target.expected)] ?? 0;
  const other = Object.fromEntries(Object.entries(statuses).filter(([code]) => code !== String(target.expected)));
  if (socketErrors > 0) other["socket errors"] = socketErrors;
  return {
    name: target.name,
    expected: target.expected,
    seconds: durationUs / 1e6,
    ok,
    okPerSec: ok / (durationUs / 1e6),
    other,
    p50Ms: quantile(50),
    p90Ms: quantile(90),
    p99Ms: quantile(99),
    maxMs: Math.max(...target.runs.map((r) => r.latency_us.max)) / 1000,
    perRun: target.runs.map((r) => (r.statuses[String(target.expected)] ?? 0) / (r.duration_us / 1e6)),
    load: target.load,
    cpuPerOk: Object.fromEntries(Object.entries(target.cpu).map(([g, c]) => [g, { user: c.user / ok, sys: c.sys / ok }])),
  };
}

/**
 * Warms each target up, then measures them in turns (A B B A …): the measured time per
 * target is split into ROUNDS runs, so that load from elsewhere on the machine falls on
 * both alike rather than on whichever happened to run at the wrong moment.
 */
async function measureHttp(targets: HttpTarget[], payload: Payload): Promise<void> {
  if (WARMUP_S > 0) {
    for (const t of targets) {
      process.stderr.write(`  ${t.name}: warm-up ${WARMUP_S} s…\n`);
      await runWrk(t.url, payload, WARMUP_S);
    }
  }
  const seconds = Math.max(1, Math.round(DURATION_S / ROUNDS));
  const groups = await Promise.all(targets.map((t) => t.processes()));
  for (let round = 1; round <= ROUNDS; round++) {
    // A B, then B A, …: the machine's load drifts, and whichever ran second in every round would gain from a downward drift.
    const order = [...targets.entries()];
    if (round % 2 === 0) order.reverse();
    for (const [i, t] of order) {
      process.stderr.write(`  ${t.name}: round ${round}/${ROUNDS}, ${seconds} s, ${CONNECTIONS} connections…\n`);
      const before = cpuSnapshot(groups[i]!);
      const run = await runWrk(t.url, payload, seconds);
      t.runs.push(run);
      const after = cpuSnapshot(groups[i]!);
      if (run.wrkCpu) {
        const acc = (t.cpu["wrk (the load generator, not the target)"] ??= { user: 0, sys: 0 });
        acc.user += run.wrkCpu.user;
        acc.sys += run.wrkCpu.sys;
      }
      for (const [group, a] of Object.entries(after)) {
        const b = before[group]!;
        const acc = (t.cpu[group] ??= { user: 0, sys: 0 });
        acc.user += a.user - b.user;
        acc.sys += a.sys - b.sys;
      }
      t.load.push(os.loadavg()[0]!);
    }
  }
}

// ---------------------------------------------------------------------------------------
// 1a. The deployq receiver

async function createDatabase(): Promise<{ url: string; name: string }> {
  const name = `deployq_bench_${randomBytes(6).toString("hex")}`;
  const admin = postgres(ADMIN_DATABASE_URL, { max: 1, onnotice: () => {}, connect_timeout: 10 });
  try {
    await admin.unsafe(`create database ${name}`);
    // Profiling only: commits return before their WAL is flushed to disk.
    if (opts["async-commit"]) await admin.unsafe(`alter database ${name} set synchronous_commit = off`);
  } finally {
    await admin.end({ timeout: 5 });
  }
  cleanups.push({
    what: `drop database ${name}`,
    run: async () => {
      const a = postgres(ADMIN_DATABASE_URL, { max: 1, onnotice: () => {}, connect_timeout: 10 });
      try {
        await a.unsafe(`drop database if exists ${name} with (force)`);
      } finally {
        await a.end({ timeout: 5 });
      }
    },
  });
  const url = new URL(ADMIN_DATABASE_URL);
  url.pathname = `/${name}`;
  return { url: url.toString(), name };
}

/** The server processes of the connections to a database (on this machine only: their CPU time is read from /proc). */
async function backendPids(database: string): Promise<number[]> {
  const admin = postgres(ADMIN_DATABASE_URL, { max: 1, onnotice: () => {}, connect_timeout: 10 });
  try {
    const rows = await admin<{ pid: number }[]>`select pid from pg_stat_activity where datname = ${database}`;
    return rows.map((r) => r.pid).filter((pid) => existsSync(`/proc/${pid}`));
  } finally {
    await admin.end({ timeout: 5 });
  }
}

interface StartedReceiver {
  url: string;
  pid: number;
  /** The Postgres database it uses (none on PGlite). */
  database: string | undefined;
  stop(): Promise<void>;
  /** Complete entries in its queues/router/ (it runs no router: every 202 leaves one). */
  queued(): Promise<number>;
  describe: string;
}

/** The observability section's pair: both through bench/receiver-entry.ts, metrics and the event stream on or off. */
interface ReceiverVariant {
  label: string;
  observability: boolean;
}

async function startReceiver(workDir: string, variant?: ReceiverVariant): Promise<StartedReceiver> {
  const dir = path.join(workDir, variant ? `receiver-${variant.label}` : "receiver");
  await mkdir(dir, { recursive: true });
  const configPath = path.join(dir, "deployq.toml");
  await writeFile(
    configPath,
    `data_dir = "./data"
queues_dir = "./queues"

[server]
host = "127.0.0.1"
port = 0

[deployments.api]
repository = "octo-org/api"
branch = "main"
remote = "/nonexistent/api.git"
path = "./apps/api"
`,
  );
  const database = opts.pglite ? undefined : await createDatabase();
  const databaseUrl = database?.url;
  const env = childEnv({
    GITHUB_WEBHOOK_SECRET: SECRET,
    DEPLOYQ_LOG_LEVEL: "warn",
    ...(databaseUrl ? { DATABASE_URL: databaseUrl } : {}),
    // Both variants alike; with observability on, this also serves /ws/v0.
    ...(variant ? { DEPLOYQ_ADMIN_TOKEN: "bench-admin-token" } : {}),
  });
  if (!databaseUrl) delete env.DATABASE_URL;
  if (opts["uv-threads"]) env.UV_THREADPOOL_SIZE = opts["uv-threads"];
  if (opts["no-file-fsync"]) env.LD_PRELOAD = findEatMyData();
  const nodeArgs: string[] = [];
  if (opts["cpu-prof"]) {
    const profiles = path.join(REPO_ROOT, "bench", "profiles");
    await mkdir(profiles, { recursive: true });
    nodeArgs.push("--cpu-prof", "--cpu-prof-dir", profiles);
  }
  // The real CLI, unless a variant needs the bench's own entry (pool size, an exit that writes the profile).
  const entry =
    opts.pool || opts["cpu-prof"] || variant
      ? ["--import", "tsx", RECEIVER_ENTRY, ...(variant && !variant.observability ? ["--no-observability"] : []), configPath, ...(opts.pool ? [opts.pool] : [])]
      : [DEPLOYQ_BIN, "receiver", "--config", configPath];
  const receiver = startChild(variant ? `deployq receiver (${variant.label})` : "deployq receiver", process.execPath, [...nodeArgs, ...entry], env);
  const [, url] = await receiver.waitFor(/listening on (http:\/\/\S+)/, 60_000);
  const describe = [
    entry[0] === DEPLOYQ_BIN ? "node bin/deployq.js receiver" : "bench/receiver-entry.ts",
    databaseUrl ? "Postgres (fresh database)" : "PGlite (embedded, on disk)",
    opts["async-commit"] ? "synchronous_commit = off" : "",
    opts["no-file-fsync"] ? "file fsync disabled (eatmydata)" : "",
    opts["uv-threads"] ? `UV_THREADPOOL_SIZE=${opts["uv-threads"]}` : "",
    opts.pool ? `pool ${opts.pool}` : "",
    opts["cpu-prof"] ? "CPU profile in bench/profiles/" : "",
    variant ? `metrics and event stream ${variant.observability ? "on" : "off"}` : "",
  ].filter(Boolean);
  return {
    url: url!,
    pid: receiver.child.pid!,
    database: database?.name,
    stop: () => receiver.stop(),
    queued: async () => (await readdir(path.join(dir, "queues", "router"))).filter((n) => n.endsWith(".json")).length,
    describe: describe.join(", "),
  };
}

// 1b. The baseline

async function startBare(): Promise<{ url: string; pid: number; stop(): Promise<void> }> {
  const bare = startChild("bare express", process.execPath, ["--import", "tsx", BARE_EXPRESS], childEnv({}));
  const [, url] = await bare.waitFor(/listening on (http:\/\/\S+)/, 60_000);
  return { url: url!, pid: bare.child.pid!, stop: () => bare.stop() };
}

// 1c. What a user would pick instead: adnanh/webhook (Debian's `webhook`), doing the same durable job

/**
 * The command adnanh/webhook runs per delivery: the payload written as deployq writes an entry
 * (into a temporary, fsync'd, renamed into the queue directory, the directory fsync'd), with
 * coreutils: `sync FILE` fsyncs that file, `sync DIR` the directory. webhook answers only once it
 * has exited (include-command-output-in-response), so a 200 means the payload is durable.
 */
const WEBHOOK_STORE_SCRIPT = `#!/bin/sh
# $1 = X-GitHub-Delivery, $2 = the payload (webhook's entire-payload).
set -e
tmp="queue/.$1.tmp"
printf '%s' "$2" > "$tmp"
sync "$tmp"
mv "$tmp" "queue/$1.json"
sync queue
echo queued
`;

async function freeTcpPort(): Promise<number> {
  const { createServer } = await import("node:net");
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (typeof address !== "object" || address === null) throw new Error("no address");
  return address.port;
}

async function startWebhook(workDir: string): Promise<{ url: string; pid: number; stop(): Promise<void>; queued(): Promise<number>; describe: string }> {
  if (!existsSync(WEBHOOK_BIN)) throw new Error(`adnanh/webhook not found at ${WEBHOOK_BIN}: \`apt-get install -y webhook\` (Debian), or --only without webhook`);
  const dir = path.join(workDir, "adnanh-webhook");
  await mkdir(path.join(dir, "queue"), { recursive: true });
  const script = path.join(dir, "store.sh");
  await writeFile(script, WEBHOOK_STORE_SCRIPT, { mode: 0o755 });
  const hooks = [
    {
      id: "github-webhook",
      "execute-command": script,
      "command-working-directory": dir,
      "http-methods": ["POST"],
      "include-command-output-in-response": true,
      "pass-arguments-to-command": [
        { source: "header", name: "X-GitHub-Delivery" },
        { source: "entire-payload" },
      ],
      // The same check as deployq's: HMAC-SHA256 of the body with the secret, in X-Hub-Signature-256.
      "trigger-rule": { match: { type: "payload-hmac-sha256", secret: SECRET, parameter: { source: "header", name: "X-Hub-Signature-256" } } },
      "trigger-rule-mismatch-http-response-code": 403,
    },
  ];
  await writeFile(path.join(dir, "hooks.json"), JSON.stringify(hooks, null, 2));
  const port = await freeTcpPort();
  const child = startChild("adnanh/webhook", WEBHOOK_BIN, ["-hooks", path.join(dir, "hooks.json"), "-ip", "127.0.0.1", "-port", String(port)], childEnv({}));
  const url = `http://127.0.0.1:${port}/hooks/github-webhook`;
  // It prints nothing without -verbose (which logs every request): wait until it answers.
  const deadline = Date.now() + 30_000;
  for (;;) {
    try {
      const res = await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(1000) });
      await res.arrayBuffer();
      break;
    } catch (err) {
      if (child.child.exitCode !== null || Date.now() > deadline) throw new Error(`adnanh/webhook did not start: ${(err as Error).message}; output:\n${child.output()}`);
      await sleep(50);
    }
  }
  let version = "";
  try {
    version = execFileSync(WEBHOOK_BIN, ["-version"], { encoding: "utf8" }).trim();
  } catch {
    // described without it
  }
  return {
    url,
    pid: child.child.pid!,
    stop: () => child.stop(),
    queued: async () => (await readdir(path.join(dir, "queue"))).filter((n) => n.endsWith(".json")).length,
    describe: `${version || "adnanh/webhook"} (${WEBHOOK_BIN}), payload-hmac-sha256 on X-Hub-Signature-256, a /bin/sh script per delivery: write, sync file, mv, sync dir`,
  };
}

// ---------------------------------------------------------------------------------------
// 2. Router pickup latency

interface PickupFigures {
  entries: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
  mean: number;
  over100ms: number;
}

/**
 * writeEntryDurably (src/queue/write.ts), step by step, so that the time can be taken right
 * after the rename that makes the entry visible (the directory fsync follows it). The rename
 * is synchronous so that nothing on this event loop (the watcher!) runs between the rename
 * and the timestamp.
 */
async function writeEntryTimed(layout: QueueLayout, name: string, entry: QueueEntry, renamed: (at: number) => void): Promise<void> {
  const tmp = path.join(layout.tmp, `${name}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`);
  const fh = await open(tmp, "wx", 0o640);
  try {
    await fh.writeFile(serializeEntry(entry));
    await fh.sync();
  } finally {
    await fh.close();
  }
  renameSync(tmp, path.join(layout.router, name));
  // Recorded before the directory fsync: the worker may pick the entry up while it runs.
  renamed(performance.now());
  await fsyncDir(layout.router);
}

async function benchRouterPickup(workDir: string): Promise<PickupFigures> {
  const layout = queueLayout(path.join(workDir, "router-pickup", "queues"));
  await ensureQueueDirs(layout, ["api"]);
  const renamedAt = new Map<string, number>();
  const latencies: number[] = [];
  const seen = new Set<string>();
  const warmup = Math.min(20, Math.floor(ENTRIES / 10));
  let allSeen: () => void = () => {};
  const done = new Promise<void>((resolve) => (allSeen = resolve));
  // The router's own steps, minus the database and the hand-over: read, validate, remove.
  const worker = new QueueWorker({
    name: "router",
    dir: layout.router,
    rescanIntervalMs: 5000, // the configuration's default: pickups faster than this come from the watcher
    watch: true,
    logger: silentLogger(),
    // One name per call (older QueueWorker) or the whole pass in name order (newer): both work.
    handle: async (pass: string | readonly string[], stopping?: () => boolean) => {
      for (const name of typeof pass === "string" ? [pass] : pass) {
        if (stopping?.()) return;
        // Picked up: the moment the worker turns to this entry.
        const pickedAt = performance.now();
        if (!seen.has(name)) {
          seen.add(name);
          const t0 = renamedAt.get(name);
          if (t0 === undefined) throw new Error(`picked up ${name} before its rename was timed`);
          latencies.push(pickedAt - t0);
          if (seen.size === ENTRIES + warmup) allSeen();
        }
        const file = path.join(layout.router, name);
        let text: string;
        try {
          text = await readFile(file, "utf8");
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === "ENOENT") continue; // a pass that raced this one took it
          throw err;
        }
        const parsed = parseEntry(text);
        if (!parsed.ok) throw new Error(parsed.error);
        await removeEntry(file);
      }
    },
  });
  await worker.start();
  cleanups.push({ what: "close the router queue worker", run: () => worker.close() });
  const payload = pushPayload({ repository: "octo-org/api", branch: "main", after: randomSha() });
  process.stderr.write(`  router pickup: ${ENTRIES} entries (+${warmup} warm-up), ${SPACING_MS} ms apart…\n`);
  for (let i = 0; i < ENTRIES + warmup; i++) {
    const delivery = randomUUID();
    const name = entryName(delivery);
    const entry: QueueEntry = {
      event: "push",
      delivery_id: delivery,
      hook_id: "123456",
      received_at: new Date().toISOString(),
      source: "github",
      payload,
    };
    await writeEntryTimed(layout, name, entry, (at) => renamedAt.set(name, at));
    if (SPACING_MS > 0) await sleep(SPACING_MS);
  }
  const timeout = setTimeout(() => allSeen(), 15_000);
  await done;
  clearTimeout(timeout);
  await worker.close();
  if (seen.size < ENTRIES + warmup) throw new Error(`router pickup: only ${seen.size} of ${ENTRIES + warmup} entries were picked up within 15 s`);
  const measured = latencies.slice(warmup).sort((a, b) => a - b);
  if (measured.length < ENTRIES) throw new Error(`router pickup: ${ENTRIES - measured.length} entries were picked up without a pickup time`);
  return {
    entries: measured.length,
    p50: percentile(measured, 50),
    p90: percentile(measured, 90),
    p99: percentile(measured, 99),
    max: measured[measured.length - 1]!,
    mean: measured.reduce((a, b) => a + b, 0) / measured.length,
    over100ms: measured.filter((ms) => ms > 100).length,
  };
}

// ---------------------------------------------------------------------------------------
// Report

function percentile(sorted: number[], p: number): number {
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1]!;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function randomSha(): string {
  return randomBytes(20).toString("hex");
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  const line = (r: string[]) => `| ${r.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(" | ")} |`;
  const sep = `|${widths.map((w, i) => (i === 0 ? "-".repeat(w + 2) : `${"-".repeat(w + 1)}:`)).join("|")}|`;
  return [line(rows[0]!), sep, ...rows.slice(1).map(line)].join("\n");
}

function machine(): Record<string, string> {
  const cpuinfo = existsSync("/proc/cpuinfo") ? readFileSync("/proc/cpuinfo", "utf8") : "";
  const model = /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1] ?? os.cpus()[0]?.model ?? "unknown";
  let free = "";
  try {
    free = execFileSync("free", ["-h"], { encoding: "utf8" }).trim();
  } catch {
    free = `${(os.totalmem() / 2 ** 30).toFixed(1)} GiB total`;
  }
  let nproc = String(os.availableParallelism());
  try {
    nproc = execFileSync("nproc", { encoding: "utf8" }).trim();
  } catch {
    // keep Node's count
  }
  let wrk = "";
  try {
    wrk = execFileSync("wrk", ["--version"], { encoding: "utf8" });
  } catch (err) {
    wrk = String((err as { stdout?: string }).stdout ?? "");
  }
  return {
    date: new Date().toISOString(),
    node: process.version,
    cpu: model,
    nproc,
    memory: free,
    kernel: `${os.type()} ${os.release()}`,
    wrk: wrk.split("\n")[0]?.trim() ?? "",
  };
}

/** The HTTP tables: requests/s and latency, then CPU per served request, of each target. */
function printHttp(list: HttpFigures[], payload: Payload): void {
  const rows = [["target", "status", "ok req/s", "per run", "p50 ms", "p90 ms", "p99 ms", "max ms", "other responses", "load"]];
  for (const f of list) {
    const other = Object.entries(f.other)
      .map(([k, v]) => `${k}: ${v}`)
      .join(", ");
    rows.push([
      f.name,
      String(f.expected),
      f.okPerSec.toFixed(0),
      f.perRun.map((r) => r.toFixed(0)).join(" / "),
      f.p50Ms.toFixed(2),
      f.p90Ms.toFixed(2),
      f.p99Ms.toFixed(2),
      f.maxMs.toFixed(2),
      other || "none",
      f.load.map((l) => l.toFixed(1)).join(" / "),
    ]);
  }
  console.log(`HTTP: ${payload.bytes}-byte signed push, ${CONNECTIONS} connections, ${DURATION_S} s per target in ${ROUNDS} turns (wrk, ${THREADS} threads)`);
  console.log(table(rows));
  console.log("ok req/s counts only the expected status (202 queued / 204 bare / 200 adnanh/webhook); load = 1-min load average after each run");
  const cpuRows = [["CPU ms per served request", "user", "sys", "total"]];
  for (const f of list) {
    let total = 0;
    const wrkRows: string[][] = [];
    for (const [group, c] of Object.entries(f.cpuPerOk)) {
      const row = [`${f.name}: ${group}`, c.user.toFixed(3), c.sys.toFixed(3), (c.user + c.sys).toFixed(3)];
      if (group.startsWith("wrk")) {
        wrkRows.push(row);
        continue;
      }
      cpuRows.push(row);
      total += c.user + c.sys;
    }
    cpuRows.push([`${f.name}: all of the above`, "", "", total.toFixed(3)], ...wrkRows);
  }
  console.log(table(cpuRows));
  console.log(`(from /proc/<pid>/task; ${os.availableParallelism()} CPUs = ${(os.availableParallelism() * 1000).toFixed(0)} CPU ms per second, shared with wrk, the kernel and anything else running)`);
}

async function main(): Promise<void> {
  const info = machine();
  console.log(`deployq benchmark — ${info.date}`);
  console.log(`node ${info.node}, ${info.nproc} CPU (${info.cpu}), ${info.kernel}, ${info.wrk || "wrk: not found"}`);
  console.log(info.memory);
  console.log(`load average at the start: ${os.loadavg().map((l) => l.toFixed(2)).join(" ")}`);
  console.log(
    `settings: ${CONNECTIONS} connections, ${THREADS} wrk threads, ${WARMUP_S} s warm-up + ${DURATION_S} s measured per target; ` +
      `router: ${ENTRIES} entries ${SPACING_MS} ms apart\n`,
  );

  const workDir = await mkdtemp(path.join(os.tmpdir(), "deployq-bench-"));
  cleanups.push({ what: `remove ${workDir}`, run: () => rm(workDir, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 }) });

  const body = JSON.stringify(pushPayload({ repository: "octo-org/api", branch: "main", after: randomSha(), before: randomSha() }));
  const payload: Payload = { file: path.join(workDir, "push.json"), signature: await sign(SECRET, body), bytes: Buffer.byteLength(body) };
  await writeFile(payload.file, body);

  let receiver: HttpFigures | undefined;
  let bare: HttpFigures | undefined;
  let webhook: HttpFigures | undefined;
  let webhookInfo: { describe: string; queued: number } | undefined;
  let receiverInfo: { describe: string; queued: number } | undefined;
  let pickup: PickupFigures | undefined;
  if (ONLY.has("receiver") || ONLY.has("bare") || ONLY.has("webhook")) {
    console.error(`HTTP: signed push payload of ${payload.bytes} bytes, a fresh delivery GUID per request`);
    const targets: HttpTarget[] = [];
    const started = ONLY.has("receiver") ? await startReceiver(workDir) : undefined;
    if (started) {
      targets.push({
        name: "deployq receiver",
        url: started.url,
        expected: 202,
        runs: [],
        load: [],
        cpu: {},
        processes: async () => ({
          "event loop": cpu.mainThread(started.pid),
          "other threads": cpu.otherThreads(started.pid),
          ...(started.database ? { "Postgres backends": cpu.processes(await backendPids(started.database)) } : {}),
        }),
      });
    }
    const baseline = ONLY.has("bare") ? await startBare() : undefined;
    if (baseline) {
      targets.push({
        name: "bare Express 5",
        url: baseline.url,
        expected: 204,
        runs: [],
        load: [],
        cpu: {},
        processes: async () => ({ "event loop": cpu.mainThread(baseline.pid), "other threads": cpu.otherThreads(baseline.pid) }),
      });
    }
    const peer = ONLY.has("webhook") ? await startWebhook(workDir) : undefined;
    if (peer) {
      targets.push({
        name: "adnanh/webhook",
        url: peer.url,
        expected: 200,
        runs: [],
        load: [],
        cpu: {},
        processes: async () => ({ "webhook (Go)": cpu.processes([peer.pid]), "its commands (sh, sync, mv)": cpu.waitedChildren(peer.pid) }),
      });
    }
    await measureHttp(targets, payload);
    await baseline?.stop();
    if (peer) {
      await peer.stop();
      webhookInfo = { describe: peer.describe, queued: await peer.queued() };
    }
    if (started) {
      await started.stop();
      receiverInfo = { describe: started.describe, queued: await started.queued() };
    }
    for (const t of targets) {
      if (t.expected === 202) receiver = merge(t);
      else if (t.expected === 204) bare = merge(t);
      else webhook = merge(t);
    }
  }
  let observability: { on: HttpFigures; off: HttpFigures; describe: string } | undefined;
  if (ONLY.has("observability")) {
    console.error(`observability: the receiver with metrics and the event stream on, and off (bench/receiver-entry.ts both)`);
    const variants = [
      { label: "on", observability: true },
      { label: "off", observability: false },
    ];
    const targets: HttpTarget[] = [];
    const started: StartedReceiver[] = [];
    for (const v of variants) {
      const r = await startReceiver(workDir, v);
      started.push(r);
      targets.push({
        name: `receiver, observability ${v.label}`,
        url: r.url,
        expected: 202,
        runs: [],
        load: [],
        cpu: {},
        processes: async () => ({
          "event loop": cpu.mainThread(r.pid),
          "other threads": cpu.otherThreads(r.pid),
          ...(r.database ? { "Postgres backends": cpu.processes(await backendPids(r.database)) } : {}),
        }),
      });
    }
    await measureHttp(targets, payload);
    for (const r of started) await r.stop();
    observability = { on: merge(targets[0]!), off: merge(targets[1]!), describe: started[0]!.describe };
  }
  if (ONLY.has("router")) pickup = await benchRouterPickup(workDir);
  let watcher: WatcherFigures | undefined;
  if (ONLY.has("watcher")) {
    watcher = await runWatcherBench({
      workDir,
      samples: Math.round(positive("watcher-samples")),
      spacingMs: 5,
      piles: [0, 1000, 10_000],
      drainEntries: Math.round(positive("watcher-drain")),
      progress: (line) => process.stderr.write(`${line}\n`),
    });
  }
  let steps: StepFigure[] | undefined;
  if (ONLY.has("steps")) {
    process.stderr.write(`  request steps: serial costs, then ${CONNECTIONS} in flight for 3 s each…\n`);
    const database = await createDatabase();
    steps = await runSteps({
      databaseUrl: database.url,
      // The pool connects lazily: look the backends up at each reading (one born in between counts whole).
      databaseCpuMs: async () => {
        const t = cpu.processes(await backendPids(database.name))();
        return t.user + t.sys;
      },
      workDir,
      body,
      secret: SECRET,
      concurrency: CONNECTIONS,
      seconds: 3,
      poolSize: opts.pool ? Number(opts.pool) : undefined,
    });
  }

  let deploy: DeployFigures | undefined;
  if (ONLY.has("deploy")) {
    const profiles = path.join(REPO_ROOT, "bench", "profiles");
    if (opts["cpu-prof"]) await mkdir(profiles, { recursive: true });
    deploy = await runDeployBench({
      workDir,
      repoRoot: REPO_ROOT,
      secret: SECRET,
      pushes: Math.round(positive("deploy-pushes")),
      warmup: Math.max(1, Math.round(Number(opts["deploy-warmup"])) || 1),
      burst: Math.round(positive("burst")),
      files: Math.round(positive("repo-files")),
      cpuProfileDir: opts["cpu-prof"] ? profiles : undefined,
      createDatabase,
      startChild,
      childEnv,
      addCleanup: (what, run) => void cleanups.push({ what, run }),
      progress: (line) => process.stderr.write(`${line}\n`),
    });
  }
  let scale: ScaleFigures | undefined;
  if (ONLY.has("scale")) {
    if (opts["cpu-prof"]) await mkdir(path.join(REPO_ROOT, "bench", "profiles"), { recursive: true });
    scale = await runScaleBench({
      workDir,
      repoRoot: REPO_ROOT,
      secret: SECRET,
      sizes: opts["scale-sizes"].split(",").map((x) => Math.round(Number(x))).filter((x) => x > 0),
      idleSeconds: positive("idle-seconds"),
      fanout: Math.max(0, Math.round(Number(opts.fanout)) || 0),
      backlog: Math.max(0, Math.round(Number(opts.backlog)) || 0),
      ...(opts["cpu-prof"] ? { cpuProfileDir: path.join(REPO_ROOT, "bench", "profiles") } : {}),
      createDatabase,
      startChild,
      childEnv,
      progress: (line) => process.stderr.write(`${line}\n`),
    });
  }
  let dashboard: DashboardFigures | undefined;
  if (ONLY.has("dashboard")) {
    const profiles = path.join(REPO_ROOT, "bench", "profiles");
    if (opts["cpu-prof"]) await mkdir(profiles, { recursive: true });
    dashboard = await runDashboardBench({
      cpuProfileDir: opts["cpu-prof"] ? profiles : undefined,
      workDir,
      repoRoot: REPO_ROOT,
      secret: SECRET,
      deployments: 100,
      entries: 10_000,
      deploys: 10_000,
      requests: Math.round(positive("dashboard-requests")),
      createDatabase,
      startChild,
      childEnv,
      addCleanup: (what, run) => void cleanups.push({ what, run }),
      progress: (line) => process.stderr.write(`${line}\n`),
    });
  }
  let liveLog: LiveLogFigures | undefined;
  if (ONLY.has("live-log")) {
    liveLog = await runLiveLogBench({
      workDir,
      repoRoot: REPO_ROOT,
      secret: SECRET,
      lines: Math.round(positive("log-lines")),
      spacingMs: 5,
      skip: 50,
      createDatabase,
      startChild,
      childEnv,
      addCleanup: (what, run) => void cleanups.push({ what, run }),
      progress: (line) => process.stderr.write(`${line}\n`),
    });
  }
  let fleet: FleetFigures | undefined;
  if (ONLY.has("fleet")) {
    fleet = await runFleetBench({
      workDir,
      repoRoot: REPO_ROOT,
      secret: SECRET,
      pushes: Math.round(positive("fleet-pushes")),
      createDatabase,
      startChild,
      childEnv,
      addCleanup: (what, run) => void cleanups.push({ what, run }),
      progress: (line) => process.stderr.write(`${line}\n`),
    });
  }
  console.log("");
  if (receiver || bare || webhook) {
    printHttp([receiver, bare, webhook].filter((x): x is HttpFigures => x !== undefined), payload);
    if (receiverInfo) {
      const accepted = (receiver?.ok ?? 0);
      console.log(`receiver: ${receiverInfo.describe}; entries in queues/router/: ${receiverInfo.queued} (${accepted} measured 202s + warm-up)`);
    }
    if (receiver && bare) {
      const ratio = receiver.okPerSec / bare.okPerSec;
      console.log(`ratio deployq/bare: ${ratio.toFixed(3)}x  (target >= ${TARGET_RATIO}x: ${ratio >= TARGET_RATIO ? "met" : "NOT met"})`);
    }
    if (webhookInfo) {
      console.log(`adnanh/webhook: ${webhookInfo.describe}; payloads in its queue/: ${webhookInfo.queued} (${webhook?.ok ?? 0} measured 200s + warm-up)`);
    }
    if (receiver && webhook) {
      const ratio = receiver.okPerSec / webhook.okPerSec;
      console.log(`ratio deployq/adnanh-webhook: ${ratio.toFixed(2)}x  (target >= ${TARGET_WEBHOOK_RATIO}x: ${ratio >= TARGET_WEBHOOK_RATIO ? "met" : "NOT met"})`);
    }
    console.log("");
  }
  if (observability) {
    const { on, off } = observability;
    console.log(`observability: the receiver with metrics and the event stream on and off (${observability.describe}), the same load in turns`);
    printHttp([on, off], payload);
    const cost = 1 - on.okPerSec / off.okPerSec;
    console.log(
      `ratio on/off: ${(on.okPerSec / off.okPerSec).toFixed(3)}x; cost ${(cost * 100).toFixed(1)}% ` +
        `(target < ${TARGET_OBSERVABILITY_COST * 100}%: ${cost < TARGET_OBSERVABILITY_COST ? "met" : "NOT met"})`,
    );
    console.log("");
  }
  if (pickup) {
    console.log(`router pickup (rename into queues/router/ -> handler called), ${pickup.entries} entries, ${SPACING_MS} ms apart`);
    console.log(
      table([
        ["", "p50 ms", "p90 ms", "p99 ms", "max ms", "mean ms", "> 100 ms"],
        ["pickup", pickup.p50.toFixed(2), pickup.p90.toFixed(2), pickup.p99.toFixed(2), pickup.max.toFixed(2), pickup.mean.toFixed(2), String(pickup.over100ms)],
      ]),
    );
    console.log(`target p99 < ${TARGET_PICKUP_P99_MS} ms: ${pickup.p99 < TARGET_PICKUP_P99_MS ? "met" : "NOT met"}`);
    console.log("");
  }
  if (watcher) {
    console.log(watcherReport(watcher, table));
    console.log("");
  }
  if (fleet) {
    console.log(fleetReport(fleet, table));
    console.log("");
  }
  if (steps) {
    const n = (x: number | undefined, digits: number) => (x === undefined ? "" : x.toFixed(digits));
    console.log(`where a receiver request's time goes: each step alone, in process (bench/steps.ts)`);
    console.log(
      table([
        ["step", "serial µs/call", "calls/s", "p50 ms", "p99 ms", "CPU µs/call", "Postgres CPU µs/call"],
        ...steps.map((f) => [f.step, n(f.serialUs, 1), n(f.perSec, 0), n(f.p50Ms, 2), n(f.p99Ms, 2), n(f.cpuUs, 0), n(f.dbCpuUs, 0)]),
      ]),
    );
    const ceiling = steps.find((f) => f.step === GROUP_COMMIT_STEP(CONNECTIONS))?.perSec;
    if (ceiling !== undefined && bare) {
      console.log(
        `the durable path without HTTP (group commit, ${CONNECTIONS} in flight) / bare Express: ${(ceiling / bare.okPerSec).toFixed(3)}x ` +
          `(the most the receiver could reach against the ${TARGET_RATIO}x target on this machine, were its HTTP side free)`,
      );
    }
    if (ceiling !== undefined && receiver) {
      const share = receiver.okPerSec / ceiling;
      console.log(
        `the receiver / its own durable path without HTTP: ${(share * 100).toFixed(0)}% (${receiver.okPerSec.toFixed(0)} / ${ceiling.toFixed(0)} per s; ` +
          `target >= ${TARGET_CEILING_SHARE * 100}%: ${share >= TARGET_CEILING_SHARE ? "met" : "NOT met"})`,
      );
    }
  }
  if (deploy) {
    console.log("");
    console.log(deployReport(deploy, table));
  }
  if (dashboard) {
    console.log("");
    console.log(dashboardReport(dashboard, table));
  }
  if (liveLog) {
    console.log("");
    console.log(liveLogReport(liveLog, table));
  }
  if (scale) {
    console.log("");
    console.log(scaleReport(scale, table));
  }
  console.log(`\nload average at the end: ${os.loadavg().map((l) => l.toFixed(2)).join(" ")} (other work on the machine skews every figure)`);
}

try {
  await main();
} catch (err) {
  // After Ctrl-C the children end first, and whatever waited on them fails: not news.
  if (!interrupted) console.error(`bench failed: ${(err as Error).stack ?? String(err)}`);
  process.exitCode = 1;
} finally {
  await cleanupAll();
}
