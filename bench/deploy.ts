/**
 * The deploy part of `npm run bench` (issue 3's benchmark; `--only deploy` runs it alone).
 *
 * 1. deployq's own overhead for a deploy with no commands and no restart: a real
 *    `node bin/deployq.js serve` child process on a fresh Postgres database, one deployment
 *    (releases strategy) following a local bare repository. Before each measured deploy a
 *    fresh commit is pushed to that repository (untimed); then the clock starts just before
 *    the signed POST /github-webhook and stops when `<path>/current` points at the new
 *    release (an inotify watch on the deployment directory sees the rename that switches the
 *    symlink; a 50 ms readlink poll is only a fallback, and the report says if it was used).
 *    The next push waits until the deploy's row is final, so deploys never overlap.
 *    Baseline, for the same push, in the same run: a shell script doing what a classic
 *    post-receive hook does (see BASELINE_SCRIPT), timed the same way, from just before its
 *    spawn to the same symlink switch. Each push is deployed by both, the order alternating.
 * 2. A burst: N commits pushed to the bare repository, then N signed webhooks, one per
 *    commit, sent one after the other as fast as the receiver answers (each waits for its
 *    202) to the same daemon: how many deploys ran, how many were superseded, and the time
 *    from the first webhook to the last commit being current.
 *
 * It asserts nothing about time. Everything it starts is stopped through `addCleanup` (run.ts
 * undoes it in reverse order, also on error or Ctrl-C); its files live under `workDir`.
 */
import { randomUUID } from "node:crypto";
import { type ChildProcess, execFile, execFileSync } from "node:child_process";
import { type FSWatcher, readFileSync, readlinkSync, watch } from "node:fs";
import { mkdir, readFile, readdir, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { sign } from "@octokit/webhooks-methods";
import postgres from "postgres";
import { pushPayload } from "../src/push-payload.ts";

const run = promisify(execFile);

/** The subset of run.ts's child handle this part uses. */
export interface DeployBenchChild {
  child: ChildProcess;
  output(): string;
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<RegExpExecArray>;
  stop(): Promise<void>;
}

export interface DeployBenchOptions {
  workDir: string;
  repoRoot: string;
  secret: string;
  /** Measured pushes, each deployed by deployq and by the baseline. */
  pushes: number;
  /** Unmeasured pushes before them (the first one fills the empty mirrors). */
  warmup: number;
  /** Pushes in the burst. */
  burst: number;
  /** Files in the generated repository (besides version.txt). */
  files: number;
  /** Profiling: run `deployq serve` with --cpu-prof, its profile written here when it stops. */
  cpuProfileDir?: string;
  createDatabase(): Promise<{ url: string; name: string }>;
  startChild(name: string, command: string, args: string[], env: NodeJS.ProcessEnv): DeployBenchChild;
  childEnv(extra: NodeJS.ProcessEnv): NodeJS.ProcessEnv;
  addCleanup(what: string, run: () => Promise<void>): void;
  progress(line: string): void;
}

export interface Distribution {
  n: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
  mean: number;
}

export interface DeployFigures {
  git: string;
  repo: { files: number; bytes: number };
  pushes: number;
  warmup: number;
  deployq: Distribution;
  baseline: Distribution;
  /** The first warm-up push: deployq and the baseline start from an empty mirror. */
  firstDeploy: { deployq: number; baseline: number };
  /** Times the 50 ms poll, not the inotify watch, saw the switch first (its time is then late by up to 50 ms). */
  seenByPoll: number;
  /** Where deployq's time goes: each mark's time after the POST, and the step that ends there. */
  segments: Array<{ name: string; at: Distribution; step: Distribution }>;
  /** Baseline: spawn → script exit (it exits right after the switch). */
  baselineExit: Distribution;
  /** CPU milliseconds (user + sys) per measured push, from /proc. */
  cpu: { daemon: number; daemonMain: number; daemonChildren: number; postgres: number; baseline: number };
  burst: BurstFigures;
  /** 1-minute load average before part 1, after part 1, after the burst. */
  load: number[];
  seconds: number;
}

export interface BurstFigures {
  webhooks: number;
  accepted: number;
  /** From before the first POST until the last one was answered. */
  sendMs: number;
  /** From before the first POST until `current` pointed at the last commit. */
  lastCurrentMs: number;
  /** From before the first POST until every entry had its final row and the queues were empty (20 ms polling). */
  drainedMs: number;
  rows: number;
  byStatus: Record<string, number>;
  /** Deploys that ran (status not superseded), in order: which push of the burst (1-based), status, duration. */
  ran: Array<{ push: number; status: string; durationMs: number | null }>;
}

/**
 * The baseline: a classic post-receive deploy of one push, as a POSIX shell script. It
 * fetches every branch into a bare mirror (created on the first run), creates a new release
 * directory, checks the commit out into it with `git --work-tree=<dir> checkout -f <sha>`
 * (the mirror's own index, as a hook does), and switches `current` to it the way deployq
 * does (new symlink under a temporary name, renamed over the old one). No fsync, no log,
 * no database, no lock, no queue.
 */
const BASELINE_SCRIPT = `#!/bin/sh
# usage: baseline.sh <deployment dir> <remote> <sha>
set -eu
root=$1 remote=$2 sha=$3
mirror="$root/repo.git"
[ -d "$mirror" ] || git init --bare --quiet "$mirror"
git --git-dir="$mirror" fetch --prune --no-tags --quiet "$remote" '+refs/heads/*:refs/heads/*'
release="releases/$(date -u +%Y%m%dT%H%M%S.%3NZ)-$(printf %.7s "$sha")"
mkdir -p "$root/$release"
git --git-dir="$mirror" --work-tree="$root/$release" checkout -f --quiet "$sha"
ln -sfn "$release" "$root/current.tmp"
mv -T "$root/current.tmp" "$root/current"
`;

const CLOCK_TICKS = (() => {
  try {
    return Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
  } catch {
    return 100;
  }
})();

/**
 * CPU milliseconds of a process from /proc/<pid>/stat: its own threads, and the children it
 * has waited for (git under deployq; everything a shell script ran under the bench).
 */
function procCpu(pid: number): { self: number; main: number; children: number } {
  const read = (file: string) => {
    try {
      const stat = readFileSync(file, "utf8");
      // After "pid (comm) ": utime, stime, cutime, cstime are fields 14-17, indexes 11-14.
      return stat.slice(stat.lastIndexOf(")") + 2).split(" ").map(Number);
    } catch {
      return [];
    }
  };
  const f = read(`/proc/${pid}/stat`);
  const m = read(`/proc/${pid}/task/${pid}/stat`);
  const ms = (ticks: number | undefined) => ((ticks ?? 0) * 1000) / CLOCK_TICKS;
  // main: the main thread alone (for Node, the event loop: all JavaScript runs there).
  return { self: ms(f[11]) + ms(f[12]), main: ms(m[11]) + ms(m[12]), children: ms(f[13]) + ms(f[14]) };
}

/** The marks of one deployq deploy, in order; `since`: the mark whose time the step starts from. */
const MARKS: ReadonlyArray<{ key: string; since: string; name: string }> = [
  { key: "answered", since: "post", name: "POST -> 202 answered (receiver: verify, durable entry, dedupe row)" },
  { key: "routed", since: "post", name: "POST -> router recorded the outcome (pickup from router/, routed row)" },
  { key: "started", since: "routed", name: "-> deploy row started (hard link + fsync, worker pickup, lock, scan, fencing token)" },
  { key: "fetch", since: "started", name: "-> fetch step begins (log file, log-path update)" },
  { key: "checkout", since: "fetch", name: "-> check-out step begins (git fetch, git cat-file, read current release)" },
  { key: "switchStep", since: "checkout", name: "-> switch step begins (release dir, git checkout, metadata, fence query)" },
  { key: "switched", since: "switchStep", name: "-> `current` switched, seen by the bench (symlink, rename, fsync dir)" },
  { key: "finished", since: "switched", name: "after the switch: prune, final row (not in the headline)" },
];

const GIT_ENV = {
  GIT_AUTHOR_NAME: "Bench",
  GIT_AUTHOR_EMAIL: "bench@example.com",
  GIT_COMMITTER_NAME: "Bench",
  GIT_COMMITTER_EMAIL: "bench@example.com",
  GIT_CONFIG_NOSYSTEM: "1",
  HOME: "/nonexistent",
};

/** The bench's own git (making commits): not timed. */
export async function git(cwd: string, ...args: string[]): Promise<string> {
  const { stdout } = await run("git", args, { cwd, env: { ...process.env, ...GIT_ENV }, maxBuffer: 64 * 1024 * 1024 });
  return stdout.trim();
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function percentile(sorted: number[], p: number): number {
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1]!;
}

export function distribution(values: number[]): Distribution {
  const sorted = [...values].sort((a, b) => a - b);
  if (sorted.length === 0) return { n: 0, p50: NaN, p90: NaN, p99: NaN, max: NaN, mean: NaN };
  return {
    n: sorted.length,
    p50: percentile(sorted, 50),
    p90: percentile(sorted, 90),
    p99: percentile(sorted, 99),
    max: sorted[sorted.length - 1]!,
    mean: sorted.reduce((a, b) => a + b, 0) / sorted.length,
  };
}

/** Polls `fn` until it returns something truthy. */
export async function until<T>(what: string, fn: () => Promise<T | undefined | false>, timeoutMs = 30_000, everyMs = 10): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await fn();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`deploy bench: timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}

/**
 * Watches `<root>/current` and reports the moment it points at a release whose name holds
 * a given sha7. inotify on the directory (the rename over `current` is an IN_MOVED_TO event
 * named "current"); a slow readlink poll only in case an event is lost.
 */
class SwitchWatcher {
  private readonly current: string;
  private readonly watcher: FSWatcher;
  private readonly poll: NodeJS.Timeout;
  private waiting: { sha7: string; resolve: (seen: { at: number; byPoll: boolean }) => void } | undefined;

  constructor(root: string) {
    this.current = path.join(root, "current");
    this.watcher = watch(root, (_event, name) => {
      if (name === null || String(name) === "current") this.check(false);
    });
    this.watcher.on("error", () => {}); // the poll still runs
    this.poll = setInterval(() => this.check(true), 50);
  }

  /** Arm before starting the deploy; resolves with performance.now() at the switch. */
  expect(sha: string, timeoutMs: number, describe: () => string): Promise<{ at: number; byPoll: boolean }> {
    const sha7 = sha.slice(0, 7);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting = undefined;
        reject(new Error(`deploy bench: ${path.dirname(this.current)}/current did not switch to ${sha7} within ${timeoutMs} ms\n${describe()}`));
      }, timeoutMs);
      this.waiting = {
        sha7,
        resolve: (seen) => {
          clearTimeout(timer);
          resolve(seen);
        },
      };
      this.check(true);
    });
  }

  private check(byPoll: boolean): void {
    const waiting = this.waiting;
    if (!waiting) return;
    let link: string;
    try {
      link = readlinkSync(this.current);
    } catch {
      return;
    }
    const at = performance.now();
    if (path.basename(link).includes(`-${waiting.sha7}`)) {
      this.waiting = undefined;
      waiting.resolve({ at, byPoll });
    }
  }

  close(): void {
    clearInterval(this.poll);
    this.watcher.close();
  }
}

/** A deterministic repository: `files` text files of 256 B to 8 KB in nested folders, plus version.txt. */
export async function createRepository(dir: string, files: number): Promise<{ origin: string; work: string; bytes: number }> {
  const origin = path.join(dir, "origin.git");
  const work = path.join(dir, "work");
  await mkdir(origin, { recursive: true });
  await git(origin, "init", "--bare", "--quiet", "--initial-branch=main");
  await mkdir(work, { recursive: true });
  await git(work, "init", "--quiet", "--initial-branch=main");
  await git(work, "remote", "add", "origin", origin);
  let seed = 42;
  const random = () => {
    // A 32-bit linear congruential generator: the same repository on every run.
    seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
    return seed / 2 ** 32;
  };
  let bytes = 0;
  for (let i = 0; i < files; i++) {
    const folder = path.join(work, "src", `module-${i % 12}`, i % 3 === 0 ? "lib" : "");
    await mkdir(folder, { recursive: true });
    const size = 256 + Math.floor(random() * (8192 - 256));
    let text = "";
    for (let line = 0; text.length < size; line++) text += `export const value_${i}_${line} = ${Math.floor(random() * 1e9)}; // ${"x".repeat(Math.floor(random() * 40))}\n`;
    text = text.slice(0, size);
    bytes += size;
    await writeFile(path.join(folder, `file-${i}.js`), text);
  }
  await writeFile(path.join(work, "version.txt"), "push 0\n");
  await git(work, "add", "--all");
  await git(work, "commit", "--quiet", "-m", "initial");
  await git(work, "push", "--quiet", "origin", "HEAD:refs/heads/main");
  return { origin, work, bytes };
}

interface DeployRow {
  status: string;
  started_at: Date;
  finished_at: Date | null;
  duration_ms: number | null;
  log_path: string | null;
  routed_at: Date | null;
}

export async function runDeployBench(o: DeployBenchOptions): Promise<DeployFigures> {
  const startedAt = performance.now();
  const load = [os.loadavg()[0]!];
  const dir = path.join(o.workDir, "deploy");
  await mkdir(dir, { recursive: true });
  const gitVersion = await git(dir, "--version");

  o.progress(`  deploy: generating a ${o.files}-file repository…`);
  const repo = await createRepository(dir, o.files);
  let pushCount = 0;
  /** Commits a change to version.txt; pushes unless told not to. Returns the sha. */
  const commit = async (push = true): Promise<string> => {
    pushCount++;
    await writeFile(path.join(repo.work, "version.txt"), `push ${pushCount}\n`);
    await git(repo.work, "commit", "--quiet", "-a", "-m", `push ${pushCount}`);
    if (push) await git(repo.work, "push", "--quiet", "origin", "HEAD:refs/heads/main");
    return git(repo.work, "rev-parse", "HEAD");
  };

  // The daemon: the real CLI, a fresh database, one deployment with no commands and no restart.
  const daemonDir = path.join(dir, "deployq");
  const appRoot = path.join(daemonDir, "apps", "app");
  await mkdir(appRoot, { recursive: true }); // deployq creates it too; it must exist to be watched
  const configPath = path.join(daemonDir, "deployq.toml");
  await writeFile(
    configPath,
    `data_dir = "./data"
queues_dir = "./queues"

[server]
host = "127.0.0.1"
port = 0

[deployments.app]
repository = "octo-org/app"
branch = "main"
remote = ${JSON.stringify(repo.origin)}
path = "./apps/app"
`,
  );
  const database = await o.createDatabase();
  o.progress(`  deploy: starting node bin/deployq.js serve on a fresh database…`);
  const daemon = o.startChild(
    "deployq serve",
    process.execPath,
    [...(o.cpuProfileDir ? ["--cpu-prof", "--cpu-prof-dir", o.cpuProfileDir] : []), path.join(o.repoRoot, "bin/deployq.js"), "serve", "--config", configPath],
    o.childEnv({ GITHUB_WEBHOOK_SECRET: o.secret, DATABASE_URL: database.url, DEPLOYQ_LOG_LEVEL: "warn" }),
  );
  const [, url] = await daemon.waitFor(/listening on (http:\/\/\S+)/, 60_000);
  const describeDaemon = () => `deployq serve output:\n${daemon.output().slice(-4000)}`;
  const sql = postgres(database.url, { max: 1, onnotice: () => {}, connect_timeout: 10 });
  o.addCleanup("close the deploy bench's database client", () => sql.end({ timeout: 5 }));
  const daemonPid = daemon.child.pid!;
  /** CPU ms of each Postgres server process serving the daemon (this bench's own connection excluded). */
  const backendsCpu = async (): Promise<Map<number, number>> => {
    const rows = await sql<Array<{ pid: number }>>`select pid from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()`;
    return new Map(rows.map((r) => [r.pid, procCpu(r.pid).self]));
  };
  const queueDirs = [path.join(daemonDir, "queues", "router"), path.join(daemonDir, "queues", "deployments", "app")];
  const queuesEmpty = async () => {
    for (const q of queueDirs) if ((await readdir(q).catch(() => [])).some((n) => n.endsWith(".json"))) return false;
    return true;
  };

  const baselineRoot = path.join(dir, "baseline", "app");
  await mkdir(baselineRoot, { recursive: true });
  const baselineScript = path.join(dir, "baseline.sh");
  await writeFile(baselineScript, BASELINE_SCRIPT, { mode: 0o755 });

  const dqWatch = new SwitchWatcher(appRoot);
  const blWatch = new SwitchWatcher(baselineRoot);
  let watchersClosed = false;
  const closeWatchers = async () => {
    if (watchersClosed) return;
    watchersClosed = true;
    dqWatch.close();
    blWatch.close();
  };
  o.addCleanup("close the deploy bench's watchers", closeWatchers);

  /** A signed push delivery, as GitHub sends it (sign before starting a clock). */
  const post = async (body: string, delivery: string, signature: string): Promise<number> => {
    const res = await fetch(`${url}/github-webhook`, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        "user-agent": "GitHub-Hookshot/bench",
        "x-github-event": "push",
        "x-github-delivery": delivery,
        "x-github-hook-id": "123456",
        "x-hub-signature-256": signature,
      },
      body,
    });
    await res.text();
    return res.status;
  };

  interface DeployqSample {
    total: number;
    byPoll: boolean;
    cpu: { daemon: number; daemonMain: number; daemonChildren: number; postgres: number };
    segments: Record<string, { at: number; step: number }>;
  }

  /** One push through deployq: POST → `current` switched; then waits for the row to be final. */
  const deployqOnce = async (sha: string, expected: string): Promise<DeployqSample> => {
    const body = JSON.stringify(pushPayload({ repository: "octo-org/app", branch: "main", after: sha }));
    const signature = await sign(o.secret, body);
    const delivery = randomUUID();
    const switched = dqWatch.expect(sha, 30_000, describeDaemon);
    switched.catch(() => {}); // awaited below; if something else fails first, its timeout must not crash the bench
    const pgBefore = await backendsCpu();
    const daemonBefore = procCpu(daemonPid);
    const t0 = performance.now();
    const status = await post(body, delivery, signature);
    const answered = performance.now();
    if (status !== 202) throw new Error(`deploy bench: the receiver answered ${status}, not 202\n${describeDaemon()}`);
    const seen = await switched;
    // Not timed: the deploy goes on after the switch (prune, its row); the next push waits for it.
    const row = await until(`the deploy row of ${sha}`, async () => {
      const [r] = await sql<DeployRow[]>`
        select d.status, d.started_at, d.finished_at, d.duration_ms, d.log_path, v.updated_at as routed_at
        from deploys d left join deliveries v on v.delivery_id = d.delivery_id and v.hook_id = '123456'
        where d.delivery_id = ${delivery} and d.status <> 'running'`;
      return r;
    });
    if (row.status !== "succeeded") throw new Error(`deploy bench: the deploy of ${sha} ended ${row.status}\n${describeDaemon()}`);
    await until("the queues to empty", queuesEmpty);
    // CPU from just before the POST until the deploy is final (so prune and the final row count too).
    const daemonAfter = procCpu(daemonPid);
    const pgAfter = await backendsCpu();
    let postgresMs = 0;
    for (const [pid, ms] of pgAfter) postgresMs += ms - (pgBefore.get(pid) ?? 0);
    const cpu = {
      daemon: daemonAfter.self - daemonBefore.self,
      daemonMain: daemonAfter.main - daemonBefore.main,
      daemonChildren: daemonAfter.children - daemonBefore.children,
      postgres: postgresMs,
    };
    const content = await readFile(path.join(appRoot, "current", "version.txt"), "utf8");
    if (content !== expected) throw new Error(`deploy bench: deployq's current/version.txt is ${JSON.stringify(content)}, expected ${JSON.stringify(expected)}`);
    // Where the time went: wall-clock times from the rows and the log's step lines (ms resolution), against the POST.
    const epoch0 = performance.timeOrigin + t0;
    const log = row.log_path ? await readFile(row.log_path, "utf8").catch(() => "") : "";
    const stepAt = (prefix: string): number | undefined => {
      const m = new RegExp(`^== ${prefix}[^\\n]*\\((\\d{4}-\\d\\d-\\d\\dT[\\d:.]+Z)\\)$`, "m").exec(log);
      return m ? Date.parse(m[1]!) - epoch0 : undefined;
    };
    // Each mark: when it happened (ms after the POST), and the step that ends there (ms since the mark it follows).
    // The router runs while the receiver still answers, so it follows the POST, not the 202.
    const at: Record<string, number | undefined> = {
      post: 0,
      answered: answered - t0,
      routed: row.routed_at ? row.routed_at.getTime() - epoch0 : undefined,
      started: row.started_at.getTime() - epoch0,
      fetch: stepAt("fetch "),
      checkout: stepAt("check out "),
      switchStep: stepAt("switch current"),
      switched: seen.at - t0,
      finished: row.finished_at ? row.finished_at.getTime() - epoch0 : undefined,
    };
    const segments: Record<string, { at: number; step: number }> = {};
    for (const m of MARKS) {
      const end = at[m.key];
      const start = at[m.since];
      if (end !== undefined && start !== undefined) segments[m.name] = { at: end, step: end - start };
    }
    return { total: seen.at - t0, byPoll: seen.byPoll, cpu, segments };
  };

  /** The same push through the baseline script: spawn → `current` switched. */
  const baselineOnce = async (sha: string, expected: string): Promise<{ total: number; exit: number; byPoll: boolean; cpu: number }> => {
    const switched = blWatch.expect(sha, 30_000, () => "");
    switched.catch(() => {}); // awaited below (see deployqOnce)
    const env = o.childEnv({});
    const before = procCpu(process.pid).children;
    const t0 = performance.now();
    const child = o.startChild("baseline script", "sh", [baselineScript, baselineRoot, repo.origin, sha], env);
    const exited = new Promise<number | null>((resolve) => {
      if (child.child.exitCode !== null) resolve(child.child.exitCode);
      else child.child.once("exit", (code) => resolve(code));
    });
    const code = await exited;
    const exit = performance.now() - t0;
    // The script has been waited for: its CPU and its children's are now in the bench's own cutime/cstime.
    const cpu = procCpu(process.pid).children - before;
    if (code !== 0) throw new Error(`deploy bench: the baseline script exited ${code}:\n${child.output()}`);
    const seen = await switched;
    const content = await readFile(path.join(baselineRoot, "current", "version.txt"), "utf8");
    if (content !== expected) throw new Error(`deploy bench: the baseline's current/version.txt is ${JSON.stringify(content)}, expected ${JSON.stringify(expected)}`);
    return { total: seen.at - t0, exit, byPoll: seen.byPoll, cpu };
  };

  try {
    // ---- 1. overhead per push, against the baseline
    const dqTimes: number[] = [];
    const blTimes: number[] = [];
    const blExits: number[] = [];
    const cpu = { daemon: 0, daemonMain: 0, daemonChildren: 0, postgres: 0, baseline: 0 };
    const segmentValues = new Map<string, { at: number[]; step: number[] }>();
    let seenByPoll = 0;
    const firstDeploy = { deployq: NaN, baseline: NaN };
    const total = o.warmup + o.pushes;
    o.progress(`  deploy: ${o.warmup} warm-up + ${o.pushes} measured pushes, each deployed by deployq and by the baseline script…`);
    for (let i = 0; i < total; i++) {
      const sha = await commit();
      const expected = `push ${pushCount}\n`;
      const measured = i >= o.warmup;
      // Alternate who goes first, so that anything the first one warms (page cache) favours neither.
      const order = i % 2 === 0 ? (["deployq", "baseline"] as const) : (["baseline", "deployq"] as const);
      for (const who of order) {
        if (who === "deployq") {
          const s = await deployqOnce(sha, expected);
          if (i === 0) firstDeploy.deployq = s.total;
          if (!measured) continue;
          dqTimes.push(s.total);
          cpu.daemon += s.cpu.daemon;
          cpu.daemonMain += s.cpu.daemonMain;
          cpu.daemonChildren += s.cpu.daemonChildren;
          cpu.postgres += s.cpu.postgres;
          if (s.byPoll) seenByPoll++;
          for (const [name, v] of Object.entries(s.segments)) {
            const acc = segmentValues.get(name) ?? { at: [], step: [] };
            acc.at.push(v.at);
            acc.step.push(v.step);
            segmentValues.set(name, acc);
          }
        } else {
          const s = await baselineOnce(sha, expected);
          if (i === 0) firstDeploy.baseline = s.total;
          if (!measured) continue;
          blTimes.push(s.total);
          blExits.push(s.exit);
          cpu.baseline += s.cpu;
          if (s.byPoll) seenByPoll++;
        }
      }
    }
    // Both made complete releases: every tracked file is there.
    const tracked = (await git(repo.work, "ls-tree", "-r", "--name-only", "HEAD")).split("\n").length;
    for (const [who, root] of [["deployq", appRoot], ["baseline", baselineRoot]] as const) {
      const files = (await readdir(path.join(root, "current"), { recursive: true, withFileTypes: true })).filter((e) => e.isFile() && e.name !== ".deployq-release.json");
      if (files.length !== tracked) throw new Error(`deploy bench: ${who}'s current release has ${files.length} files, the commit ${tracked}`);
    }
    load.push(os.loadavg()[0]!);

    // ---- 2. the burst
    o.progress(`  deploy: burst of ${o.burst} pushes to one deployment…`);
    const [{ max: lastId }] = await sql<[{ max: string | null }]>`select max(id)::text as max from deploys`;
    const before = Number(lastId ?? 0);
    const shas: string[] = [];
    for (let i = 0; i < o.burst; i++) shas.push(await commit(false));
    await git(repo.work, "push", "--quiet", "origin", "HEAD:refs/heads/main");
    const requests = await Promise.all(
      shas.map(async (sha) => {
        const body = JSON.stringify(pushPayload({ repository: "octo-org/app", branch: "main", after: sha }));
        return { body, delivery: randomUUID(), signature: await sign(o.secret, body) };
      }),
    );
    const last = shas[shas.length - 1]!;
    const switched = dqWatch.expect(last, 60_000, describeDaemon);
    switched.catch(() => {}); // awaited below (see deployqOnce)
    const t0 = performance.now();
    let accepted = 0;
    for (const r of requests) if ((await post(r.body, r.delivery, r.signature)) === 202) accepted++;
    const sendMs = performance.now() - t0;
    const seen = await switched;
    const lastCurrentMs = seen.at - t0;
    await until(
      "every burst entry to have its final row",
      async () => {
        const [c] = await sql<[{ n: number; running: number }]>`
          select count(*)::int as n, count(*) filter (where status = 'running')::int as running from deploys where id > ${before}`;
        return c.n >= o.burst && c.running === 0 && (await queuesEmpty());
      },
      60_000,
      20,
    );
    const drainedMs = performance.now() - t0;
    const rows = await sql<Array<{ sha: string; status: string; duration_ms: number | null }>>`
      select sha, status, duration_ms from deploys where id > ${before} order by id`;
    const byStatus: Record<string, number> = {};
    for (const r of rows) byStatus[r.status] = (byStatus[r.status] ?? 0) + 1;
    const ran = rows.filter((r) => r.status !== "superseded").map((r) => ({ push: shas.indexOf(r.sha) + 1, status: r.status, durationMs: r.duration_ms }));
    const content = await readFile(path.join(appRoot, "current", "version.txt"), "utf8");
    if (content !== `push ${pushCount}\n`) throw new Error(`deploy bench: after the burst current/version.txt is ${JSON.stringify(content)}`);
    load.push(os.loadavg()[0]!);

    return {
      git: gitVersion,
      repo: { files: tracked, bytes: repo.bytes },
      pushes: o.pushes,
      warmup: o.warmup,
      deployq: distribution(dqTimes),
      baseline: distribution(blTimes),
      firstDeploy,
      seenByPoll,
      segments: [...segmentValues].map(([name, v]) => ({ name, at: distribution(v.at), step: distribution(v.step) })),
      baselineExit: distribution(blExits),
      cpu: { daemon: cpu.daemon / o.pushes, daemonMain: cpu.daemonMain / o.pushes, daemonChildren: cpu.daemonChildren / o.pushes, postgres: cpu.postgres / o.pushes, baseline: cpu.baseline / o.pushes },
      burst: { webhooks: requests.length, accepted, sendMs, lastCurrentMs, drainedMs, rows: rows.length, byStatus, ran },
      load,
      seconds: (performance.now() - startedAt) / 1000,
    };
  } finally {
    await closeWatchers();
    await daemon.stop();
  }
}

export const TARGET_DEPLOY_RATIO = 1.5;
export const TARGET_BURST_DEPLOYS = 3;

/** The report, as run.ts prints it (`table` is run.ts's Markdown table). */
export function deployReport(f: DeployFigures, table: (rows: string[][]) => string): string {
  const ms = (x: number) => x.toFixed(1);
  const lines: string[] = [];
  lines.push(
    `deploys: webhook POST -> \`current\` switched, no commands, no restart; ${f.pushes} pushes after ${f.warmup} warm-ups, ` +
      `each deployed by both (order alternating); repository: ${f.repo.files} files, ${(f.repo.bytes / 1024).toFixed(0)} KiB; each push changes version.txt; ${f.git}`,
  );
  const row = (name: string, d: Distribution) => [name, ms(d.p50), ms(d.p90), ms(d.p99), ms(d.max), ms(d.mean)];
  lines.push(
    table([
      ["target", "p50 ms", "p90 ms", "p99 ms", "max ms", "mean ms"],
      row("deployq serve (POST -> current switched)", f.deployq),
      row("baseline script (spawn -> current switched)", f.baseline),
      row("  baseline script: spawn -> exit", f.baselineExit),
    ]),
  );
  const r50 = f.deployq.p50 / f.baseline.p50;
  const r99 = f.deployq.p99 / f.baseline.p99;
  lines.push(
    `ratio deployq/baseline: p50 ${r50.toFixed(2)}x, p99 ${r99.toFixed(2)}x  (target within ${TARGET_DEPLOY_RATIO}x: ` +
      `${r50 <= TARGET_DEPLOY_RATIO && r99 <= TARGET_DEPLOY_RATIO ? "met" : r50 <= TARGET_DEPLOY_RATIO ? "met at p50, NOT at p99" : "NOT met"})`,
  );
  const c = f.cpu;
  lines.push(
    table([
      ["CPU ms per push (user + sys, /proc)", "deployq", "baseline"],
      ["deployq serve process: event loop (main thread)", ms(c.daemonMain), ""],
      ["deployq serve process: other threads (libuv pool, GC)", ms(c.daemon - c.daemonMain), ""],
      ["its child processes (git)", ms(c.daemonChildren), ""],
      ["its Postgres backends", ms(c.postgres), ""],
      ["the baseline script (sh, git, date, mkdir, ln, mv)", "", ms(c.baseline)],
      ["total", ms(c.daemon + c.daemonChildren + c.postgres), ms(c.baseline)],
    ]),
  );
  lines.push(`(deployq's CPU counts from the POST until its deploy row is final, prune included; CPU ratio ${((c.daemon + c.daemonChildren + c.postgres) / c.baseline).toFixed(2)}x)`);
  lines.push(`(with ${f.pushes} samples p99 is the ${Math.ceil(0.99 * f.pushes)}th smallest; switches seen by the fallback poll instead of inotify: ${f.seenByPoll})`);
  lines.push(`first deploy (warm-up 1, empty mirror, whole repository fetched): deployq ${ms(f.firstDeploy.deployq)} ms, baseline ${ms(f.firstDeploy.baseline)} ms`);
  lines.push(`where deployq's time goes (from the POST; wall-clock marks of the deploy rows and the log's step lines, ms resolution):`);
  lines.push(
    table([
      ["step (ends at the mark)", "mark p50 ms after POST", "step p50 ms", "step p90 ms", "step max ms"],
      ...f.segments.map((s) => [s.name, ms(s.at.p50), ms(s.step.p50), ms(s.step.p90), ms(s.step.max)]),
    ]),
  );
  const b = f.burst;
  const ran = b.ran.length;
  lines.push("");
  lines.push(`burst: ${b.webhooks} commits pushed, then ${b.webhooks} signed webhooks sent one after the other (each waits for its answer) to the same deployment`);
  lines.push(
    table([
      ["webhooks", "202", "sent in ms", "deploy rows", "deploys run", "superseded", "first POST -> last sha current ms", "-> all rows final, queues empty ms"],
      [
        String(b.webhooks),
        String(b.accepted),
        ms(b.sendMs),
        String(b.rows),
        String(ran),
        String(b.byStatus.superseded ?? 0),
        ms(b.lastCurrentMs),
        ms(b.drainedMs),
      ],
    ]),
  );
  lines.push(`rows by status: ${Object.entries(b.byStatus).map(([s, n]) => `${s} ${n}`).join(", ")}`);
  lines.push(`deploys that ran: ${b.ran.map((r) => `push ${r.push} (${r.status}, ${r.durationMs ?? "?"} ms)`).join(", ")}`);
  lines.push(`target at most ${TARGET_BURST_DEPLOYS} deploys: ${ran <= TARGET_BURST_DEPLOYS ? "met" : "NOT met"}`);
  lines.push(`deploy part: ${f.seconds.toFixed(0)} s; load average (1 min) before / after the pushes / after the burst: ${f.load.map((l) => l.toFixed(2)).join(" / ")}`);
  return lines.join("\n");
}
