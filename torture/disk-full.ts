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
import { type Spawned, spawnDeployq } from "../test/helpers/processes.ts";
import { until } from "../test/helpers/wait.ts";
import { type SignedRequest, createWorkspace, followingDeployment, pushPayload, signedDelivery } from "../test/helpers/workspace.ts";
import { Ledger, killIfRunning, reportedProblems } from "./ledger.ts";
import { type DeployInvariants, checkCurrent, checkRoutedOnce, entryFiles, leftovers, liveSha } from "./checks.ts";
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

export interface DiskFullResult extends DeployInvariants {
  fills: number;
  deliveries: number;
  acknowledged: number;
  /** 503 answers to requests sent (and answered) while the queue root was full. */
  unavailableWhileFull: number;
  /** 2xx answers to requests sent and answered while it was full, no entry removed meanwhile (must be 0). */
  acceptedWhileFull: number;
  /** 2xx answers while full that a deploy explains: it removed an entry (freeing its pages) while the request ran. */
  acceptedInFreedSpace: number;
  duplicateAnswers: number;
  /** Files in router/ or deployments/app/ that do not parse or are not their name's delivery, once space was freed. */
  corrupt: number;
  /** Temporaries left in .tmp/ once space was freed. */
  partial: number;
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
 * ENOSPC) at random moments while senders post signed pushes and deploys run, then freed.
 * While it is full the sends go one at a time, each after a top-up of the filler (a batch that
 * rolled back frees the space its files had): a 2xx then is a delivery without its file, unless
 * an entry was removed (a deploy finished, freeing its pages) while the request ran. A delivery
 * not answered 2xx is sent again once space is freed. Then: nothing answered 2xx while full; no
 * temporaries, and no file that does not parse, in router/, deployments/ or .tmp/; every
 * acknowledged delivery routed once, its entry deployed (or superseded) once; `current` the
 * newest commit.
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
    let acceptedInFreedSpace = 0;
    const router = path.join(ws.queuesDir, "router");
    const queue = path.join(ws.queuesDir, "deployments", "app");
    // An entry keeps its name from router/ to deployments/app/: a name gone is an entry removed.
    const names = async () => new Set([...(await entryFiles(router)), ...(await entryFiles(queue))]);
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
    // Every file in router/ and deployments/app/ whole and its name's, and no delivery in two at once (read after each fill is freed, and at the end).
    let corrupt = 0;
    let duplicated = 0;
    const filed = new Set<string>();
    const scanFiles = async () => {
      const filesOf = new Map<string, string[]>();
      for (const dir of [router, queue]) {
        for (const name of await readdir(dir).catch(() => [] as string[])) {
          const text = await readFile(path.join(dir, name), "utf8").catch((err: NodeJS.ErrnoException) => {
            if (err.code === "ENOENT") return undefined; // taken meanwhile, by the router or a deploy
            throw err;
          });
          if (text === undefined) continue;
          const parsedName = parseEntryName(name);
          const parsed = parseEntry(text);
          if (!parsedName || !parsed.ok || parsed.entry.delivery_id !== parsedName.deliveryId) {
            corrupt++;
            problems.push(`corrupt or partial: ${path.relative(ws.queuesDir, path.join(dir, name))}${parsed.ok ? "" : `: ${parsed.error}`}`);
            continue;
          }
          filed.add(parsedName.deliveryId);
          filesOf.set(parsedName.deliveryId, [...(filesOf.get(parsedName.deliveryId) ?? []), name]);
        }
      }
      for (const [id, files] of filesOf) {
        if (new Set(files).size > 1) {
          duplicated++;
          problems.push(`duplicated: ${id} is in ${files.join(", ")}`);
        }
      }
    };
    const sent = new Set<string>();
    const retry: SignedRequest[] = [];
    let producing = true;
    const post = async (request: SignedRequest, whileFull: boolean, before?: Set<string>) => {
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
          const after = await names();
          if (before && [...before].some((n) => !after.has(n))) acceptedInFreedSpace++;
          else {
            acceptedWhileFull++;
            problems.push(`answered ${outcome.status} while the queue root was full and no entry had been removed: ${id} ${JSON.stringify(outcome.body)}`);
          }
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
        const before = await names();
        await fillUp(filler);
        return post(request, full, before);
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
      await scanFiles();
      if (fill % 5 === 0 || fill === options.fills) log(`  fill ${fill}/${options.fills}: ${sent.size} deliveries, ${ledger.acked.size} acknowledged, ${retry.length} to send again`);
    }
    producing = false;
    await Promise.all(senders);
    const sendingSince = Date.now();
    while (retry.length > 0) {
      if (Date.now() - sendingSince > 120_000) throw new Error(`${retry.length} deliveries still refused 120 s after the last fill was freed:\n${serve.output().slice(-4000)}`);
      await Promise.all(Array.from({ length: options.senders }, sender));
    }

    // Every file whole, each delivery in one file (router/ or the deployment's queue, or deployed).
    const db = tdb.database.db;
    const acknowledged = new Set([...ledger.acked.keys(), ...ledger.duplicates.keys()]);
    await until(
      "every acknowledged delivery routed",
      async () => (await db.select().from(deliveries)).filter((r) => r.outcome === "routed" && acknowledged.has(r.deliveryId)).length >= acknowledged.size,
      120_000,
      100,
    ).catch(() => undefined);
    await scanFiles();
    const tmp = await readdir(path.join(ws.queuesDir, ".tmp")).catch(() => [] as string[]);
    if (tmp.length > 0) problems.push(`${tmp.length} temporaries left in .tmp/ after space was freed (${tmp.slice(0, 5).join(", ")})`);
    for (const id of filed) if (!acknowledged.has(id)) problems.push(`a file for ${id}, which was never acknowledged`);
    for (const id of sent) if (!acknowledged.has(id)) problems.push(`missing: ${id} was sent until answered, yet never acknowledged`);

    // Settled: the newest wins, every entry gets its one final row.
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
      acceptedInFreedSpace,
      duplicateAnswers: [...ledger.duplicates.values()].reduce((a, b) => a + b, 0),
      corrupt,
      partial: tmp.length,
      lost: checked.lost,
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
  count: 40,
  async run(seed, fills) {
    const r = await diskFull({ seed, fills, senders: 4, log: (l) => console.log(l) });
    return {
      header: ["fills", "deliveries", "acknowledged (202)", "503 while full", "2xx while full", "2xx while full, in space a deploy freed", "duplicate answers (200)", "corrupt files", "left in .tmp/", "lost", "duplicated", "bad current", "left in queues", "seconds"],
      row: [r.fills, r.deliveries, r.acknowledged, r.unavailableWhileFull, must(r.acceptedWhileFull), r.acceptedInFreedSpace, r.duplicateAnswers, must(r.corrupt), must(r.partial), must(r.lost), must(r.duplicated), must(r.badCurrent), must(r.leftInQueues), r.seconds],
      problems: r.problems,
    };
  },
};
