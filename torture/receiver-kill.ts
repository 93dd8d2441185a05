import { mkdtemp, readFile, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { eq } from "drizzle-orm";
import { deliveries } from "../src/db/schema.ts";
import { parseEntry } from "../src/queue/entry.ts";
import { parseEntryName } from "../src/queue/entry-name.ts";
import { createTestDatabase } from "../test/helpers/db.ts";
import { freePort, tryPost, waitForHttp } from "../test/helpers/load.ts";
import { type Spawned, spawnDeployq } from "../test/helpers/processes.ts";
import { type SignedRequest, createWorkspace, pushPayload, randomSha, signedDelivery } from "../test/helpers/workspace.ts";
import { Ledger, killIfRunning, reportedProblems } from "./ledger.ts";
import { type Rng, createRng } from "./rng.ts";
import { type Scenario, must } from "./scenario.ts";

export interface ReceiverKillOptions {
  seed: number;
  kills: number;
  /** Concurrent senders (each one delivery at a time, as GitHub's do). */
  senders: number;
  /** A kill comes after this many more acknowledgements, drawn at random between the two. */
  acksBetweenKills: [number, number];
  log?: (line: string) => void;
}

export interface ReceiverKillResult {
  seed: number;
  kills: number;
  /** Distinct deliveries sent (each until it was answered 2xx). */
  deliveries: number;
  /** Deliveries answered 202 (the ledger's acknowledgements). */
  acknowledged: number;
  /** Sends refused or cut by a kill (connection refused or reset), then sent again. */
  connectionErrors: number;
  answered503: number;
  /** 200 duplicate: GitHub's redelivery of one that was queued, its first answer lost or not. */
  duplicateAnswers: number;
  /** Acknowledged, yet no entry file under the name its 202 gave. */
  lost: number;
  /** A delivery in more than one entry file, or acknowledged 202 twice. */
  duplicated: number;
  /** Entry files that do not parse, or whose delivery_id is not their name's. */
  corrupt: number;
  /** Temporaries left in .tmp/ after the last (clean) restart. */
  leftovers: number;
  /** Entry files without their "queued" row pointing at them, or rows without their file. */
  unrecorded: number;
  seconds: number;
  /** What was wrong, one line each (empty when every invariant held). */
  problems: string[];
}

/**
 * kill -9 the receiver at random moments under concurrent signed load, restart it after
 * each, and send again whatever was not answered 2xx (as GitHub's redelivery does). The
 * senders' ledger is then checked against the queue directory and the database: every
 * acknowledged delivery is in exactly one whole entry file (the one its 202 named) with its
 * one "queued" row; every file parses; nothing is left in .tmp/.
 */
export async function receiverKill(options: ReceiverKillOptions): Promise<ReceiverKillResult> {
  const started = Date.now();
  const rng: Rng = createRng(options.seed);
  const log = options.log ?? (() => {});
  const work = await mkdtemp(path.join(tmpdir(), "deployq-torture-"));
  const ledger = new Ledger(path.join(work, "ledger.jsonl"));
  const tdb = await createTestDatabase("postgres");
  const port = await freePort();
  const ws = await createWorkspace({ port });
  const url = `http://127.0.0.1:${port}`;
  const env = { ...ws.env, DATABASE_URL: tdb.url, DEPLOYQ_LOG_LEVEL: "error" };
  let receiver: Spawned | undefined;
  try {
    // Deliveries are made as they are needed; one not answered 2xx is sent again, the same bytes.
    const sent: SignedRequest[] = [];
    const retry: SignedRequest[] = [];
    const idOf = (r: SignedRequest) => r.headers["x-github-delivery"]!;
    let producing = true;
    let up: { promise: Promise<void>; resolve: () => void } = deferred();
    let acksSinceStart = 0;
    let killAfter = rng.int(...options.acksBetweenKills);
    let onKillDue: (() => void) | undefined;

    const nextRequest = async (): Promise<SignedRequest | undefined> => {
      const again = retry.shift();
      if (again) return again;
      if (!producing) return undefined;
      const r = await signedDelivery(pushPayload({ repository: "octo-org/api", branch: "main", after: randomSha() }));
      sent.push(r);
      return r;
    };
    const sender = async () => {
      for (;;) {
        const request = await nextRequest();
        if (!request) return;
        await up.promise;
        const outcome = await tryPost(url, request, 15_000);
        const id = idOf(request);
        if (outcome.kind === "error") {
          ledger.record(id, { error: outcome.error });
          retry.push(request);
          // The receiver is down (killed): wait for the next one rather than spin.
          await up.promise;
          continue;
        }
        ledger.record(id, { status: outcome.status, ...(typeof outcome.body.queued === "string" ? { queued: outcome.body.queued } : {}) });
        // A 503 is sent again, as GitHub's redelivery would be; any other answer is a finding.
        if (outcome.status === 503) retry.push(request);
        if (outcome.status === 202 && ++acksSinceStart >= killAfter) onKillDue?.();
      }
    };

    const start = async () => {
      receiver = spawnDeployq(["receiver", "--config", ws.configPath], env);
      const r = receiver;
      await Promise.race([
        waitForHttp(url, 60_000),
        r.exited.then(({ code, signal }) => {
          throw new Error(`the receiver exited (${code ?? signal}) before answering:\n${r.output()}`);
        }),
      ]);
      acksSinceStart = 0;
      up.resolve();
    };

    await start();
    const senders = Array.from({ length: options.senders }, sender);
    for (let kill = 1; kill <= options.kills; kill++) {
      await new Promise<void>((resolve) => (onKillDue = resolve));
      onKillDue = undefined;
      up = deferred();
      receiver!.child.kill("SIGKILL");
      const { signal, code } = await receiver!.exited;
      if (signal !== "SIGKILL") throw new Error(`the receiver ended by itself (${code ?? signal}) before kill ${kill}:\n${receiver!.output()}`);
      killAfter = rng.int(...options.acksBetweenKills);
      if (kill % 10 === 0 || kill === options.kills) log(`  kill ${kill}/${options.kills}: ${ledger.acked.size} acknowledged, ${retry.length} to send again`);
      await start();
    }
    // The last receiver stays up: every delivery still unanswered is sent until it is.
    producing = false;
    await Promise.all(senders);
    // A send that failed while the others were finishing is put back: send until none is left.
    while (retry.length > 0) await Promise.all(Array.from({ length: options.senders }, sender));
    receiver!.child.kill("SIGTERM");
    await receiver!.exited;
    receiver = undefined;

    // The check: the ledger against the queue directory and the database.
    const problems: string[] = [];
    const router = path.join(ws.queuesDir, "router");
    const files = (await readdir(router)).sort();
    const fileOf = new Map<string, string[]>();
    let corrupt = 0;
    for (const name of files) {
      const parsedName = parseEntryName(name);
      const parsed = parseEntry(await readFile(path.join(router, name), "utf8"));
      if (!parsedName || !parsed.ok || parsed.entry.delivery_id !== parsedName.deliveryId) {
        corrupt++;
        problems.push(`corrupt: ${name}${parsed.ok ? "" : `: ${parsed.error}`}`);
        continue;
      }
      fileOf.set(parsedName.deliveryId, [...(fileOf.get(parsedName.deliveryId) ?? []), name]);
    }
    let lost = 0;
    for (const [id, name] of ledger.acked) {
      if (!(fileOf.get(id) ?? []).includes(name)) {
        lost++;
        problems.push(`lost: ${id} was answered 202 ${name}, which is not in router/`);
      }
    }
    let duplicated = ledger.ackedTwice;
    if (ledger.ackedTwice > 0) problems.push(`${ledger.ackedTwice} deliveries were answered 202 twice`);
    for (const [id, names] of fileOf) {
      if (names.length > 1) {
        duplicated++;
        problems.push(`duplicated: ${id} is in ${names.join(", ")}`);
      }
    }
    const everyId = new Set(sent.map(idOf));
    for (const id of everyId) if (!fileOf.has(id)) problems.push(`missing: ${id} was sent until answered, yet has no entry`);
    const rows = await tdb.database.db.select().from(deliveries).where(eq(deliveries.hookId, "123456"));
    let unrecorded = 0;
    const rowOf = new Map(rows.map((r) => [r.deliveryId, r]));
    for (const [id, names] of fileOf) {
      const row = rowOf.get(id);
      if (!row || row.outcome !== "queued" || row.entry !== names[0]) {
        unrecorded++;
        problems.push(`unrecorded: ${id}: its row is ${row ? `${row.outcome} → ${row.entry}` : "missing"}`);
      }
    }
    for (const row of rows) {
      if (!fileOf.has(row.deliveryId)) {
        unrecorded++;
        problems.push(`row without a file: ${row.deliveryId} → ${row.entry}`);
      }
    }
    const leftovers = (await readdir(path.join(ws.queuesDir, ".tmp")).catch(() => [] as string[])).length;
    if (leftovers > 0) problems.push(`${leftovers} temporaries left in .tmp/`);
    return {
      seed: rng.seed,
      kills: options.kills,
      deliveries: everyId.size,
      acknowledged: ledger.acked.size,
      connectionErrors: ledger.errors,
      answered503: ledger.unavailable,
      duplicateAnswers: [...ledger.duplicates.values()].reduce((a, b) => a + b, 0),
      lost,
      duplicated,
      corrupt,
      leftovers,
      unrecorded,
      seconds: Math.round((Date.now() - started) / 1000),
      problems: reportedProblems(problems, ledger),
    };
  } finally {
    if (receiver) await killIfRunning(receiver);
    await tdb.dispose();
    await ws.dispose();
    await rm(work, { recursive: true, force: true });
  }
}

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

export const receiverKillScenario: Scenario = {
  name: "receiver-kill",
  title: "kill -9 the receiver under load",
  unit: "kills",
  count: 200,
  async run(seed, kills) {
    const r = await receiverKill({ seed, kills, senders: 8, acksBetweenKills: [1, 60], log: (l) => console.log(l) });
    return {
      header: ["kills", "deliveries", "acknowledged (202)", "connection errors", "503", "duplicate answers (200)", "lost", "duplicated", "corrupt", "unrecorded", "left in .tmp/", "seconds"],
      row: [r.kills, r.deliveries, r.acknowledged, r.connectionErrors, r.answered503, r.duplicateAnswers, must(r.lost), must(r.duplicated), must(r.corrupt), must(r.unrecorded), r.leftovers, r.seconds],
      problems: r.problems,
    };
  },
};
