import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { createTestDatabase } from "../test/helpers/db.ts";
import { createRepo } from "../test/helpers/git.ts";
import { freePort, tryPost, waitForHttp } from "../test/helpers/load.ts";
import { type Spawned, spawnDeployq } from "../test/helpers/processes.ts";
import { until } from "../test/helpers/wait.ts";
import { createWorkspace, followingDeployment, pushPayload, signedDelivery } from "../test/helpers/workspace.ts";
import { type DeployInvariants, checkCurrent, checkRoutedOnce, entryFiles, leftovers, liveSha } from "./checks.ts";
import { Ledger, killIfRunning, reportedProblems } from "./ledger.ts";
import { createRng } from "./rng.ts";
import { type Scenario, must } from "./scenario.ts";

export interface ServeKillOptions {
  seed: number;
  kills: number;
  log?: (line: string) => void;
}

export interface ServeKillResult extends DeployInvariants {
  kills: number;
  /** Kills that came while a deploy ran (the others found it between deploys). */
  killsMidDeploy: number;
  pushes: number;
  acknowledged: number;
  connectionErrors: number;
  deploysSucceeded: number;
}

/**
 * kill -9 `deployq serve` (receiver, router and workers in one process) at random moments
 * while pushes arrive and deploys run (a build of about 0.3 s), restart it after each, and
 * send again what was not answered 2xx. Once it has settled: every acknowledged push was
 * routed once, every entry it made had exactly one final deploy row, no queue holds
 * anything, and `current` is a whole release of the newest commit pushed.
 */
export async function serveKill(options: ServeKillOptions): Promise<ServeKillResult> {
  const started = Date.now();
  const rng = createRng(options.seed);
  const log = options.log ?? (() => {});
  const work = await mkdtemp(path.join(tmpdir(), "deployq-torture-serve-"));
  const ledger = new Ledger(path.join(work, "ledger.jsonl"));
  const repo = await createRepo(work);
  const tdb = await createTestDatabase("postgres");
  const port = await freePort();
  const ws = await createWorkspace({
    port,
    // Every deploy row is kept (the default keeps 100): the check reads each entry's final row.
    deployments: followingDeployment("app", repo.bare, `commands = [["sh", "-c", "sleep 0.1; sleep 0.1; sleep 0.1; echo built > built.txt"]]\nkeep_deploys = 1000000`),
  });
  const url = `http://127.0.0.1:${port}`;
  const env = { ...ws.env, DATABASE_URL: tdb.url, DEPLOYQ_LOG_LEVEL: "info", DEPLOYQ_LOG_FORMAT: "json" };
  let serve: Spawned | undefined;
  const stepsSoFar = (p: Spawned) => (p.output().match(/"msg":"deploy step"/g) ?? []).length;
  const unanswered: Array<Awaited<ReturnType<typeof signedDelivery>>> = [];
  let newest = "";
  let pushes = 0;
  let killsMidDeploy = 0;
  const send = async (request: Awaited<ReturnType<typeof signedDelivery>>) => {
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
  const start = async () => {
    serve = spawnDeployq(["serve", "--config", ws.configPath], env);
    const s = serve;
    await Promise.race([
      waitForHttp(url, 60_000),
      s.exited.then(({ code, signal }) => {
        throw new Error(`deployq serve exited (${code ?? signal}) before answering:\n${s.output().slice(-4000)}`);
      }),
    ]);
    // What could not be sent to the killed one: GitHub's redelivery.
    for (const r of unanswered.splice(0)) await send(r);
  };
  try {
    await start();
    for (let kill = 1; kill <= options.kills; kill++) {
      // A burst of 1 to 3 pushes, each commit pushed to the remote first, as GitHub would send them.
      const burst = rng.int(1, 3);
      const before = stepsSoFar(serve!);
      for (let i = 0; i < burst; i++) {
        newest = await repo.commit({ "index.html": `kill ${kill}, push ${i}` });
        pushes++;
        await send(await signedDelivery(pushPayload({ repository: "octo-org/app", branch: "main", after: newest })));
      }
      // Then kill it after a random number of deploy steps (fetch, checkout, build, switch, prune).
      const steps = rng.int(1, 5);
      const s = serve!;
      const midDeploy = await until(`${steps} deploy steps`, async () => stepsSoFar(s) - before >= steps || s.child.exitCode !== null, 15_000).then(
        () => true,
        () => false,
      );
      if (midDeploy) killsMidDeploy++;
      s.child.kill("SIGKILL");
      const { signal, code } = await s.exited;
      if (signal !== "SIGKILL") throw new Error(`deployq serve ended by itself (${code ?? signal}) before kill ${kill}:\n${s.output().slice(-4000)}`);
      if (kill % 5 === 0 || kill === options.kills) log(`  kill ${kill}/${options.kills}: ${pushes} pushes, ${ledger.acked.size} acknowledged`);
      await start();
    }
    // Settle: the last one runs until the newest commit is live and every queue is empty.
    await until(
      "the newest commit live and the queues empty",
      async () =>
        (await liveSha(path.join(ws.dir, "apps", "app"))) === newest &&
        (await entryFiles(path.join(ws.queuesDir, "router"))).length === 0 &&
        (await entryFiles(path.join(ws.queuesDir, "deployments", "app"))).length === 0,
      180_000,
      100,
    ).catch(() => undefined);
    serve!.child.kill("SIGTERM");
    await serve!.exited;
    serve = undefined;

    const problems: string[] = [];
    const badCurrent = await checkCurrent(path.join(ws.dir, "apps", "app"), newest, problems);
    const { lost, duplicated, succeeded } = await checkRoutedOnce(tdb.database, ledger, "app", problems);
    const leftInQueues = await leftovers(ws.queuesDir, "app", problems);
    return {
      seed: rng.seed,
      kills: options.kills,
      killsMidDeploy,
      pushes,
      acknowledged: ledger.acked.size,
      connectionErrors: ledger.errors,
      deploysSucceeded: succeeded,
      lost,
      duplicated,
      badCurrent,
      leftInQueues,
      seconds: Math.round((Date.now() - started) / 1000),
      problems: reportedProblems(problems, ledger),
    };
  } finally {
    if (serve) await killIfRunning(serve);
    await tdb.dispose();
    await ws.dispose();
    await rm(work, { recursive: true, force: true });
  }
}

export const serveKillScenario: Scenario = {
  name: "serve-kill",
  title: "kill -9 `deployq serve` while pushes arrive and deploys run",
  unit: "kills",
  count: 40,
  async run(seed, kills) {
    const r = await serveKill({ seed, kills, log: (l) => console.log(l) });
    return {
      header: ["kills", "of them mid-deploy", "pushes", "acknowledged (202)", "connection errors", "deploys succeeded", "lost", "deployed or recorded twice", "bad current", "left in queues", "seconds"],
      row: [r.kills, r.killsMidDeploy, r.pushes, r.acknowledged, r.connectionErrors, r.deploysSucceeded, must(r.lost), must(r.duplicated), must(r.badCurrent), must(r.leftInQueues), r.seconds],
      problems: r.problems,
    };
  },
};
