import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { asc, eq } from "drizzle-orm";
import { type Daemon, startDaemon } from "../src/daemon.ts";
import { deliveries, deploys } from "../src/db/schema.ts";
import { silentLogger } from "../src/log.ts";
import { replaceEntryClock } from "../src/queue/entry-name.ts";
import { createTestDatabase } from "../test/helpers/db.ts";
import { createRepo } from "../test/helpers/git.ts";
import { until } from "../test/helpers/wait.ts";
import { createWorkspace, followingDeployment, post, pushPayload, signedDelivery } from "../test/helpers/workspace.ts";
import { checkCurrent, entryFiles, liveSha } from "./checks.ts";
import { createRng } from "./rng.ts";
import { type Scenario, must } from "./scenario.ts";

export interface ClockBackOptions {
  seed: number;
  rounds: number;
  log?: (line: string) => void;
}

export interface ClockBackResult {
  seed: number;
  rounds: number;
  /** Steps of the naming clock backwards, and how far back in all (seconds). */
  stepsBack: number;
  secondsBack: number;
  restarts: number;
  pushes: number;
  /** Acknowledged entries whose name does not sort after the one acknowledged before it. */
  outOfOrder: number;
  /** Acknowledged pushes without their `routed` row. */
  lost: number;
  /** Succeeded deploys of a commit older than one a deploy before them made live. */
  movedBack: number;
  /** current is not the newest commit pushed once everything settled. */
  badCurrent: number;
  seconds: number;
  problems: string[];
}

const NS_PER_S = 1_000_000_000n;

/**
 * The clock that names entries steps back at random (an NTP step, a VM restored from a
 * snapshot): by a millisecond up to two days, sometimes forward again, while pushes arrive
 * one after another at `deployq serve` (in this process, so that its naming clock can be
 * replaced; the machine's own clock is left alone). After some steps the daemon is
 * restarted, forgetting the names it issued, as a new process would, so that only the
 * queues on disk and the database tell it where to start. Entries are deployed away at
 * random, so that sometimes only the database remembers them. Invariants: every
 * acknowledged entry's name sorts after the one acknowledged before it (names are arrival
 * order), every acknowledged push was routed, no deploy made an older commit live after a
 * newer one, and the deployment ends on the newest commit pushed.
 */
export async function clockBack(options: ClockBackOptions): Promise<ClockBackResult> {
  const started = Date.now();
  const rng = createRng(options.seed);
  const log = options.log ?? (() => {});
  const work = await mkdtemp(path.join(tmpdir(), "deployq-torture-clock-"));
  const repo = await createRepo(work);
  const tdb = await createTestDatabase("postgres");
  const ws = await createWorkspace({ deployments: followingDeployment("app", repo.bare, `commands = [["sh", "-c", "echo built > built.txt"]]\nkeep_deploys = 1000000`) });
  let offset = 0n;
  const stepped = () => BigInt(Math.floor((performance.timeOrigin + performance.now()) * 1000)) * 1000n + offset;
  const start = () => startDaemon({ settings: ws.settings, role: "serve", logger: silentLogger(), database: tdb.database });
  const problems: string[] = [];
  let daemon: Daemon | undefined;
  let stepsBack = 0;
  let nsBack = 0n;
  let restarts = 0;
  const acked: Array<{ delivery: string; name: string; sha: string }> = [];
  const live = () => liveSha(path.join(ws.dir, "apps", "app"));
  const queues = [path.join(ws.queuesDir, "router"), path.join(ws.queuesDir, "deployments", "app")];
  try {
    replaceEntryClock(stepped);
    daemon = await start();
    for (let round = 1; round <= options.rounds; round++) {
      // Mostly back (a millisecond to two days), sometimes forward (up to ten minutes).
      const kind = rng.int(0, 3);
      const step = kind === 0 ? BigInt(rng.int(1, 1000)) * 1_000_000n : kind === 1 ? BigInt(rng.int(1, 172_800)) * NS_PER_S : kind === 2 ? BigInt(rng.int(1, 3600)) * NS_PER_S : -BigInt(rng.int(1, 600)) * NS_PER_S;
      offset -= step;
      if (step > 0n) {
        stepsBack++;
        nsBack += step;
      }
      if (rng.int(0, 2) === 0) {
        await daemon.close();
        daemon = undefined;
        replaceEntryClock(stepped); // a new process: it has issued nothing yet
        daemon = await start();
        restarts++;
      }
      for (let i = rng.int(1, 4); i > 0; i--) {
        const sha = await repo.commit({ "index.html": `round ${round}, push ${i}` });
        const request = await signedDelivery(pushPayload({ repository: "octo-org/app", branch: "main", after: sha }));
        const res = await post(daemon.url!, request);
        if (res.status !== 202 || typeof res.body.queued !== "string") {
          problems.push(`round ${round}: a push was answered ${res.status} ${JSON.stringify(res.body)}`);
          continue;
        }
        acked.push({ delivery: request.headers["x-github-delivery"]!, name: res.body.queued, sha });
      }
      // Sometimes let everything be deployed away: then only the database remembers the newest name.
      if (rng.int(0, 2) === 0) {
        const newest = acked.at(-1)?.sha;
        await until("the round's newest commit live and the queues empty", async () => (await live()) === newest && (await Promise.all(queues.map(entryFiles))).every((e) => e.length === 0), 60_000, 50);
      }
      if (round % 10 === 0 || round === options.rounds) log(`  round ${round}/${options.rounds}: ${acked.length} pushes, ${stepsBack} steps back, ${restarts} restarts`);
    }
    const newest = acked.at(-1)?.sha;
    await until("the newest commit live and the queues empty", async () => (await live()) === newest && (await Promise.all(queues.map(entryFiles))).every((e) => e.length === 0), 120_000, 50).catch(() => undefined);
    await daemon.close();
    daemon = undefined;

    let outOfOrder = 0;
    for (let i = 1; i < acked.length; i++) {
      if (acked[i]!.name <= acked[i - 1]!.name) {
        outOfOrder++;
        problems.push(`out of order: ${acked[i]!.name} was acknowledged after ${acked[i - 1]!.name} but does not sort after it`);
      }
    }
    const db = tdb.database.db;
    const rowOf = new Map((await db.select().from(deliveries)).map((r) => [r.deliveryId, r]));
    let lost = 0;
    for (const a of acked) {
      const row = rowOf.get(a.delivery);
      if (row?.outcome !== "routed" || row.entry !== a.name) {
        lost++;
        problems.push(`lost: ${a.name} was answered 202 but its row is ${row ? `${row.outcome} ${row.entry}` : "missing"}`);
      }
    }
    const order = new Map(acked.map((a, i) => [a.sha, i]));
    let movedBack = 0;
    let highest = -1;
    for (const d of await db.select().from(deploys).where(eq(deploys.status, "succeeded")).orderBy(asc(deploys.finishedAt), asc(deploys.id))) {
      const at = order.get(d.sha ?? "") ?? -1;
      if (at < highest) {
        movedBack++;
        problems.push(`moved back: ${d.sha} (push ${at + 1}) went live after push ${highest + 1}'s commit`);
      }
      highest = Math.max(highest, at);
    }
    const badCurrent = await checkCurrent(path.join(ws.dir, "apps", "app"), newest ?? "", problems);
    return {
      seed: rng.seed,
      rounds: options.rounds,
      stepsBack,
      secondsBack: Number(nsBack / NS_PER_S),
      restarts,
      pushes: acked.length,
      outOfOrder,
      lost,
      movedBack,
      badCurrent,
      seconds: Math.round((Date.now() - started) / 1000),
      problems: [...problems.slice(0, 20), ...(problems.length > 20 ? [`… and ${problems.length - 20} more`] : [])],
    };
  } finally {
    await daemon?.close();
    replaceEntryClock();
    await tdb.dispose();
    await ws.dispose();
    await rm(work, { recursive: true, force: true });
  }
}

export const clockBackScenario: Scenario = {
  name: "clock-back",
  title: "the naming clock stepped back, with restarts",
  unit: "rounds",
  count: 60,
  async run(seed, rounds) {
    const r = await clockBack({ seed, rounds, log: (l) => console.log(l) });
    return {
      header: ["rounds", "steps back", "seconds stepped back in all", "restarts", "pushes acknowledged", "out of order", "lost", "older commit made live", "bad current", "seconds"],
      row: [r.rounds, r.stepsBack, r.secondsBack, r.restarts, r.pushes, must(r.outOfOrder), must(r.lost), must(r.movedBack), must(r.badCurrent), r.seconds],
      problems: r.problems,
    };
  },
};
