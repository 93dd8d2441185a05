/**
 * The `scale` section of `npm run bench`: how `deployq workers` grows with its configuration
 * and its backlog. Real child processes (`node bin/deployq.js workers|receiver`), a fresh
 * Postgres database.
 *
 * 1. 1, 10, 100, 1000 configured deployments, each following its own repository with a
 *    cheap build (`commands = [["true"]]`): time from spawn to "deployq started" (the
 *    workers have started their queues), then, idle, RSS, CPU over `idleSeconds`, open file
 *    descriptors (/proc/<pid>/fd) and inotify watches (the `inotify wd:` lines of
 *    /proc/<pid>/fdinfo/*).
 * 2. Fan-out: 1000 deployments following the same repository and branch (all paused, so
 *    that nothing deploys); one entry written into router/ as the receiver writes it
 *    (writeEntryDurably); time until it has left router/ (every hand-over done) and until
 *    each of the 1000 deployment queues holds it.
 * 3. Backlog: `backlog` entries (100,000 by default) in router/, written as the receiver's
 *    files (entry names and contents; not fsync'd one by one, to keep the set-up short),
 *    one deployment following them, paused. A `deployq receiver` on the same queue root
 *    first records their rows (orphaned entries, as after a crash); then `deployq workers`
 *    starts: time to ready, to the first entry handed over (its start-up scan of router/),
 *    to router/ holding none of the backlog; its peak RSS (VmHWM); and the receiver's
 *    latency for signed pushes sent one at a time, before and while the workers drain.
 */
import { randomUUID } from "node:crypto";
import { existsSync, readFileSync, readdirSync, watch, writeFileSync } from "node:fs";
import { mkdir, readdir, writeFile } from "node:fs/promises";
import path from "node:path";
import { sign } from "@octokit/webhooks-methods";
import { pushPayload } from "../src/push-payload.ts";
import { type QueueEntry, serializeEntry } from "../src/queue/entry.ts";
import { queueLayout } from "../src/queue/layout.ts";
import { ensureQueueDirs, writeEntryDurably } from "../src/queue/write.ts";

export interface ScaleChild {
  child: import("node:child_process").ChildProcess;
  output(): string;
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<RegExpExecArray>;
  stop(): Promise<void>;
}

export interface ScaleOptions {
  workDir: string;
  repoRoot: string;
  secret: string;
  sizes: number[];
  idleSeconds: number;
  fanout: number;
  backlog: number;
  /** Profiling: the backlog's `deployq workers` runs with --cpu-prof, its profile written here when it stops. */
  cpuProfileDir?: string;
  createDatabase(): Promise<{ url: string; name: string }>;
  startChild(name: string, command: string, args: string[], env: NodeJS.ProcessEnv): ScaleChild;
  childEnv(extra: NodeJS.ProcessEnv): NodeJS.ProcessEnv;
  progress(line: string): void;
}

export interface IdleRow {
  deployments: number;
  readyMs: number;
  rssMb: number;
  cpuPercent: number;
  fds: number;
  inotifyWatches: number;
}

export interface FanoutFigures {
  deployments: number;
  routedMs: number;
  allQueuedMs: number;
  queued: number;
}

export interface Dist {
  n: number;
  p50: number;
  p99: number;
  max: number;
}

export interface BacklogFigures {
  entries: number;
  writeS: number;
  receiverAdoptS: number;
  readyMs: number;
  firstHandedOverMs: number;
  drainedS: number;
  peakRssMb: number;
  workersCpuS: number;
  before: Dist;
  during: Dist;
  during503: number;
}

export interface ScaleFigures {
  idle: IdleRow[];
  fanout?: FanoutFigures;
  backlog?: BacklogFigures;
  idleSeconds: number;
}

export const TARGET_IDLE_RSS_MB_AT_100 = 100;
export const TARGET_BACKLOG_SCAN_S = 5;

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
const CLOCK_TICKS = 100;

function procCpuMs(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return ((Number(f[11]) + Number(f[12])) * 1000) / CLOCK_TICKS;
  } catch {
    return NaN;
  }
}

function statusKb(pid: number, key: "VmRSS" | "VmHWM"): number {
  try {
    const m = new RegExp(`^${key}:\\s+(\\d+) kB`, "m").exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) : NaN;
  } catch {
    return NaN;
  }
}

function fdsAndWatches(pid: number): { fds: number; watches: number } {
  const fds = readdirSync(`/proc/${pid}/fd`);
  let watches = 0;
  for (const fd of fds) {
    try {
      const info = readFileSync(`/proc/${pid}/fdinfo/${fd}`, "utf8");
      for (const line of info.split("\n")) if (line.startsWith("inotify wd:")) watches++;
    } catch {
      // closed meanwhile
    }
  }
  return { fds: fds.length, watches };
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1]!;
}

function dist(values: number[]): Dist {
  const s = [...values].sort((a, b) => a - b);
  return { n: s.length, p50: percentile(s, 50), p99: percentile(s, 99), max: s[s.length - 1] ?? NaN };
}

function config(deployments: string): string {
  return `data_dir = "./data"\nqueues_dir = "./queues"\n\n[server]\nhost = "127.0.0.1"\nport = 0\n${deployments}`;
}

function deployment(name: string, repository: string): string {
  return `
[deployments.${name}]
repository = "${repository}"
branch = "main"
remote = "/nonexistent/${name}.git"
path = "./apps/${name}"
commands = [["true"]]
`;
}

/** Pauses a deployment the way `deployq pause` does (its file in paused/), before the workers start. */
function pauseFile(queues: string, name: string): void {
  writeFileSync(path.join(queues, "paused", `${name}.json`), `${JSON.stringify({ reason: "bench: nothing deploys", by: "bench", at: new Date().toISOString() }, null, 2)}\n`);
}

export async function runScaleBench(o: ScaleOptions): Promise<ScaleFigures> {
  const database = await o.createDatabase();
  const bin = path.join(o.repoRoot, "bin/deployq.js");
  const env = o.childEnv({ GITHUB_WEBHOOK_SECRET: o.secret, DATABASE_URL: database.url, DEPLOYQ_LOG_LEVEL: "info" });
  const root = path.join(o.workDir, "scale");
  await mkdir(root, { recursive: true });

  // Migrate once, so that no start-up below includes it.
  {
    const dir = path.join(root, "migrate");
    await mkdir(dir, { recursive: true });
    await writeFile(path.join(dir, "deployq.toml"), config(deployment("m", "octo-org/m")));
    const m = o.startChild("deployq migrate", process.execPath, [bin, "migrate", "--config", path.join(dir, "deployq.toml")], env);
    await new Promise<void>((resolve) => m.child.once("exit", () => resolve()));
    if (m.child.exitCode !== 0) throw new Error(`deployq migrate failed:\n${m.output()}`);
  }

  const startWorkers = async (dir: string, label: string, profile = false) => {
    const t0 = performance.now();
    const prof = profile && o.cpuProfileDir ? ["--cpu-prof", "--cpu-prof-dir", o.cpuProfileDir] : [];
    const w = o.startChild(`deployq workers (${label})`, process.execPath, [...prof, bin, "workers", "--config", path.join(dir, "deployq.toml")], env);
    await w.waitFor(/"msg":"deployq started"/, 600_000);
    return { w, pid: w.child.pid!, readyMs: performance.now() - t0 };
  };

  // 1. Idle, by configured deployments.
  const idle: IdleRow[] = [];
  for (const n of o.sizes) {
    o.progress(`  scale: ${n} deployments, start-up and ${o.idleSeconds} s idle…`);
    const dir = path.join(root, `idle-${n}`);
    await mkdir(dir, { recursive: true });
    const names = Array.from({ length: n }, (_, i) => `d${i}`);
    await writeFile(path.join(dir, "deployq.toml"), config(names.map((d) => deployment(d, `octo-org/${d}`)).join("")));
    const { w, pid, readyMs } = await startWorkers(dir, `${n} deployments`);
    await sleep(1000); // the first passes over the (empty) queues end
    const cpu0 = procCpuMs(pid);
    const t0 = performance.now();
    await sleep(o.idleSeconds * 1000);
    const cpuPercent = ((procCpuMs(pid) - cpu0) / (performance.now() - t0)) * 100;
    const { fds, watches } = fdsAndWatches(pid);
    idle.push({ deployments: n, readyMs, rssMb: statusKb(pid, "VmRSS") / 1024, cpuPercent, fds, inotifyWatches: watches });
    await w.stop();
  }

  // 2. One push fanned out to `fanout` deployments.
  let fanout: FanoutFigures | undefined;
  if (o.fanout > 0) {
    o.progress(`  scale: one push fanned out to ${o.fanout} deployments (paused)…`);
    const dir = path.join(root, "fanout");
    const names = Array.from({ length: o.fanout }, (_, i) => `f${i}`);
    await mkdir(path.join(dir, "queues", "paused"), { recursive: true });
    await writeFile(path.join(dir, "deployq.toml"), config(names.map((d) => deployment(d, "octo-org/fan")).join("")));
    for (const d of names) pauseFile(path.join(dir, "queues"), d);
    const layout = queueLayout(path.join(dir, "queues"));
    await ensureQueueDirs(layout, names);
    const { w } = await startWorkers(dir, "fan-out");
    await sleep(2000);
    const delivery = randomUUID();
    const name = `${(BigInt(Date.now()) * 1_000_000n).toString().padStart(19, "0")}-${delivery}.json`;
    const entry: QueueEntry = {
      event: "push",
      delivery_id: delivery,
      hook_id: "123456",
      received_at: new Date().toISOString(),
      source: "github",
      payload: pushPayload({ repository: "octo-org/fan", branch: "main", after: "a".repeat(40) }),
    };
    await writeEntryDurably(layout, layout.router, name, entry);
    const t0 = performance.now();
    const routerFile = path.join(layout.router, name);
    const remaining = new Set(names.map((d) => path.join(layout.deployment(d), name)));
    let routedMs = NaN;
    let allQueuedMs = NaN;
    const deadline = t0 + 120_000;
    while (performance.now() < deadline) {
      if (Number.isNaN(routedMs) && !existsSync(routerFile)) routedMs = performance.now() - t0;
      for (const f of remaining) if (existsSync(f)) remaining.delete(f);
      if (remaining.size === 0 && Number.isNaN(allQueuedMs)) allQueuedMs = performance.now() - t0;
      if (!Number.isNaN(routedMs) && !Number.isNaN(allQueuedMs)) break;
      await sleep(2);
    }
    fanout = { deployments: o.fanout, routedMs, allQueuedMs, queued: o.fanout - remaining.size };
    await w.stop();
  }

  // 3. A backlog in router/.
  let backlog: BacklogFigures | undefined;
  if (o.backlog > 0) {
    const n = o.backlog;
    o.progress(`  scale: writing a ${n}-entry backlog into router/…`);
    const dir = path.join(root, "backlog");
    await mkdir(path.join(dir, "queues", "paused"), { recursive: true });
    await writeFile(path.join(dir, "deployq.toml"), config(deployment("app", "octo-org/api")));
    pauseFile(path.join(dir, "queues"), "app");
    const layout = queueLayout(path.join(dir, "queues"));
    await ensureQueueDirs(layout, ["app"]);
    const w0 = performance.now();
    const startNs = BigInt(Date.now() - 3_600_000) * 1_000_000n;
    const backlogNames = new Set<string>();
    const payload = pushPayload({ repository: "octo-org/api", branch: "main", after: "b".repeat(40) });
    for (let i = 0; i < n; i++) {
      const delivery = randomUUID();
      const name = `${(startNs + BigInt(i) * 1000n).toString().padStart(19, "0")}-${delivery}.json`;
      backlogNames.add(name);
      const entry: QueueEntry = { event: "push", delivery_id: delivery, hook_id: "123456", received_at: new Date().toISOString(), source: "github", payload };
      writeFileSync(path.join(layout.router, name), serializeEntry(entry));
      // Let signals in: tsx relays Ctrl-C and kills a child that does not answer in time.
      if (i % 1000 === 999) await new Promise((resolve) => setImmediate(resolve));
    }
    const writeS = (performance.now() - w0) / 1000;

    o.progress(`  scale: deployq receiver on the same queue root records the backlog's rows…`);
    const r0 = performance.now();
    const receiver = o.startChild("deployq receiver (scale)", process.execPath, [bin, "receiver", "--config", path.join(dir, "deployq.toml")], env);
    const [, url] = await receiver.waitFor(/listening on (http:\/\/\S+)/, 120_000);
    await receiver.waitFor(/recorded entries a previous receiver wrote/, 1_800_000);
    const receiverAdoptS = (performance.now() - r0) / 1000;

    const body = JSON.stringify(pushPayload({ repository: "octo-org/api", branch: "main", after: "c".repeat(40) }));
    const signature = await sign(o.secret, body);
    let statuses503 = 0;
    const post = async (): Promise<number> => {
      const t = performance.now();
      const res = await fetch(`${url}/github-webhook`, {
        method: "POST",
        headers: { "content-type": "application/json", "x-github-event": "push", "x-github-delivery": randomUUID(), "x-github-hook-id": "123456", "x-hub-signature-256": signature },
        body,
      });
      await res.arrayBuffer();
      if (res.status === 503) statuses503++;
      else if (res.status !== 202) throw new Error(`receiver answered ${res.status}`);
      return performance.now() - t;
    };
    o.progress(`  scale: receiver latency before the workers start (200 pushes, one at a time, 20 ms apart)…`);
    const before: number[] = [];
    for (let i = 0; i < 200; i++) {
      before.push(await post());
      await sleep(20);
    }

    o.progress(`  scale: deployq workers on the ${n}-entry backlog…`);
    let firstHandedOver = NaN;
    const t0 = performance.now();
    const appQueue = layout.deployment("app");
    const watcher = watch(appQueue, () => {
      if (Number.isNaN(firstHandedOver)) firstHandedOver = performance.now() - t0;
    });
    const during: number[] = [];
    let draining = true;
    const load = (async () => {
      while (draining) {
        during.push(await post());
        await sleep(20);
      }
    })();
    let w: ScaleChild | undefined;
    let pid = 0;
    let readyMs = NaN;
    let drainedS = NaN;
    try {
      const started = await startWorkers(dir, "backlog", true);
      w = started.w;
      pid = started.pid;
      readyMs = started.readyMs;
      const deadline = t0 + 3_600_000;
      for (;;) {
        const left = (await readdir(layout.router)).filter((x) => backlogNames.has(x)).length;
        if (left === 0) {
          drainedS = (performance.now() - t0) / 1000;
          break;
        }
        if (performance.now() > deadline) throw new Error(`backlog: ${left} entries still in router/ after an hour`);
        await sleep(250);
      }
    } finally {
      draining = false;
      await load.catch(() => {});
      watcher.close();
    }
    const peakRssMb = statusKb(pid, "VmHWM") / 1024;
    const workersCpuS = procCpuMs(pid) / 1000;
    await w.stop();
    await receiver.stop();
    backlog = { entries: n, writeS, receiverAdoptS, readyMs, firstHandedOverMs: firstHandedOver, drainedS, peakRssMb, workersCpuS, before: dist(before), during: dist(during), during503: statuses503 };
  }
  return { idle, fanout, backlog, idleSeconds: o.idleSeconds };
}

type Table = (rows: string[][]) => string;

export function scaleReport(f: ScaleFigures, table: Table): string {
  const out: string[] = [];
  out.push(`scale: deployq workers by configured deployments (each its own repository, commands = [["true"]]), idle ${f.idleSeconds} s`);
  const rows = [["deployments", "start-up to ready ms", "idle RSS MB", "idle CPU %", "open fds", "inotify watches"]];
  for (const r of f.idle) rows.push([String(r.deployments), r.readyMs.toFixed(0), r.rssMb.toFixed(1), r.cpuPercent.toFixed(2), String(r.fds), String(r.inotifyWatches)]);
  out.push(table(rows));
  const at100 = f.idle.find((r) => r.deployments === 100);
  if (at100) out.push(`idle RSS at 100 deployments: ${at100.rssMb.toFixed(1)} MB (target < ${TARGET_IDLE_RSS_MB_AT_100} MB: ${at100.rssMb < TARGET_IDLE_RSS_MB_AT_100 ? "met" : "NOT met"})`);
  // Growth: each step's increase per added deployment, against the step before.
  for (let i = 1; i < f.idle.length; i++) {
    const a = f.idle[i - 1]!;
    const b = f.idle[i]!;
    const per = (x: number, y: number) => (y - x) / (b.deployments - a.deployments);
    out.push(
      `  ${a.deployments} -> ${b.deployments}: per added deployment +${per(a.readyMs, b.readyMs).toFixed(2)} ms start-up, ` +
        `+${(per(a.rssMb, b.rssMb) * 1024).toFixed(0)} KB RSS, +${per(a.cpuPercent, b.cpuPercent).toFixed(4)} % CPU, +${per(a.fds, b.fds).toFixed(2)} fds, +${per(a.inotifyWatches, b.inotifyWatches).toFixed(2)} watches`,
    );
  }
  if (f.fanout) {
    out.push("");
    out.push(`fan-out: one push to ${f.fanout.deployments} deployments following the same branch (paused)`);
    out.push(
      table([
        ["", "ms"],
        ["written into router/ -> gone from router/ (every hand-over done)", f.fanout.routedMs.toFixed(1)],
        [`-> in all ${f.fanout.deployments} deployment queues (${f.fanout.queued} seen)`, f.fanout.allQueuedMs.toFixed(1)],
      ]),
    );
  }
  if (f.backlog) {
    const b = f.backlog;
    out.push("");
    out.push(`backlog: ${b.entries} entries in router/ (one deployment follows them, paused)`);
    out.push(
      table([
        ["", "value"],
        ["set-up: writing the entry files (not fsync'd), s", b.writeS.toFixed(1)],
        ["receiver start until it recorded their rows (orphans), s", b.receiverAdoptS.toFixed(1)],
        ["workers: spawn -> ready ('deployq started'), ms", b.readyMs.toFixed(0)],
        ["workers: spawn -> first entry handed over (start-up scan + first batch), ms", b.firstHandedOverMs.toFixed(0)],
        ["workers: spawn -> router/ holds none of the backlog, s", b.drainedS.toFixed(1)],
        ["  = entries/s", (b.entries / b.drainedS).toFixed(0)],
        ["workers: peak RSS (VmHWM), MB", b.peakRssMb.toFixed(1)],
        ["workers: CPU, s (user + sys, whole run)", b.workersCpuS.toFixed(1)],
      ]),
    );
    out.push(
      `start-up scan (spawn -> first hand-over): ${(b.firstHandedOverMs / 1000).toFixed(2)} s (target < ${TARGET_BACKLOG_SCAN_S} s: ${b.firstHandedOverMs / 1000 < TARGET_BACKLOG_SCAN_S ? "met" : "NOT met"})`,
    );
    out.push(
      table([
        ["receiver POST latency (one at a time)", "n", "p50 ms", "p99 ms", "max ms"],
        ["before the workers start", String(b.before.n), b.before.p50.toFixed(2), b.before.p99.toFixed(2), b.before.max.toFixed(2)],
        ["while the workers drain", String(b.during.n), b.during.p50.toFixed(2), b.during.p99.toFixed(2), b.during.max.toFixed(2)],
      ]),
    );
    if (b.during503 > 0) out.push(`  ${b.during503} answers were 503`);
  }
  return out.join("\n");
}
