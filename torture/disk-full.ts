import { execFile } from "node:child_process";
import { mkdir, mkdtemp, open, readFile, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { deliveries } from "../src/db/schema.ts";
import { parseEntry } from "../src/queue/entry.ts";
import { parseEntryName } from "../src/queue/entry-name.ts";
import { createTestDatabase } from "../test/helpers/db.ts";
import { createRepo } from "../test/helpers/git.ts";
import { freePort, tryPost, waitForHttp } from "../test/helpers/load.ts";
import { type Spawned, runDeployq, spawnDeployq } from "../test/helpers/processes.ts";
import { until } from "../test/helpers/wait.ts";
import { type SignedRequest, createWorkspace, followingDeployment, pushPayload, signedDelivery } from "../test/helpers/workspace.ts";
import { Ledger, killIfRunning, reportedProblems } from "./ledger.ts";
import { checkCurrent, checkRoutedOnce, entryFiles, leftovers, liveSha } from "./postgres-outage.ts";
import { createRng } from "./rng.ts";
import { type Scenario, must } from "./scenario.ts";

const run = promisify(execFile);

export interface DiskFullOptions {
  seed: number;
  /** Times the queue root is filled. */
  fills: number;
  senders: number;
  log?: (line: string) => void;
}

export interface DiskFullResult {
  seed: number;
  fills: number;
  deliveries: number;
  acknowledged: number;
  /** 503 answers to requests sent (and answered) while the queue root was full. */
  unavailableWhileFull: number;
  /** 2xx answers to requests sent and answered while it was full (must be 0). */
  acceptedWhileFull: number;
  duplicateAnswers: number;
  /** Files in router/ or deployments/app/ that do not parse or are not their name's delivery, once space was freed. */
  corrupt: number;
  /** Temporaries left in .tmp/ once space was freed. */
  partial: number;
  /** Acknowledged without its "routed" row and its one file, or an entry without its one final deploy row. */
  lost: number;
  /** A delivery in two files, acknowledged twice, or deployed twice. */
  duplicated: number;
  badCurrent: number;
  leftInQueues: number;
  seconds: number;
  problems: string[];
}

/** Appends to `file` until the filesystem says ENOSPC: nothing is left for anyone else. */
async function fillUp(file: string): Promise<void> {
  const handle = await open(file, "a");
  try {
    for (const size of [256 * 1024, 4096, 512]) {
      const chunk = Buffer.alloc(size, 0x2e);
      for (;;) {
        try {
          const { bytesWritten } = await handle.write(chunk);
          if (bytesWritten < chunk.length) break;
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === "ENOSPC") break;
          throw err;
        }
      }
    }
  } finally {
    await handle.close();
  }
}

/**
 * The queue root on a 2 MB tmpfs under `deployq serve`, filled (a filler file, written until
 * ENOSPC) at random moments while senders post signed pushes, then freed. The deployment is
 * paused while the pushes arrive, so that no deploy frees space while the root is full (a 2xx
 * then could only be a delivery without its file), and each send while it is full is preceded
 * by a top-up of the filler (a batch that rolled back frees the space its files had). A
 * delivery not answered 2xx is sent again once space is freed. Then: nothing answered 2xx while
 * full; no temporaries and no file that does not parse in router/, deployments/ or .tmp/; every
 * acknowledged delivery in one file and routed once; resumed, its entries deploy once and
 * `current` is the newest commit.
 */
export async function diskFull(options: DiskFullOptions): Promise<DiskFullResult> {
  const started = Date.now();
  const rng = createRng(options.seed);
  const log = options.log ?? (() => {});
  const work = await mkdtemp(path.join(tmpdir(), "deployq-torture-disk-"));
  const ledger = new Ledger(path.join(work, "ledger.jsonl"));
  const repo = await createRepo(work);
  const tdb = await createTestDatabase("postgres");
  const port = await freePort();
  const ws = await createWorkspace({
    port,
    deployments: followingDeployment("app", repo.bare, `commands = [["sh", "-c", "echo built > built.txt"]]\nkeep_deploys = 1000000`),
  });
  const url = `http://127.0.0.1:${port}`;
  const env = { ...ws.env, DATABASE_URL: tdb.url, DEPLOYQ_CONFIG: ws.configPath, DEPLOYQ_LOG_LEVEL: "warn" };
  const appDir = path.join(ws.dir, "apps", "app");
  const filler = path.join(ws.queuesDir, "filler");
  let mounted = false;
  let serve: Spawned | undefined;
  try {
    await mkdir(ws.queuesDir, { recursive: true });
    // As root (CI runs as root). A failure here fails the run: a disk-full scenario on a disk that never fills proves nothing.
    await run("mount", ["-t", "tmpfs", "-o", "size=2m", "tmpfs", ws.queuesDir]);
    mounted = true;
    const paused = await runDeployq(["pause", "app", "--reason", "torture: disk-full keeps every entry while the queue root fills"], env);
    if (paused.code !== 0) throw new Error(`deployq pause app failed (${paused.code}): ${paused.stderr}`);
    serve = spawnDeployq(["serve"], env);
    const s = serve;
    await Promise.race([
      waitForHttp(url, 60_000),
      s.exited.then(({ code, signal }) => {
        throw new Error(`deployq serve exited (${code ?? signal}) before answering:\n${s.output().slice(-4000)}`);
      }),
    ]);

    const problems: string[] = [];
    let full = false;
    let acceptedWhileFull = 0;
    let unavailableWhileFull = 0;
    let acksSinceFree = 0;
    let unavailableSinceFull = 0;
    // While full, one send at a time, each after a top-up of the filler.
    let turn: Promise<void> = Promise.resolve();
    let committing: Promise<unknown> = Promise.resolve();
    let newest = "";
    let commits = 0;
    // Its own generator: the senders draw from it in an order the machine's timing decides.
    const sizes = createRng(options.seed ^ 0x5bd1e995);
    const padding = () => sizes.int(0, 2500);
    const newPush = () => {
      const made = committing.then(async () => {
        const sha = await repo.commit({ "index.html": `push ${++commits}` });
        newest = sha;
        // Of one page or two, so that a write cut short by the fill leaves a part of a file behind.
        return signedDelivery({ ...pushPayload({ repository: "octo-org/app", branch: "main", after: sha }), padding: "x".repeat(padding()) });
      });
      committing = made;
      return made;
    };
    const sent = new Set<string>();
    const retry: SignedRequest[] = [];
    let producing = true;
    const post = async (request: SignedRequest, whileFull: boolean) => {
      const id = request.headers["x-github-delivery"]!;
      sent.add(id);
      const outcome = await tryPost(url, request, 15_000);
      const stillFull = whileFull && full;
      if (outcome.kind === "error") {
        ledger.record(id, { error: outcome.error });
        retry.push(request);
        return;
      }
      ledger.record(id, { status: outcome.status, ...(typeof outcome.body.queued === "string" ? { queued: outcome.body.queued } : {}) });
      if (stillFull) {
        if (outcome.status >= 200 && outcome.status < 300) {
          acceptedWhileFull++;
          problems.push(`answered ${outcome.status} while the queue root was full: ${id} ${JSON.stringify(outcome.body)}`);
        } else if (outcome.status === 503) unavailableWhileFull++;
      }
      if (outcome.status === 503) {
        unavailableSinceFull++;
        retry.push(request);
      } else if (outcome.status === 202) acksSinceFree++;
      else if (outcome.status !== 200) retry.push(request);
    };
    const send = async (request: SignedRequest) => {
      if (!full) return post(request, false);
      const mine = turn.then(async () => {
        if (!full) return post(request, false);
        await fillUp(filler);
        return post(request, full);
      });
      turn = mine.catch(() => {});
      return mine;
    };
    const sender = async () => {
      for (;;) {
        const again = !full ? retry.shift() : undefined;
        if (again) {
          await send(again);
          continue;
        }
        if (!producing) return;
        await send(await newPush());
      }
    };
    const senders = Array.from({ length: options.senders }, sender);
    const waitFor = (what: string, condition: () => boolean, timeoutMs: number) => until(what, async () => condition(), timeoutMs, 10);

    for (let fill = 1; fill <= options.fills; fill++) {
      const acks = rng.int(3, 25);
      acksSinceFree = 0;
      await waitFor(`${acks} acknowledgements before fill ${fill}`, () => acksSinceFree >= acks, 120_000);
      await fillUp(filler);
      full = true;
      unavailableSinceFull = 0;
      const refusals = rng.int(3, 15);
      await waitFor(`${refusals} refusals while full (fill ${fill})`, () => unavailableSinceFull >= refusals, 60_000);
      full = false;
      await turn;
      await rm(filler, { force: true });
      if (fill % 5 === 0 || fill === options.fills) log(`  fill ${fill}/${options.fills}: ${sent.size} deliveries, ${ledger.acked.size} acknowledged, ${retry.length} to send again`);
    }
    producing = false;
    await Promise.all(senders);
    while (retry.length > 0) await Promise.all(Array.from({ length: options.senders }, sender));

    // Routed, all of them, and still paused: every file whole, each delivery in one file.
    const router = path.join(ws.queuesDir, "router");
    const queue = path.join(ws.queuesDir, "deployments", "app");
    const db = tdb.database.db;
    const acknowledged = new Set([...ledger.acked.keys(), ...ledger.duplicates.keys()]);
    await until(
      "every acknowledged delivery routed",
      async () => (await db.select().from(deliveries)).filter((r) => r.outcome === "routed" && acknowledged.has(r.deliveryId)).length >= acknowledged.size,
      120_000,
      100,
    ).catch(() => undefined);
    let corrupt = 0;
    const filesOf = new Map<string, string[]>();
    for (const dir of [router, queue]) {
      for (const name of await readdir(dir).catch(() => [] as string[])) {
        const parsedName = parseEntryName(name);
        const parsed = parseEntry(await readFile(path.join(dir, name), "utf8"));
        if (!parsedName || !parsed.ok || parsed.entry.delivery_id !== parsedName.deliveryId) {
          corrupt++;
          problems.push(`corrupt or partial: ${path.relative(ws.queuesDir, path.join(dir, name))}${parsed.ok ? "" : `: ${parsed.error}`}`);
          continue;
        }
        filesOf.set(parsedName.deliveryId, [...(filesOf.get(parsedName.deliveryId) ?? []), name]);
      }
    }
    const tmp = await readdir(path.join(ws.queuesDir, ".tmp")).catch(() => [] as string[]);
    if (tmp.length > 0) problems.push(`${tmp.length} temporaries left in .tmp/ after space was freed (${tmp.slice(0, 5).join(", ")})`);
    let lost = 0;
    let duplicated = 0;
    for (const id of acknowledged) {
      const files = filesOf.get(id) ?? [];
      if (files.length === 0) {
        lost++;
        problems.push(`lost: ${id} was acknowledged, and is in neither router/ nor deployments/app/`);
      } else if (files.length > 1) {
        duplicated++;
        problems.push(`duplicated: ${id} is in ${files.join(", ")}`);
      }
    }
    for (const id of filesOf.keys()) if (!acknowledged.has(id)) problems.push(`a file for ${id}, which was never acknowledged`);
    for (const id of sent) if (!acknowledged.has(id)) problems.push(`missing: ${id} was sent until answered, yet never acknowledged`);

    // Resumed: the newest wins, every entry gets its one final row.
    const resumed = await runDeployq(["resume", "app"], env);
    if (resumed.code !== 0) problems.push(`deployq resume app failed (${resumed.code}): ${resumed.stderr}`);
    await until(
      "the newest commit live and the queues empty",
      async () => (await liveSha(appDir)) === newest && (await entryFiles(router)).length === 0 && (await entryFiles(queue)).length === 0,
      180_000,
      100,
    ).catch(() => undefined);
    serve.child.kill("SIGTERM");
    await serve.exited;
    if (/TypeError|uncaught/i.test(serve.output())) problems.push(`deployq serve logged: ${/.*(TypeError|uncaught).*/i.exec(serve.output())?.[0]}`);
    serve = undefined;
    const checked = await checkRoutedOnce(tdb.database, ledger, "app", problems);
    const left = await leftovers(ws.queuesDir, "app", problems);
    const badCurrent = await checkCurrent(appDir, newest, problems);
    return {
      seed: rng.seed,
      fills: options.fills,
      deliveries: sent.size,
      acknowledged: ledger.acked.size,
      unavailableWhileFull,
      acceptedWhileFull,
      duplicateAnswers: [...ledger.duplicates.values()].reduce((a, b) => a + b, 0),
      corrupt,
      partial: tmp.length,
      lost: lost + checked.lost,
      duplicated: duplicated + checked.duplicated,
      badCurrent,
      leftInQueues: left,
      seconds: Math.round((Date.now() - started) / 1000),
      problems: reportedProblems(problems, ledger),
    };
  } finally {
    if (serve) await killIfRunning(serve);
    await tdb.dispose();
    if (mounted) await run("umount", [ws.queuesDir]).catch(() => run("umount", ["-l", ws.queuesDir]));
    await ws.dispose();
    await rm(work, { recursive: true, force: true });
  }
}

export const diskFullScenario: Scenario = {
  name: "disk-full",
  title: "fill the queue root (a 2 MB tmpfs) while pushes arrive, then free it",
  unit: "fills",
  count: 12,
  async run(seed, fills) {
    const r = await diskFull({ seed, fills, senders: 4, log: (l) => console.log(l) });
    return {
      header: ["fills", "deliveries", "acknowledged (202)", "503 while full", "2xx while full", "duplicate answers (200)", "corrupt files", "left in .tmp/", "lost", "duplicated", "bad current", "left in queues", "seconds"],
      row: [r.fills, r.deliveries, r.acknowledged, r.unavailableWhileFull, must(r.acceptedWhileFull), r.duplicateAnswers, must(r.corrupt), must(r.partial), must(r.lost), must(r.duplicated), must(r.badCurrent), must(r.leftInQueues), r.seconds],
      problems: r.problems,
    };
  },
};
