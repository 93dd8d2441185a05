import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { type Database, openDatabase } from "../src/db/client.ts";
import { createRepo } from "../test/helpers/git.ts";
import { freePort, tryPost, waitForHttp } from "../test/helpers/load.ts";
import { createPrivatePostgres } from "../test/helpers/private-postgres.ts";
import { type Spawned, spawnDeployq } from "../test/helpers/processes.ts";
import { until } from "../test/helpers/wait.ts";
import { type SignedRequest, createWorkspace, followingDeployment, pushPayload, signedDelivery } from "../test/helpers/workspace.ts";
import { type DeployInvariants, checkCurrent, checkRoutedOnce, entryFiles, leftovers, liveSha } from "./checks.ts";
import { Ledger, killIfRunning, reportedProblems } from "./ledger.ts";
import { createRng } from "./rng.ts";
import { type Scenario, must } from "./scenario.ts";

export interface PostgresOutageOptions {
  seed: number;
  outages: number;
  /** Concurrent senders, each one delivery at a time. */
  senders: number;
  log?: (line: string) => void;
}

export interface PostgresOutageResult extends DeployInvariants {
  outages: number;
  /** Distinct deliveries sent (each until it was answered 2xx). */
  deliveries: number;
  acknowledged: number;
  /** 503 answers to requests sent and answered while Postgres was down. */
  unavailableWhileDown: number;
  /** 2xx answers to requests sent and answered while Postgres was down (must be 0). */
  acceptedWhileDown: number;
  /** 200 duplicate answers: a redelivery of one whose first answer was a 503 after its file and row were made. */
  duplicateAnswers: number;
  connectionErrors: number;
  deploysSucceeded: number;
}

/**
 * A private Postgres crashed (`pg_ctl -m immediate`) at random moments under `deployq serve`
 * while senders post signed pushes without pause, each of a new commit, and deploys (a build
 * of about 0.3 s) run; started again after a random number of refusals. A delivery not
 * answered 2xx is sent again once Postgres is back, as GitHub's redelivery. At the end: no
 * request sent and answered while Postgres was down got a 2xx; every acknowledged delivery
 * was routed once and its entry deployed (or superseded) once; nothing is left in a queue or
 * .tmp/; `current` is a whole release of the newest commit.
 */
export async function postgresOutage(options: PostgresOutageOptions): Promise<PostgresOutageResult> {
  const started = Date.now();
  const rng = createRng(options.seed);
  const log = options.log ?? (() => {});
  const work = await mkdtemp(path.join(tmpdir(), "deployq-torture-pg-"));
  const ledger = new Ledger(path.join(work, "ledger.jsonl"));
  const repo = await createRepo(work);
  const pg = await createPrivatePostgres();
  const port = await freePort();
  const ws = await createWorkspace({
    port,
    deployments: followingDeployment("app", repo.bare, `commands = [["sh", "-c", "sleep 0.1; sleep 0.1; sleep 0.1; echo built > built.txt"]]\nkeep_deploys = 1000000`),
  });
  const url = `http://127.0.0.1:${port}`;
  const env = { ...ws.env, DATABASE_URL: pg.url, DEPLOYQ_LOG_LEVEL: "warn" };
  const appDir = path.join(ws.dir, "apps", "app");
  let serve: Spawned | undefined;
  let database: Database | undefined;
  try {
    await pg.start();
    serve = spawnDeployq(["serve", "--config", ws.configPath], env);
    const s = serve;
    await Promise.race([
      waitForHttp(url, 60_000),
      s.exited.then(({ code, signal }) => {
        throw new Error(`deployq serve exited (${code ?? signal}) before answering:\n${s.output().slice(-4000)}`);
      }),
    ]);

    // Postgres is "down" from the moment its crash has completed to the moment its start begins.
    let down = false;
    let downSince = 0;
    let acceptedWhileDown = 0;
    let unavailableWhileDown = 0;
    const problems: string[] = [];
    let acksSinceUp = 0;
    let unavailableSinceDown = 0;
    let wake: (() => void) | undefined;
    const poke = () => wake?.();

    // Each new delivery is a push of a new commit, made one at a time (the branch moves forward).
    let committing: Promise<unknown> = Promise.resolve();
    let newest = "";
    let commits = 0;
    const newPush = () => {
      const made = committing.then(async () => {
        const sha = await repo.commit({ "index.html": `push ${++commits}` });
        newest = sha;
        return signedDelivery(pushPayload({ repository: "octo-org/app", branch: "main", after: sha }));
      });
      committing = made;
      return made;
    };
    const sent = new Set<string>();
    const retry: SignedRequest[] = [];
    let producing = true;
    const send = async (request: SignedRequest) => {
      const id = request.headers["x-github-delivery"]!;
      sent.add(id);
      const sentWhileDown = down;
      const sentAt = Date.now();
      const outcome = await tryPost(url, request, 15_000);
      // Down the whole time: sent after the crash completed, answered before the start began.
      const wholeTimeDown = sentWhileDown && down && downSince <= sentAt;
      if (outcome.kind === "error") {
        ledger.record(id, { error: outcome.error });
        retry.push(request);
        return;
      }
      ledger.record(id, { status: outcome.status, ...(typeof outcome.body.queued === "string" ? { queued: outcome.body.queued } : {}) });
      if (wholeTimeDown) {
        if (outcome.status >= 200 && outcome.status < 300) {
          acceptedWhileDown++;
          problems.push(`answered ${outcome.status} while Postgres was down: ${id} ${JSON.stringify(outcome.body)}`);
        } else if (outcome.status === 503) unavailableWhileDown++;
      }
      if (outcome.status === 503) {
        retry.push(request);
        unavailableSinceDown++;
        poke();
      } else if (outcome.status === 202) {
        acksSinceUp++;
        poke();
      } else if (outcome.status !== 200) retry.push(request);
    };
    const sender = async () => {
      for (;;) {
        // Redeliveries go once Postgres is back; while it is down, new deliveries keep coming.
        const again = !down ? retry.shift() : undefined;
        if (again) {
          await send(again);
          continue;
        }
        if (!producing) return;
        await send(await newPush());
      }
    };
    const senders = Array.from({ length: options.senders }, sender);
    const waitFor = async (what: string, condition: () => boolean, timeoutMs: number) => {
      const deadline = Date.now() + timeoutMs;
      while (!condition()) {
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, 1000);
          wake = () => {
            clearTimeout(timer);
            resolve();
          };
        });
      }
      wake = undefined;
    };

    for (let outage = 1; outage <= options.outages; outage++) {
      // Up for a random number of acknowledgements (deploys run meanwhile), then crashed.
      const ups = rng.int(3, 30);
      acksSinceUp = 0;
      await waitFor(`${ups} acknowledgements before outage ${outage}`, () => acksSinceUp >= ups, 120_000);
      await pg.crash();
      downSince = Date.now();
      down = true;
      unavailableSinceDown = 0;
      // Down for a random number of refusals.
      const refusals = rng.int(5, 40);
      await waitFor(`${refusals} refusals in outage ${outage}`, () => unavailableSinceDown >= refusals, 60_000);
      down = false;
      await pg.start();
      if (outage % 5 === 0 || outage === options.outages) log(`  outage ${outage}/${options.outages}: ${sent.size} deliveries, ${ledger.acked.size} acknowledged, ${retry.length} to send again`);
    }
    producing = false;
    await Promise.all(senders);
    while (retry.length > 0) await Promise.all(Array.from({ length: options.senders }, sender));

    // Settle: the newest commit live and every queue empty.
    await until(
      "the newest commit live and the queues empty",
      async () =>
        (await liveSha(appDir)) === newest &&
        (await entryFiles(path.join(ws.queuesDir, "router"))).length === 0 &&
        (await entryFiles(path.join(ws.queuesDir, "deployments", "app"))).length === 0,
      180_000,
      200,
    ).catch(() => undefined);
    serve.child.kill("SIGTERM");
    await serve.exited;
    if (/TypeError|uncaught/i.test(serve.output())) problems.push(`deployq serve logged: ${/.*(TypeError|uncaught).*/i.exec(serve.output())?.[0]}`);
    serve = undefined;

    database = await openDatabase({ databaseUrl: pg.url, dataDir: "unused" });
    const { lost, duplicated, succeeded } = await checkRoutedOnce(database, ledger, "app", problems);
    for (const id of sent) if (!ledger.acked.has(id) && !ledger.duplicates.has(id)) problems.push(`missing: ${id} was sent until answered, yet never acknowledged`);
    const left = await leftovers(ws.queuesDir, "app", problems);
    const badCurrent = await checkCurrent(appDir, newest, problems);
    return {
      seed: rng.seed,
      outages: options.outages,
      deliveries: sent.size,
      acknowledged: ledger.acked.size,
      unavailableWhileDown,
      acceptedWhileDown,
      duplicateAnswers: [...ledger.duplicates.values()].reduce((a, b) => a + b, 0),
      connectionErrors: ledger.errors,
      deploysSucceeded: succeeded,
      lost,
      duplicated,
      badCurrent,
      leftInQueues: left,
      seconds: Math.round((Date.now() - started) / 1000),
      problems: reportedProblems(problems, ledger),
    };
  } finally {
    if (serve) await killIfRunning(serve);
    await database?.close();
    await pg.dispose();
    await ws.dispose();
    await rm(work, { recursive: true, force: true });
  }
}

export const postgresOutageScenario: Scenario = {
  name: "postgres-outage",
  title: "crash Postgres under `deployq serve` while pushes arrive and deploys run",
  unit: "outages",
  count: 10,
  async run(seed, outages) {
    const r = await postgresOutage({ seed, outages, senders: 4, log: (l) => console.log(l) });
    return {
      header: ["outages", "deliveries", "acknowledged (202)", "503 while down", "2xx while down", "duplicate answers (200)", "connection errors", "deploys succeeded", "lost", "duplicated", "bad current", "left in queues or .tmp/", "seconds"],
      row: [r.outages, r.deliveries, r.acknowledged, r.unavailableWhileDown, must(r.acceptedWhileDown), r.duplicateAnswers, r.connectionErrors, r.deploysSucceeded, must(r.lost), must(r.duplicated), must(r.badCurrent), must(r.leftInQueues), r.seconds],
      problems: r.problems,
    };
  },
};
