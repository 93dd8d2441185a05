import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { eq } from "drizzle-orm";
import { deliveries } from "../src/db/schema.ts";
import { createTestDatabase } from "../test/helpers/db.ts";
import { createRepo } from "../test/helpers/git.ts";
import { type Spawned, spawnDeployq } from "../test/helpers/processes.ts";
import { until } from "../test/helpers/wait.ts";
import { createWorkspace, followingDeployment, queuePush } from "../test/helpers/workspace.ts";
import { type DeployInvariants, checkCurrent, checkRoutedOnce, entryFiles, leftovers, liveSha } from "./checks.ts";
import { Ledger, killIfRunning, reportedProblems } from "./ledger.ts";
import { createRng } from "./rng.ts";
import { type Scenario, must } from "./scenario.ts";

const DEPLOYMENTS = ["alpha", "beta"];
const BUILD = `commands = [["sh", "-c", "sleep 0.1; sleep 0.1; sleep 0.1; echo built > built.txt"]]\nkeep_deploys = 1000000`;

export interface WorkersKillOptions {
  seed: number;
  kills: number;
  log?: (line: string) => void;
}

export interface WorkersKillResult extends DeployInvariants {
  kills: number;
  /** Kills while router/ was being routed (some of the burst routed, not all), and while a deploy ran. */
  killsRouting: number;
  killsDeploying: number;
  entries: number;
  deploysSucceeded: number;
}

/**
 * kill -9 `deployq workers` (the router and the deployment workers, without the receiver)
 * at random moments: while a burst of entries (1 to 40, each a push of a new commit, written
 * into router/ as the receiver writes them) is being routed to two deployments that follow
 * the same branch, or after a random number of deploy steps (a build of about 0.3 s). It is
 * started again after each kill. Once it has settled: every entry has its one `routed` row,
 * every (deployment, entry) exactly one final deploy row (a hand-over repeated after a kill
 * is dropped, not deployed again), no queue holds anything, and each deployment's `current`
 * is a whole release of the newest commit.
 */
export async function workersKill(options: WorkersKillOptions): Promise<WorkersKillResult> {
  const started = Date.now();
  const rng = createRng(options.seed);
  const log = options.log ?? (() => {});
  const work = await mkdtemp(path.join(tmpdir(), "deployq-torture-workers-"));
  const ledger = new Ledger(path.join(work, "ledger.jsonl"));
  const repo = await createRepo(work);
  const tdb = await createTestDatabase("postgres");
  const ws = await createWorkspace({
    deployments: DEPLOYMENTS.map((d) => followingDeployment(d, repo.bare, BUILD).replace(`repository = "octo-org/${d}"`, 'repository = "octo-org/app"')).join("\n"),
    env: { DATABASE_URL: tdb.url! },
  });
  const env = { ...ws.env, DEPLOYQ_LOG_LEVEL: "info", DEPLOYQ_LOG_FORMAT: "json" };
  const db = tdb.database.db;
  const routedRows = async () => (await db.select({ id: deliveries.id }).from(deliveries).where(eq(deliveries.outcome, "routed"))).length;
  const stepsSoFar = (p: Spawned) => (p.output().match(/"msg":"deploy step"/g) ?? []).length;
  let workers: Spawned | undefined;
  let newest = "";
  let entries = 0;
  let killsRouting = 0;
  let killsDeploying = 0;
  const start = async () => {
    workers = spawnDeployq(["workers", "--config", ws.configPath], env);
    const w = workers;
    await until("deployq workers started", async () => w.output().includes('"msg":"deployq started"') || w.child.exitCode !== null, 60_000, 10);
    if (w.child.exitCode !== null) throw new Error(`deployq workers exited (${w.child.exitCode}) before it started:\n${w.output().slice(-4000)}`);
  };
  try {
    await start();
    for (let kill = 1; kill <= options.kills; kill++) {
      const w = workers!;
      const routing = rng.int(0, 1) === 0;
      const burst = rng.int(1, 40);
      const routedBefore = await routedRows();
      const stepsBefore = stepsSoFar(w);
      // Each entry a push of a commit of its own, written durably into router/ as the receiver would.
      for (let i = 0; i < burst; i++) {
        newest = await repo.commit({ "index.html": `kill ${kill}, push ${i}` });
        const name = await queuePush(ws.queuesDir, "router", "octo-org/app", newest);
        ledger.record(name.slice(20, -5), { status: 202, queued: name });
        entries++;
      }
      if (routing) {
        // Some of the burst routed, not all: the router is between its record, its hand-overs and its removals.
        const some = rng.int(1, burst);
        const hit = await until(`${some} of ${burst} routed`, async () => (await routedRows()) - routedBefore >= some, 15_000, 2).then(
          () => true,
          () => false,
        );
        if (hit && (await routedRows()) - routedBefore < burst) killsRouting++;
      } else {
        const steps = rng.int(1, 5);
        const hit = await until(`${steps} deploy steps`, async () => stepsSoFar(w) - stepsBefore >= steps, 15_000, 5).then(
          () => true,
          () => false,
        );
        if (hit) killsDeploying++;
      }
      w.child.kill("SIGKILL");
      const { signal, code } = await w.exited;
      if (signal !== "SIGKILL") throw new Error(`deployq workers ended by itself (${code ?? signal}) before kill ${kill}:\n${w.output().slice(-4000)}`);
      if (kill % 5 === 0 || kill === options.kills) log(`  kill ${kill}/${options.kills}: ${entries} entries, ${killsRouting} kills while routing, ${killsDeploying} while deploying`);
      await start();
    }
    const apps = DEPLOYMENTS.map((d) => path.join(ws.dir, "apps", d));
    await until(
      "the newest commit live everywhere and the queues empty",
      async () =>
        (await Promise.all(apps.map(liveSha))).every((s) => s === newest) &&
        (await entryFiles(path.join(ws.queuesDir, "router"))).length === 0 &&
        (await Promise.all(DEPLOYMENTS.map((d) => entryFiles(path.join(ws.queuesDir, "deployments", d))))).every((e) => e.length === 0),
      180_000,
      100,
    ).catch(() => undefined);
    workers!.child.kill("SIGTERM");
    await workers!.exited;
    workers = undefined;

    const problems: string[] = [];
    const { lost, duplicated, succeeded } = await checkRoutedOnce(tdb.database, ledger, DEPLOYMENTS, problems);
    const leftInQueues = await leftovers(ws.queuesDir, DEPLOYMENTS, problems);
    let badCurrent = 0;
    for (const app of apps) badCurrent += await checkCurrent(app, newest, problems);
    return {
      seed: rng.seed,
      kills: options.kills,
      killsRouting,
      killsDeploying,
      entries,
      deploysSucceeded: succeeded,
      lost,
      duplicated,
      badCurrent,
      leftInQueues,
      seconds: Math.round((Date.now() - started) / 1000),
      problems: reportedProblems(problems, ledger),
    };
  } finally {
    if (workers) await killIfRunning(workers);
    await tdb.dispose();
    await ws.dispose();
    await rm(work, { recursive: true, force: true });
  }
}

export const workersKillScenario: Scenario = {
  name: "workers-kill",
  title: "kill -9 `deployq workers` while it routes and deploys",
  unit: "kills",
  count: 60,
  async run(seed, kills) {
    const r = await workersKill({ seed, kills, log: (l) => console.log(l) });
    return {
      header: ["kills", "of them mid-routing", "mid-deploy", "entries", "deploys succeeded", "lost", "deployed or recorded twice", "bad current", "left in queues", "seconds"],
      row: [r.kills, r.killsRouting, r.killsDeploying, r.entries, r.deploysSucceeded, must(r.lost), must(r.duplicated), must(r.badCurrent), must(r.leftInQueues), r.seconds],
      problems: r.problems,
    };
  },
};
