import { mkdir, mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { eq } from "drizzle-orm";
import { deploys } from "../src/db/schema.ts";
import { createTestDatabase } from "../test/helpers/db.ts";
import { createRepo } from "../test/helpers/git.ts";
import { freePort, tryPost, waitForHttp } from "../test/helpers/load.ts";
import { type Spawned, spawnDeployq } from "../test/helpers/processes.ts";
import { type PrivateRedis, privateRedis } from "../test/helpers/redis.ts";
import { until } from "../test/helpers/wait.ts";
import { type SignedRequest, createWorkspace, followingDeployment, pushPayload, signedDelivery } from "../test/helpers/workspace.ts";
import { Ledger, killIfRunning, reportedProblems } from "./ledger.ts";
import { type DeployInvariants, checkCurrent, checkRoutedOnce, entryFiles, leftovers, liveSha } from "./checks.ts";
import { type Rng, createRng } from "./rng.ts";
import { type Scenario, must } from "./scenario.ts";

export interface RedisOutageOptions {
  seed: number;
  /** Outages of each part: the single Redis stopped, then one node of three at a time. */
  outages: number;
  /** How long each build runs (0.3 s by default). */
  buildSeconds?: number;
  log?: (line: string) => void;
}

export interface RedisOutageResult extends DeployInvariants {
  outages: number;
  pushes: number;
  acknowledged: number;
  /** Builds that ran to their end, and builds stopped part way (a lost lock kills its build). */
  buildsCompleted: number;
  buildsStopped: number;
  /** Pairs of build intervals (of either workers process) that overlap: must be 0. */
  overlapping: number;
  /** Single-node outages after which no deploy resumed, quorum outages under which deploys stalled. */
  stalled: number;
}

interface Interval {
  worker: number;
  shell: number;
  start: number;
  end?: number;
  /** It wrote its own end line (a build stopped part way ends when its deploy row does). */
  ended: boolean;
  part: string;
}

/** The build's own record of when it ran: `start|end <epoch ms> <workers pid> <shell pid>` lines. */
function buildCommand(file: string, seconds: number): string {
  const line = (what: string) => `echo "${what} $(date +%s%3N) $PPID $$" >> ${file}`;
  const script = `${line("start")}; sleep ${seconds}; echo built > built.txt; ${line("end")}`;
  return `commands = [["sh", "-c", ${JSON.stringify(script)}]]\nkeep_deploys = 1000000`;
}

async function readIntervals(file: string, part: string): Promise<Interval[]> {
  const text = await readFile(file, "utf8").catch(() => "");
  const open = new Map<string, Interval>();
  const all: Interval[] = [];
  for (const l of text.split("\n").filter(Boolean)) {
    const [what, at, worker, shell] = l.split(" ");
    const key = `${worker} ${shell}`;
    if (what === "start") {
      const i: Interval = { worker: Number(worker), shell: Number(shell), start: Number(at), ended: false, part };
      open.set(key, i);
      all.push(i);
    } else if (what === "end") {
      const i = open.get(key);
      if (i) {
        i.end = Number(at);
        i.ended = true;
      }
    }
  }
  return all;
}

/**
 * One deployq install (a receiver and two workers processes sharing one queue root, one
 * Postgres, and the lock service on `nodes` private redis-servers) taken through `outages`
 * outages of its lock service: with one node, the node is stopped (SIGKILL: it comes back
 * empty, as a Redis without persistence does) and started again; with three, one node at a
 * time is. Pushes arrive all along.
 */
async function part(
  name: string,
  nodes: number,
  outages: number,
  rng: Rng,
  buildSeconds: number,
  work: string,
  log: (line: string) => void,
  problems: string[],
): Promise<{ pushes: number; ledger: Ledger; intervals: Interval[]; stalled: number; lost: number; duplicated: number; badCurrent: number; left: number; succeeded: number }> {
  const dir = path.join(work, name);
  const ledger = new Ledger(path.join(work, `${name}-ledger.jsonl`));
  await mkdir(dir, { recursive: true });
  const repo = await createRepo(dir);
  const buildsFile = path.join(dir, "builds.txt");
  const redis: PrivateRedis[] = [];
  const tdb = await createTestDatabase("postgres");
  const port = await freePort();
  const ws = await createWorkspace({ port, deployments: followingDeployment("app", repo.bare, buildCommand(buildsFile, buildSeconds)) });
  const appDir = path.join(ws.dir, "apps", "app");
  const url = `http://127.0.0.1:${port}`;
  const running: Spawned[] = [];
  try {
    for (let i = 0; i < nodes; i++) {
      const r = await privateRedis();
      await r.start();
      redis.push(r);
    }
    const env = { ...ws.env, DATABASE_URL: tdb.url, REDIS_URL: redis.map((r) => r.url).join(","), DEPLOYQ_CONFIG: ws.configPath, DEPLOYQ_LOG_LEVEL: "info" };
    const receiver = spawnDeployq(["receiver"], env);
    const workers = [spawnDeployq(["workers"], env), spawnDeployq(["workers"], env)];
    running.push(receiver, ...workers);
    await waitForHttp(url, 60_000);
    await Promise.all(workers.map((w) => w.waitFor("deployq started", 60_000)));

    let pushes = 0;
    let newest = "";
    const unanswered: SignedRequest[] = [];
    const send = async (request: SignedRequest) => {
      const id = request.headers["x-github-delivery"]!;
      const outcome = await tryPost(url, request, 15_000);
      if (outcome.kind === "error") {
        ledger.record(id, { error: outcome.error });
        unanswered.push(request);
        return;
      }
      ledger.record(id, { status: outcome.status, ...(typeof outcome.body.queued === "string" ? { queued: outcome.body.queued } : {}) });
      if (outcome.status !== 202 && outcome.status !== 200) unanswered.push(request);
    };
    const burst = async (n: number) => {
      for (const r of unanswered.splice(0)) await send(r);
      for (let i = 0; i < n; i++) {
        newest = await repo.commit({ "index.html": `${name} push ${++pushes}` });
        await send(await signedDelivery(pushPayload({ repository: "octo-org/app", branch: "main", after: newest })));
      }
    };
    const builds = async () => readIntervals(buildsFile, name);
    const unreachableLogs = () => workers.reduce((n, w) => n + (w.output().match(/the lock service is unreachable/g) ?? []).length, 0);
    let stalled = 0;

    for (let outage = 1; outage <= outages; outage++) {
      await burst(rng.int(1, 3));
      // The outage comes as a build starts (a deploy holds the lock), or once the burst is live.
      const midBuild = rng.next() < 0.6;
      const before = (await builds()).length;
      if (midBuild) await until(`a build to start before outage ${outage}`, async () => (await builds()).length > before, 60_000, 20).catch(() => undefined);
      else await until(`the burst live before outage ${outage}`, async () => (await liveSha(appDir)) === newest, 120_000, 50).catch(() => undefined);
      const node = redis[rng.int(0, nodes - 1)]!;
      const logsBefore = unreachableLogs();
      await node.stop();
      const stoppedAt = Date.now();
      await burst(rng.int(1, 2));
      if (nodes === 1) {
        // A blip (started again at once), or down until a worker has found it unreachable.
        // Mid-build, mostly a blip: the node answers again, empty, while the build still runs.
        if (rng.next() < (midBuild ? 0.25 : 0.75)) await until(`outage ${outage} to be noticed`, async () => unreachableLogs() > logsBefore, 60_000, 50).catch(() => undefined);
        const startedAt = Date.now();
        const startedDuring = (await builds()).filter((b) => b.start > stoppedAt + 50 && b.start < startedAt);
        // A build may start under a lock taken before the outage (still valid until its TTL); none under a new one.
        await node.start();
        const target = newest;
        const resumed = await until(`deploys to resume after outage ${outage}`, async () => (await liveSha(appDir)) === target, 120_000, 50).then(
          () => true,
          () => false,
        );
        if (!resumed) {
          stalled++;
          problems.push(`${name}: outage ${outage}: ${target} was not live within 120 s of the lock service's return`);
        }
        if (startedDuring.length > 1) problems.push(`${name}: outage ${outage}: ${startedDuring.length} builds started while the only lock node was down`);
      } else {
        // One node of three down: deploys go on as if nothing happened.
        const target = newest;
        const went = await until(`deploys to go on with one node of three down (outage ${outage})`, async () => (await liveSha(appDir)) === target, 90_000, 50).then(
          () => true,
          () => false,
        );
        if (!went) {
          stalled++;
          problems.push(`${name}: outage ${outage}: ${target} was not deployed within 90 s with one lock node of three down`);
        }
        await node.start();
      }
      log(`  ${name}: outage ${outage}/${outages} (${midBuild ? "mid-build" : "between deploys"}): ${pushes} pushes, ${(await builds()).length} builds`);
    }
    await burst(0);
    await until(
      "the newest commit live and the queues empty",
      async () =>
        (await liveSha(appDir)) === newest &&
        (await entryFiles(path.join(ws.queuesDir, "router"))).length === 0 &&
        (await entryFiles(path.join(ws.queuesDir, "deployments", "app"))).length === 0,
      180_000,
      100,
    ).catch(() => undefined);
    for (const p of running) p.child.kill("SIGTERM");
    for (const p of running) await p.exited;
    for (const p of running) if (/TypeError|uncaught/i.test(p.output())) problems.push(`${name}: ${p.child.spawnargs.slice(-1)[0]} logged: ${/.*(TypeError|uncaught).*/i.exec(p.output())?.[0]}`);

    // A build stopped part way (no end line) ran until its deploy row finished, at the latest.
    const intervals = await builds();
    const rows = await tdb.database.db.select().from(deploys).where(eq(deploys.deployment, "app"));
    for (const b of intervals.filter((x) => x.end === undefined)) {
      const row = rows
        .filter((r) => r.pid === b.worker && r.startedAt.getTime() <= b.start + 5)
        .sort((x, y) => y.startedAt.getTime() - x.startedAt.getTime())[0];
      if (!row?.finishedAt) problems.push(`${name}: a build stopped part way (worker ${b.worker}, at ${b.start}) has no finished deploy row`);
      else b.end = row.finishedAt.getTime();
    }
    const checked = await checkRoutedOnce(tdb.database, ledger, "app", problems);
    const left = await leftovers(ws.queuesDir, "app", problems);
    const badCurrent = await checkCurrent(appDir, newest, problems);
    return { pushes, ledger, intervals, stalled, lost: checked.lost, duplicated: checked.duplicated, badCurrent, left, succeeded: checked.succeeded };
  } finally {
    for (const p of running) await killIfRunning(p);
    for (const r of redis) await r.stop();
    await tdb.dispose();
    await ws.dispose();
  }
}

/** Pairs of intervals that overlap (an open one, stopped part way without its row, counts as running to the end of time). */
export function overlaps(intervals: readonly Interval[]): Array<[Interval, Interval]> {
  const sorted = [...intervals].sort((a, b) => a.start - b.start);
  const pairs: Array<[Interval, Interval]> = [];
  for (let i = 0; i < sorted.length; i++) {
    for (let j = i + 1; j < sorted.length; j++) {
      if (sorted[j]!.start >= (sorted[i]!.end ?? Number.POSITIVE_INFINITY)) break;
      pairs.push([sorted[i]!, sorted[j]!]);
    }
  }
  return pairs;
}

/**
 * Deploys under redlock while the lock service fails: a receiver and two workers processes
 * of one install (so that every deploy of `app` takes the lock against the other process),
 * builds of about 0.3 s recording when they ran. Part a, one Redis, stopped at random (as a
 * build starts, or between deploys; a blip or until noticed) and started again empty: deploys
 * wait and resume. Part b, three nodes, one stopped at a time: deploys go on. Invariants: no two
 * builds overlap; every acknowledged push routed once, each entry one final deploy row; the
 * newest commit live.
 */
export async function redisOutage(options: RedisOutageOptions): Promise<RedisOutageResult> {
  const started = Date.now();
  const rng = createRng(options.seed);
  const log = options.log ?? (() => {});
  const work = await mkdtemp(path.join(tmpdir(), "deployq-torture-redis-"));
  const problems: string[] = [];
  try {
    const a = await part("single", 1, options.outages, rng, options.buildSeconds ?? 0.3, work, log, problems);
    const b = await part("quorum", 3, options.outages, rng, options.buildSeconds ?? 0.3, work, log, problems);
    let overlapping = 0;
    for (const p of [a, b]) {
      for (const [x, y] of overlaps(p.intervals)) {
        overlapping++;
        problems.push(`overlap (${x.part}): worker ${x.worker}'s build ${x.start}–${x.end ?? "?"} and worker ${y.worker}'s from ${y.start}`);
      }
    }
    const intervals = [...a.intervals, ...b.intervals];
    return {
      seed: rng.seed,
      outages: options.outages,
      pushes: a.pushes + b.pushes,
      acknowledged: a.ledger.acked.size + b.ledger.acked.size,
      buildsCompleted: intervals.filter((i) => i.ended).length,
      buildsStopped: intervals.filter((i) => !i.ended).length,
      overlapping,
      stalled: a.stalled + b.stalled,
      lost: a.lost + b.lost,
      duplicated: a.duplicated + b.duplicated,
      badCurrent: a.badCurrent + b.badCurrent,
      leftInQueues: a.left + b.left,
      seconds: Math.round((Date.now() - started) / 1000),
      problems: [...reportedProblems(problems, a.ledger), ...(b.ledger.other > 0 ? [`${b.ledger.other} answers (quorum part) were neither 2xx nor 503`] : [])],
    };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

export const redisOutageScenario: Scenario = {
  name: "redis-outage",
  title: "stop the lock service's Redis (one node, then one node of three) while pushes arrive and deploys run",
  unit: "outages of each part",
  count: 8,
  async run(seed, outages) {
    const r = await redisOutage({ seed, outages, buildSeconds: 1, log: (l) => console.log(l) });
    return {
      header: ["outages (single node + one of three)", "pushes", "acknowledged (202)", "builds completed", "builds stopped by a lost lock", "overlapping builds", "stalled", "lost", "deployed or recorded twice", "bad current", "left in queues", "seconds"],
      row: [`${r.outages} + ${r.outages}`, r.pushes, r.acknowledged, r.buildsCompleted, r.buildsStopped, must(r.overlapping), must(r.stalled), must(r.lost), must(r.duplicated), must(r.badCurrent), must(r.leftInQueues), r.seconds],
      problems: r.problems,
    };
  },
};
