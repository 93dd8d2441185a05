/**
 * `npm run bench`: deployq's benchmark (not a test: it asserts nothing about time).
 *
 * 1. Receiver throughput and latency: a real `deployq receiver` child process on a fresh
 *    Postgres database, loaded by wrk (C, its own process) with a signed 7-8 KB push
 *    payload and a different X-GitHub-Delivery per request; against the same load on a
 *    bare Express 5 app (bench/bare-express.ts) that reads the body and answers 204.
 * 2. Router pickup latency: from the rename of an entry into queues/router/ to the
 *    moment the queue worker (chokidar watcher + scan, src/queue/watch.ts) hands it to
 *    its handler, in process.
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
import { parseEntry } from "../src/workers/router.ts";

const REPO_ROOT = fileURLToPath(new URL("..", import.meta.url));
const DEPLOYQ_BIN = path.join(REPO_ROOT, "bin/deployq.js");
const BARE_EXPRESS = path.join(REPO_ROOT, "bench/bare-express.ts");
const RECEIVER_ENTRY = path.join(REPO_ROOT, "bench/receiver-entry.ts");
const WRK_SCRIPT = path.join(REPO_ROOT, "bench/wrk-webhook.lua");
const SECRET = "bench-secret-It's a Secret to Everybody";
const ADMIN_DATABASE_URL = process.env.DATABASE_URL || "postgres://postgres@127.0.0.1:5432/postgres";
const TARGET_RATIO = 0.35;
const TARGET_PICKUP_P99_MS = 10;

const usage = `usage: npm run bench -- [options]
  --duration <s>      measured seconds per HTTP target (default 10)
  --warmup <s>        unmeasured seconds before each HTTP run (default 2)
  --connections <n>   concurrent connections (default 32)
  --threads <n>       wrk threads (default 2)
  --entries <n>       router entries for the pickup latency (default 500)
  --spacing <ms>      pause between two router entries (default 5)
  --only <list>       comma-separated subset of: receiver,bare,router (default all)
profiling variants of the receiver (not the default figures):
  --pglite            the embedded PGlite (on disk) instead of Postgres
  --async-commit      Postgres synchronous_commit = off for the bench database (no WAL flush wait)
  --no-file-fsync     the receiver under Debian's libeatmydata (LD_PRELOAD): its fsync calls do nothing
  --uv-threads <n>    UV_THREADPOOL_SIZE for the receiver (Node's default is 4)
  --pool <n>          Postgres pool size (deployq's default is 20), through bench/receiver-entry.ts
  --cpu-prof          write a V8 CPU profile of the receiver into bench/profiles/`;

const { values: opts } = parseArgs({
  options: {
    duration: { type: "string", default: "10" },
    warmup: { type: "string", default: "2" },
    connections: { type: "string", default: "32" },
    threads: { type: "string", default: "2" },
    entries: { type: "string", default: "500" },
    spacing: { type: "string", default: "5" },
    only: { type: "string", default: "receiver,bare,router" },
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

for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => {
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
  latency_us: { min: number; mean: number; max: number; p50: number; p90: number; p99: number; p999: number };
  statuses: Record<string, number>;
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
  const nonce = randomBytes(4).toString("hex");
  const args = [
    `-t${THREADS}`,
    `-c${CONNECTIONS}`,
    `-d${seconds}s`,
    "--timeout",
    "10s",
    "-s",
    WRK_SCRIPT,
    url,
    "--",
    payload.file,
    payload.signature,
    nonce,
  ];
  const wrk = startChild("wrk", findWrk(), args, process.env);
  const [, json] = await wrk.waitFor(/WRK_RESULT (\{.*\})\n/, (seconds + 30) * 1000);
  await wrk.stop();
  return JSON.parse(json!) as WrkResult;
}

interface HttpFigures {
  name: string;
  expected: number;
  result: WrkResult;
  /** Responses with the expected status, per second. */
  okPerSec: number;
  other: Record<string, number>;
}

function figures(name: string, expected: number, result: WrkResult): HttpFigures {
  const ok = result.statuses[String(expected)] ?? 0;
  const other = Object.fromEntries(Object.entries(result.statuses).filter(([code]) => code !== String(expected)));
  const e = result.errors;
  const socketErrors = e.connect + e.read + e.write + e.timeout;
  if (socketErrors > 0) other.socket_errors = socketErrors;
  return { name, expected, result, okPerSec: ok / (result.duration_us / 1e6), other };
}

async function benchHttp(name: string, url: string, expected: number, payload: Payload): Promise<HttpFigures> {
  if (WARMUP_S > 0) {
    process.stderr.write(`  ${name}: warm-up ${WARMUP_S} s…\n`);
    await runWrk(url, payload, WARMUP_S);
  }
  process.stderr.write(`  ${name}: measuring ${DURATION_S} s, ${CONNECTIONS} connections…\n`);
  return figures(name, expected, await runWrk(url, payload, DURATION_S));
}

// ---------------------------------------------------------------------------------------
// 1a. The deployq receiver

async function createDatabase(): Promise<string> {
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
  return url.toString();
}

async function benchReceiver(workDir: string, payload: Payload): Promise<{ http: HttpFigures; database: string; queued: number }> {
  const dir = path.join(workDir, "receiver");
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
  const databaseUrl = opts.pglite ? undefined : await createDatabase();
  const env = childEnv({
    GITHUB_WEBHOOK_SECRET: SECRET,
    DEPLOYQ_LOG_LEVEL: "warn",
    ...(databaseUrl ? { DATABASE_URL: databaseUrl } : {}),
  });
  if (!databaseUrl) delete env.DATABASE_URL;
  if (opts["uv-threads"]) env.UV_THREADPOOL_SIZE = opts["uv-threads"];
  if (opts["no-file-fsync"]) env.LD_PRELOAD = findEatMyData();
  const nodeArgs: string[] = [];
  if (opts["cpu-prof"]) {
    const dir = path.join(REPO_ROOT, "bench", "profiles");
    await mkdir(dir, { recursive: true });
    nodeArgs.push("--cpu-prof", "--cpu-prof-dir", dir);
  }
  // The real CLI, unless a variant needs the bench's own entry (pool size, exit that writes the profile).
  const entry =
    opts.pool || opts["cpu-prof"]
      ? ["--import", "tsx", RECEIVER_ENTRY, configPath, ...(opts.pool ? [opts.pool] : [])]
      : [DEPLOYQ_BIN, "receiver", "--config", configPath];
  const receiver = startChild("deployq receiver", process.execPath, [...nodeArgs, ...entry], env);
  const [, url] = await receiver.waitFor(/listening on (http:\/\/\S+)/, 60_000);
  const http = await benchHttp("deployq receiver", url!, 202, payload);
  await receiver.stop();
  // Cross-check: every 202 (warm-up included) left exactly one durable entry in router/.
  const queued = (await readdir(path.join(dir, "queues", "router"))).filter((n) => n.endsWith(".json")).length;
  const variant = [
    databaseUrl ? "Postgres (fresh database)" : "PGlite (embedded, on disk)",
    opts["async-commit"] ? "synchronous_commit = off" : "",
    opts["no-file-fsync"] ? "file fsync disabled (eatmydata)" : "",
    opts["uv-threads"] ? `UV_THREADPOOL_SIZE=${opts["uv-threads"]}` : "",
    opts.pool ? `pool ${opts.pool}` : "",
    opts["cpu-prof"] ? "CPU profile in bench/profiles/" : "",
  ].filter(Boolean);
  return { http, database: variant.join(", "), queued };
}

// 1b. The baseline

async function benchBare(payload: Payload): Promise<HttpFigures> {
  const env = childEnv({});
  const bare = startChild("bare express", process.execPath, ["--import", "tsx", BARE_EXPRESS], env);
  const [, url] = await bare.waitFor(/listening on (http:\/\/\S+)/, 60_000);
  const http = await benchHttp("bare Express 5", url!, 204, payload);
  await bare.stop();
  return http;
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
    handle: async (name) => {
      const pickedAt = performance.now();
      if (!seen.has(name)) {
        seen.add(name);
        const t0 = renamedAt.get(name);
        if (t0 === undefined) throw new Error(`picked up ${name} before its rename was timed`);
        latencies.push(pickedAt - t0);
        if (seen.size === ENTRIES + warmup) allSeen();
      }
      const file = path.join(layout.router, name);
      const parsed = parseEntry(await readFile(file, "utf8"));
      if (!parsed.ok) throw new Error(parsed.error);
      await removeEntry(file);
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

const ms = (us: number) => (us / 1000).toFixed(2);

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

async function main(): Promise<void> {
  const info = machine();
  console.log(`deployq benchmark — ${info.date}`);
  console.log(`node ${info.node}, ${info.nproc} CPU (${info.cpu}), ${info.kernel}, ${info.wrk || "wrk: not found"}`);
  console.log(info.memory);
  console.log(
    `settings: ${CONNECTIONS} connections, ${THREADS} wrk threads, ${WARMUP_S} s warm-up + ${DURATION_S} s measured per target; ` +
      `router: ${ENTRIES} entries ${SPACING_MS} ms apart\n`,
  );

  const workDir = await mkdtemp(path.join(os.tmpdir(), "deployq-bench-"));
  cleanups.push({ what: `remove ${workDir}`, run: () => rm(workDir, { recursive: true, force: true }) });

  const body = JSON.stringify(pushPayload({ repository: "octo-org/api", branch: "main", after: randomSha(), before: randomSha() }));
  const payload: Payload = { file: path.join(workDir, "push.json"), signature: await sign(SECRET, body), bytes: Buffer.byteLength(body) };
  await writeFile(payload.file, body);

  let receiver: Awaited<ReturnType<typeof benchReceiver>> | undefined;
  let bare: HttpFigures | undefined;
  let pickup: PickupFigures | undefined;
  if (ONLY.has("receiver") || ONLY.has("bare")) console.error(`HTTP: signed push payload of ${payload.bytes} bytes, a fresh delivery GUID per request`);
  if (ONLY.has("receiver")) receiver = await benchReceiver(workDir, payload);
  if (ONLY.has("bare")) bare = await benchBare(payload);
  if (ONLY.has("router")) pickup = await benchRouterPickup(workDir);

  console.log("");
  if (receiver || bare) {
    const rows = [["target", "expected", "ok req/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "other responses"]];
    for (const f of [receiver?.http, bare].filter((x): x is HttpFigures => x !== undefined)) {
      const l = f.result.latency_us;
      const other = Object.entries(f.other)
        .map(([k, v]) => `${k}: ${v}`)
        .join(", ");
      rows.push([f.name, String(f.expected), f.okPerSec.toFixed(0), ms(l.p50), ms(l.p90), ms(l.p99), ms(l.max), other || "none"]);
    }
    console.log(`HTTP, ${payload.bytes}-byte signed push, ${CONNECTIONS} connections, ${DURATION_S} s (wrk)`);
    console.log(table(rows));
    if (receiver) {
      console.log(`receiver: ${receiver.database}; entries left in queues/router/: ${receiver.queued} (warm-up included)`);
    }
    if (receiver && bare) {
      const ratio = receiver.http.okPerSec / bare.okPerSec;
      console.log(
        `ratio deployq/bare: ${ratio.toFixed(3)}x  (target >= ${TARGET_RATIO}x: ${ratio >= TARGET_RATIO ? "met" : "NOT met"})`,
      );
    }
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
  }
}

try {
  await main();
} catch (err) {
  console.error(`bench failed: ${(err as Error).stack ?? String(err)}`);
  process.exitCode = 1;
} finally {
  await cleanupAll();
}
