/**
 * Where a receiver request's time goes: each step of POST /github-webhook
 * (src/http/github-webhook.ts) run on its own, in this process, with deployq's own
 * functions. Serial costs per call, then the ceiling of each I/O step at the bench's
 * concurrency (as many callers in flight as wrk has connections).
 */
import { randomUUID } from "node:crypto";
import { mkdir } from "node:fs/promises";
import path from "node:path";
import { sign } from "@octokit/webhooks-methods";
import { type Database, openDatabase } from "../src/db/client.ts";
import type { Db } from "../src/db/client.ts";
import { insertDeliveries } from "../src/db/queries/record-delivery.ts";
import { createEnqueueBatcher } from "../src/http/enqueue-batch.ts";
import { verifySignature } from "../src/http/signature.ts";
import { type QueueEntry, serializeEntry, summarizePayload } from "../src/queue/entry.ts";
import { entryName } from "../src/queue/entry-name.ts";
import { queueLayout } from "../src/queue/layout.ts";
import { ensureQueueDirs, writeEntryDurably } from "../src/queue/write.ts";

/** The step that is the receiver's durable path without HTTP (run.ts compares it with bare Express). */
export const GROUP_COMMIT_STEP = (c: number) => `${c} in flight: the receiver's group commit (file + row durable), no HTTP`;

export interface StepFigure {
  step: string;
  /** Serial: mean microseconds per call. */
  serialUs?: number;
  /** Concurrent: completed calls per second with `concurrency` callers in flight. */
  perSec?: number;
  p50Ms?: number;
  p99Ms?: number;
  /** Concurrent: CPU µs per call of this process (all threads: event loop, libuv pool, GC). */
  cpuUs?: number;
  /** Concurrent: CPU µs per call of the Postgres server processes serving this process. */
  dbCpuUs?: number;
}

export interface StepsOptions {
  databaseUrl: string;
  workDir: string;
  body: string;
  secret: string;
  concurrency: number;
  /** Seconds per concurrent step. */
  seconds: number;
  /** Postgres pool size: deployq's default unless given. */
  poolSize?: number;
  /** CPU milliseconds (user + sys) used so far by the Postgres backends of this bench, if they can be read. */
  databaseCpuMs?: () => Promise<number>;
}

function timeSerial(n: number, fn: () => void): number {
  for (let i = 0; i < Math.min(200, n); i++) fn(); // warm up the JIT
  const start = performance.now();
  for (let i = 0; i < n; i++) fn();
  return ((performance.now() - start) * 1000) / n;
}

async function timeSerialAsync(n: number, fn: () => Promise<unknown>): Promise<number> {
  for (let i = 0; i < 10; i++) await fn();
  const start = performance.now();
  for (let i = 0; i < n; i++) await fn();
  return ((performance.now() - start) * 1000) / n;
}

async function timeConcurrent(
  concurrency: number,
  seconds: number,
  fn: () => Promise<unknown>,
  databaseCpuMs?: () => Promise<number>,
): Promise<{ perSec: number; p50Ms: number; p99Ms: number; cpuUs: number; dbCpuUs?: number }> {
  const latencies: number[] = [];
  const dbBefore = await databaseCpuMs?.();
  const cpuBefore = process.cpuUsage();
  const start = performance.now();
  const end = start + seconds * 1000;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() < end) {
        const t0 = performance.now();
        await fn();
        latencies.push(performance.now() - t0);
      }
    }),
  );
  const elapsed = (performance.now() - start) / 1000;
  const cpu = process.cpuUsage(cpuBefore);
  const dbAfter = await databaseCpuMs?.();
  latencies.sort((a, b) => a - b);
  const at = (p: number) => latencies[Math.min(latencies.length - 1, Math.ceil((p / 100) * latencies.length) - 1)] ?? NaN;
  const n = latencies.length;
  return {
    perSec: n / elapsed,
    p50Ms: at(50),
    p99Ms: at(99),
    cpuUs: (cpu.user + cpu.system) / n,
    dbCpuUs: dbBefore === undefined || dbAfter === undefined ? undefined : ((dbAfter - dbBefore) * 1000) / n,
  };
}

export async function runSteps(options: StepsOptions): Promise<StepFigure[]> {
  const { body, secret } = options;
  const buffer = Buffer.from(body);
  const signature = await sign(secret, body);
  const payload = JSON.parse(body) as Record<string, unknown>;
  const makeEntry = (deliveryId: string): QueueEntry => ({
    event: "push",
    delivery_id: deliveryId,
    hook_id: "123456",
    received_at: new Date().toISOString(),
    source: "github",
    payload,
  });
  const entry = makeEntry(randomUUID());
  const figures: StepFigure[] = [];

  // CPU steps, serial.
  figures.push({ step: "verify HMAC-SHA256 signature", serialUs: timeSerial(5000, () => verifySignature([secret], buffer, signature)) });
  figures.push({ step: "JSON.parse the body", serialUs: timeSerial(5000, () => JSON.parse(buffer.toString("utf8"))) });
  figures.push({ step: "serializeEntry (pretty-printed, 2 spaces)", serialUs: timeSerial(5000, () => serializeEntry(entry)) });
  figures.push({ step: "  for comparison: compact JSON.stringify", serialUs: timeSerial(5000, () => JSON.stringify(entry)) });

  const layout = queueLayout(path.join(options.workDir, "steps", "queues"));
  await ensureQueueDirs(layout);
  await mkdir(layout.router, { recursive: true });
  const write = () => {
    const id = randomUUID();
    return writeEntryDurably(layout, layout.router, entryName(id), makeEntry(id));
  };
  figures.push({ step: "writeEntryDurably (write, fsync, rename, fsync dir)", serialUs: await timeSerialAsync(200, write) });

  let database: Database | undefined;
  try {
    database = await openDatabase({ databaseUrl: options.databaseUrl, dataDir: "unused", poolSize: options.poolSize });
    await database.migrate();
    const db = database.db;
    const row = (id: string) => {
      const s = summarizePayload(payload);
      return { hookId: "123456", deliveryId: id, event: "push", repository: s.repository, ref: s.ref, afterSha: s.after, receivedAt: new Date() };
    };
    // Exactly the handler's database work: one transaction with the dedupe insert.
    const transaction = () =>
      db.transaction(async (tx) => {
        const id = randomUUID();
        return insertDeliveries(tx as unknown as Db, [{ ...row(id), entry: entryName(id), outcome: "queued" }], [0]);
      });
    // One delivery's whole durable step, alone: the file is written while the row's transaction is open.
    const both = () =>
      db.transaction(async (tx) => {
        const id = randomUUID();
        const name = entryName(id);
        const inserted = await insertDeliveries(tx as unknown as Db, [{ ...row(id), entry: name, outcome: "queued" }], [0]);
        if (inserted.size > 0) await writeEntryDurably(layout, layout.router, name, makeEntry(id));
        return inserted;
      });
    figures.push({ step: "Postgres: BEGIN, INSERT … ON CONFLICT, COMMIT", serialUs: await timeSerialAsync(200, transaction) });
    figures.push({ step: "both (file written inside the transaction)", serialUs: await timeSerialAsync(200, both) });

    const c = options.concurrency;
    const dbCpu = options.databaseCpuMs;
    figures.push({ step: `${c} in flight: writeEntryDurably only`, ...(await timeConcurrent(c, options.seconds, write)) });
    figures.push({ step: `${c} in flight: Postgres transaction only`, ...(await timeConcurrent(c, options.seconds, transaction, dbCpu)) });
    // What the receiver does, without HTTP: its group commit (src/http/enqueue-batch.ts). The
    // ceiling of the durable path on this machine, whatever the HTTP side costs.
    const batcher = createEnqueueBatcher(db, layout);
    const enqueue = () => {
      const id = randomUUID();
      const name = entryName(id);
      return batcher.enqueue({ ...row(id), entry: name, outcome: "queued" }, name, Buffer.from(serializeEntry(makeEntry(id))));
    };
    figures.push({ step: GROUP_COMMIT_STEP(c), ...(await timeConcurrent(c, options.seconds, enqueue, dbCpu)) });
  } finally {
    await database?.close();
  }
  return figures;
}
