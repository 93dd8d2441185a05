import { and, asc, gt, inArray, lt, sql } from "drizzle-orm";
import type { Logger } from "pino";
import type { Db } from "../db/client.ts";
import { events as eventsTable } from "../db/schema.ts";
import { errorMessage } from "../errors.ts";
import type { Events } from "./bus.ts";
import type { StampedEvent } from "./types.ts";

/** The channel a writer NOTIFYs with each batch it inserts: the id of the newest event written. */
export const EVENTS_CHANNEL = "deployq_events";
/** Events kept in the table: what a reconnecting page or /ws/v0 client can catch up on. */
export const EVENTS_KEPT = 100_000;
/** Events waiting to be written; past this the oldest are dropped (and counted), never the deploy slowed. */
const MAX_BUFFERED = 10_000;
/** The first event after a quiet spell is written this soon. */
const FLUSH_MS = 25;
/**
 * While events keep coming (a burst of deliveries), batches are written at most this often:
 * each batch costs a commit and a read-back by every feed, whatever its size, and the
 * receiver answering deliveries pays for them (bench: the observability section).
 */
const BUSY_FLUSH_MS = 100;

/** An event as stored: its id is the stream's sequence number. */
export type SequencedEvent = StampedEvent & { seq: number };

/** The router's lock is taken for every batch: its comings and goings are not news. */
function worthKeeping(event: StampedEvent): boolean {
  return event.kind !== "lock" || event.deployment !== undefined || event.name === "lost";
}

/**
 * Writes this process's events into the `events` table, in order, a batch at a time, then
 * NOTIFYs EVENTS_CHANNEL, so that the receiver's feed (in this process or another one:
 * receiver and workers under pm2) sees them. Emitters never wait: a database that is slow
 * or down makes events wait here, and past MAX_BUFFERED the oldest are dropped, logged
 * once per outage with their number.
 */
export function startEventWriter(options: { db: Db; events: Events; logger: Logger; onWritten?: (newestId: number) => void }): { close(): Promise<void>; flushed(): Promise<void> } {
  const { db, logger } = options;
  let buffer: StampedEvent[] = [];
  let dropped = 0;
  let timer: NodeJS.Timeout | undefined;
  let writing: Promise<void> | undefined;
  let failing = false;
  let closed = false;
  let written = 0;

  const off = options.events.on((event) => {
    if (closed || !worthKeeping(event)) return;
    buffer.push(event);
    if (buffer.length > MAX_BUFFERED) {
      buffer.shift();
      dropped++;
    }
    schedule();
  });

  let lastFlushAt = -Infinity;
  function schedule(delayMs = FLUSH_MS): void {
    if (timer || writing || closed) return;
    timer = setTimeout(() => {
      timer = undefined;
      lastFlushAt = performance.now();
      writing = flush().finally(() => {
        writing = undefined;
        if (buffer.length > 0) schedule(failing ? 1000 : FLUSH_MS);
      });
    }, Math.max(delayMs, lastFlushAt + BUSY_FLUSH_MS - performance.now()));
    timer.unref();
  }

  async function flush(): Promise<void> {
    const batch = buffer.slice(0, 500);
    if (batch.length === 0) return;
    try {
      const newest = await insertEvents(db, batch);
      buffer = buffer.slice(batch.length);
      options.onWritten?.(newest);
      if (failing || dropped > 0) logger.warn({ dropped }, "events are written again" + (dropped > 0 ? "; the oldest of those that waited were dropped" : ""));
      failing = false;
      dropped = 0;
      // Now and then, the table is cut back to the newest EVENTS_KEPT.
      if ((written += batch.length) >= 1000) {
        written = 0;
        await db.delete(eventsTable).where(lt(eventsTable.id, newest - EVENTS_KEPT));
      }
    } catch (err) {
      if (!failing) logger.warn({ err: errorMessage(err), waiting: buffer.length }, "could not write events; they wait (the oldest are dropped past 10,000)");
      failing = true;
    }
  }

  return {
    /** Resolves once what was emitted until now is written (or a write failed). */
    async flushed() {
      for (;;) {
        if (writing) {
          await writing;
          continue;
        }
        if (timer) {
          clearTimeout(timer);
          timer = undefined;
        }
        if (buffer.length === 0) return;
        writing = flush().finally(() => (writing = undefined));
        await writing;
        if (failing) return;
      }
    },
    /** Stops listening, and writes what waits, giving a database that does not answer 2 s. */
    async close() {
      off();
      let giveUp: NodeJS.Timeout | undefined;
      await Promise.race([this.flushed(), new Promise<void>((resolve) => (giveUp = setTimeout(resolve, 2000)))]);
      clearTimeout(giveUp);
      closed = true;
      if (timer) clearTimeout(timer);
    },
  };
}

/**
 * Writes a batch and NOTIFYs EVENTS_CHANNEL with the newest id, in one statement: one round
 * trip and one commit per batch, and the same SQL text whatever the batch size, so that
 * Postgres prepares it once per connection (a multi-row VALUES list is a new statement for
 * every size: a Parse and Describe round trip each time). The ids follow the batch's order
 * (`with ordinality`), which is the order the events were emitted in. Returns the newest id.
 */
async function insertEvents(db: Db, batch: readonly StampedEvent[]): Promise<number> {
  const json = JSON.stringify(batch.map((e) => ({ at: e.at, kind: e.kind, name: e.name, deployment: "deployment" in e ? (e.deployment ?? null) : null, data: e })));
  const result = await db.execute<{ newest: string | number }>(sql`
    with inserted as (
      insert into ${eventsTable} (at, kind, name, deployment, data)
      select x.at, x.kind, x.name, x.deployment, x.data
      from rows from (json_to_recordset(${json}::json) as (at timestamptz, kind text, name text, deployment text, data jsonb)) with ordinality as x(at, kind, name, deployment, data, n)
      order by x.n
      returning id
    )
    select pg_notify(${EVENTS_CHANNEL}, max(id)::text), max(id) as newest from inserted`);
  const rows = Array.isArray(result) ? result : (result as unknown as { rows: Array<{ newest: string | number }> }).rows;
  return Number(rows[0]!.newest);
}

/** Events after `since` (a sequence number), oldest first, at most `limit`; only those of `deployments` (and deliveries) when given. */
export async function eventsSince(db: Db, since: number, limit: number, deployments?: readonly string[]): Promise<SequencedEvent[]> {
  const where = deployments
    ? and(gt(eventsTable.id, since), sql`(${eventsTable.deployment} is null or ${inArray(eventsTable.deployment, [...deployments, ""])})`)
    : gt(eventsTable.id, since);
  const rows = await db.select({ id: eventsTable.id, data: eventsTable.data }).from(eventsTable).where(where).orderBy(asc(eventsTable.id)).limit(limit);
  return rows.map((r) => ({ ...(r.data as StampedEvent), seq: r.id }));
}
