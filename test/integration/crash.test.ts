import { randomBytes } from "node:crypto";
import { mkdir, writeFile } from "node:fs/promises";
import path from "node:path";
import { asc, eq, gt, max } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { deliveries, deploys } from "../../src/db/schema.ts";
import { serializeEntry } from "../../src/queue/entry.ts";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import {
  type Outcome,
  allNames,
  entryNames,
  freePort,
  plannedNames,
  pushEntry,
  readEntries,
  runLoad,
  waitForHttp,
  waitUntil,
} from "../helpers/load.ts";
import { type Spawned, spawnDeployq } from "../helpers/processes.ts";
import { type SignedRequest, type Workspace, createWorkspace, pushPayload, randomSha, signedDelivery } from "../helpers/workspace.ts";

const DELIVERIES = 400;
const CONCURRENCY = 8;
/** SIGKILL once this many deliveries were acknowledged (the other senders are mid-request). */
const KILL_AFTER_ACKS = 100;
/** Acknowledged deliveries sent again after the restart: each must be a duplicate. */
const ACKED_RESENDS = 25;
const HOOK_ID = "123456";

describe("crash safety with a real Postgres and real processes", () => {
  let tdb: TestDatabase;
  const workspaces: Workspace[] = [];
  const processes: Spawned[] = [];

  beforeAll(async () => {
    tdb = await createTestDatabase("postgres");
  });
  afterAll(async () => {
    // Whatever a failed test left running: stop it before the leak check does (and fails).
    for (const p of processes) {
      if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill("SIGKILL");
      await p.exited;
    }
    await tdb?.dispose();
    for (const ws of workspaces) await ws.dispose();
  });

  function spawn(args: string[], ws: Workspace): Spawned {
    const p = spawnDeployq(args, { ...ws.env, DATABASE_URL: tdb.url, DEPLOYQ_LOG_LEVEL: "warn" });
    processes.push(p);
    return p;
  }

  /** Waits for GET / to answer, failing at once (with its output) if the process dies first. */
  async function ready(p: Spawned, url: string): Promise<void> {
    await Promise.race([
      waitForHttp(url),
      p.exited.then(({ code, signal }) => {
        throw new Error(`deployq exited (${code ?? signal}) before answering; output:\n${p.output()}`);
      }),
    ]);
  }

  async function stop(p: Spawned): Promise<void> {
    p.child.kill("SIGTERM");
    const { code, signal } = await p.exited;
    // The shutdown ladder drains, then re-raises the signal: a clean end is "killed by SIGTERM".
    expect({ code, signal }, p.output()).toEqual({ code: null, signal: "SIGTERM" });
  }

  it("kill -9 the receiver while a load runs, restart it: every acknowledged delivery is queued exactly once", async () => {
    const port = await freePort();
    const ws = await createWorkspace({ port });
    workspaces.push(ws);
    const url = `http://127.0.0.1:${port}`;
    const router = path.join(ws.queuesDir, "router");
    const tmp = path.join(ws.queuesDir, ".tmp");

    const shas: string[] = [];
    const requests: SignedRequest[] = [];
    for (let i = 0; i < DELIVERIES; i++) {
      const sha = randomSha();
      shas.push(sha);
      requests.push(await signedDelivery(pushPayload({ repository: "octo-org/api", branch: "main", after: sha }), { hookId: HOOK_ID }));
    }
    const idOf = (i: number) => requests[i]!.headers["x-github-delivery"]!;

    const first = spawn(["receiver", "--config", ws.configPath], ws);
    await ready(first, url);

    // Round 1: load, and SIGKILL in the middle of it.
    const acked = new Map<number, string>(); // index → entry name from the 202
    let killedAt: number | undefined;
    const round1 = await runLoad(url, requests, {
      concurrency: CONCURRENCY,
      stop: () => killedAt !== undefined,
      onOutcome(index, outcome) {
        if (outcome.kind === "status" && outcome.status === 202) acked.set(index, outcome.body.queued as string);
        if (killedAt === undefined && acked.size >= KILL_AFTER_ACKS) {
          killedAt = acked.size;
          first.child.kill("SIGKILL");
        }
      },
    });
    const died = await first.exited;
    expect(died.signal, first.output()).toBe("SIGKILL");
    expect(killedAt).toBeDefined();

    const outcomes = [...round1.values()];
    const errors = outcomes.filter((o): o is Extract<Outcome, { kind: "error" }> => o.kind === "error");
    const statuses = outcomes.flatMap((o) => (o.kind === "status" ? [o.status] : []));
    // Before the kill the receiver answered 202 to every delivery, never 503 or 500.
    expect(new Set(statuses)).toEqual(new Set([202]));
    // The kill did land mid-request: some senders saw their connection die.
    expect(errors.length, "requests in flight at the kill").toBeGreaterThan(0);
    expect(acked.size).toBeGreaterThanOrEqual(KILL_AFTER_ACKS);
    expect(acked.size).toBeLessThan(DELIVERIES);
    const ackedBeforeKill = new Set([...acked.keys()].map(idOf));

    // A temporary left by the killed process (as if it died between write and rename):
    // the next start must sweep it, whether or not the kill itself left one.
    await mkdir(tmp, { recursive: true });
    const stale = `${plannedNames(1)[0]}.${first.child.pid}.${randomBytes(4).toString("hex")}.tmp`;
    await writeFile(path.join(tmp, stale), "{\"partial\":");
    const leftByKill = (await allNames(tmp)).filter((n) => n !== stale);

    // Restart: same config, same port, same database.
    const second = spawn(["receiver", "--config", ws.configPath], ws);
    await ready(second, url);
    expect(await allNames(tmp), `left by the kill: ${leftByKill.join(", ")}`).toEqual([]);

    // Round 2: GitHub redelivers what was not acknowledged (same delivery ID, same body),
    // and a few acknowledged ones are redelivered too (an operator clicked "Redeliver").
    const unacked = requests.map((_, i) => i).filter((i) => !acked.has(i));
    const ackedAgain = [...acked.keys()].slice(0, ACKED_RESENDS);
    const resend = [...unacked, ...ackedAgain];
    const round2 = await runLoad(
      url,
      resend.map((i) => requests[i]!),
      { concurrency: CONCURRENCY },
    );
    let queuedButUnanswered = 0;
    for (const [k, outcome] of round2) {
      const i = resend[k]!;
      expect(outcome.kind, `${idOf(i)}: ${JSON.stringify(outcome)}`).toBe("status");
      if (outcome.kind !== "status") continue;
      if (acked.has(i)) {
        expect(outcome, idOf(i)).toEqual({ kind: "status", status: 200, body: { duplicate: true } });
      } else if (outcome.status === 200) {
        // Queued by the killed process, its answer lost: a duplicate now, and its file must exist.
        expect(outcome.body, idOf(i)).toEqual({ duplicate: true });
        queuedButUnanswered++;
      } else {
        expect(outcome.status, `${idOf(i)}: ${JSON.stringify(outcome.body)}`).toBe(202);
        acked.set(i, outcome.body.queued as string);
      }
    }
    expect(round2.size).toBe(resend.length);
    await stop(second);

    // The queue: one whole, parseable entry per delivery, under the name its 202 gave.
    const files = await readEntries(router);
    const byId = new Map<string, string[]>();
    for (const f of files) {
      expect(f.entry.delivery_id, f.name).toBe(f.deliveryId);
      expect(f.entry).toMatchObject({ event: "push", hook_id: HOOK_ID, source: "github" });
      byId.set(f.deliveryId, [...(byId.get(f.deliveryId) ?? []), f.name]);
    }
    const rows = await tdb.database.db.select().from(deliveries).where(eq(deliveries.hookId, HOOK_ID));
    const rowOf = new Map(rows.map((r) => [r.deliveryId, r]));
    const inTwoFiles = [...byId]
      .filter(([, names]) => names.length > 1)
      .map(([id, names]) => ({ id, files: names, rowPointsTo: rowOf.get(id)?.entry, ackedBeforeKill: ackedBeforeKill.has(id) }));
    expect(inTwoFiles, "delivery IDs queued twice").toEqual([]);
    for (let i = 0; i < DELIVERIES; i++) {
      const names = byId.get(idOf(i));
      expect(names, `delivery ${i} (${idOf(i)}) has no entry`).toBeDefined();
      if (acked.has(i)) expect(names).toEqual([acked.get(i)]);
      const entry = files.find((f) => f.name === names![0])!.entry as { payload: { after: string } };
      expect(entry.payload.after).toBe(shas[i]);
    }
    expect(files).toHaveLength(DELIVERIES);
    expect(await allNames(tmp)).toEqual([]);

    // The database agrees: one "queued" row per delivery, pointing at its file.
    expect(rows).toHaveLength(DELIVERIES);
    for (const row of rows) {
      expect(row.outcome).toBe("queued");
      expect(byId.get(row.deliveryId)).toEqual([row.entry]);
    }
    for (const i of ackedAgain) expect(rowOf.get(idOf(i))!.duplicates).toBeGreaterThanOrEqual(1);

    console.info(
      `crash: killed after ${killedAt} acks; ${errors.length} connection errors (${[...new Set(errors.map((e) => e.error))].join(", ")}); ` +
        `${leftByKill.length} temporaries left by the kill; ${queuedButUnanswered} queued but unanswered before the kill; ` +
        `${unacked.length} redelivered`,
    );
  });

  it("files planted in router/ while the daemon is down are routed at start, in name order", async () => {
    const ws = await createWorkspace();
    workspaces.push(ws);
    const router = path.join(ws.queuesDir, "router");
    const api = path.join(ws.queuesDir, "deployments", "api");
    const deadApi = path.join(ws.queuesDir, "dead-letter", "api");

    // Planted in shuffled order, so neither creation order nor directory order is name order.
    const names = plannedNames(30);
    const shuffled = [...names].sort(() => Math.random() - 0.5);
    await mkdir(router, { recursive: true });
    for (const name of shuffled) {
      await writeFile(path.join(router, name), serializeEntry(pushEntry(name, { repository: "octo-org/api", branch: "main" })));
    }
    const [{ last }] = (await tdb.database.db.select({ last: max(deliveries.id) }).from(deliveries)) as [{ last: number | null }];

    // The api deployment worker runs too: it takes entries out of deployments/api/ (older
    // ones superseded by the newest, the newest tried against a remote that does not exist).
    // So "handed to api" means: still queued there, dead-lettered there, or recorded by it.
    const notHandedToApi = async (): Promise<string[]> => {
      const queued = new Set([...(await entryNames(api)), ...(await entryNames(deadApi))]);
      const recorded = new Set(
        (await tdb.database.db.select({ entry: deploys.entry }).from(deploys).where(eq(deploys.deployment, "api"))).map((r) => r.entry),
      );
      return names.filter((n) => !queued.has(n) && !recorded.has(n));
    };

    const workers = spawn(["workers", "--config", ws.configPath], ws);
    await waitUntil(
      async () => {
        if (workers.child.exitCode !== null || workers.child.signalCode !== null) throw new Error(`workers exited:\n${workers.output()}`);
        return (await entryNames(router)).length === 0 && (await notHandedToApi()).length === 0;
      },
      {
        what: "router/ is empty and deployments/api/ got every planted entry",
        describe: async () => `router: ${(await entryNames(router)).length}, not in api: ${(await notHandedToApi()).length}\n${workers.output()}`,
      },
    );
    await stop(workers);

    expect(await allNames(router)).toEqual([]);
    expect(await notHandedToApi()).toEqual([]);
    // Nothing went to the deployments that do not follow octo-org/api main.
    for (const other of ["api-staging", "web"]) {
      expect(await entryNames(path.join(ws.queuesDir, "deployments", other))).toEqual([]);
      expect(await tdb.database.db.select().from(deploys).where(eq(deploys.deployment, other))).toEqual([]);
    }

    // One new row per entry, inserted as each was routed: id order is routing order.
    const rows = await tdb.database.db
      .select()
      .from(deliveries)
      .where(gt(deliveries.id, last ?? 0))
      .orderBy(asc(deliveries.id));
    expect(rows.map((r) => r.entry)).toEqual(names);
    for (const row of rows) expect(row).toMatchObject({ outcome: "routed", routedTo: ["api"], hookId: "" });
  });
});
