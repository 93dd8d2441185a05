import { and, asc, gt, inArray, lt, sql } from "drizzle-orm";
import type { Logger } from "pino";
import type { Db } from "../db/client.ts";
import { events as eventsTable } from "../db/schema.ts";
import { errorMessage } from "../errors.ts";
import type { Events } from "./bus.ts";
import type { StampedEvent } from "./types.ts";

/** The channel a writer NOTIFYs after each insert: the id of the newest event written. */
export const EVENTS_CHANNEL = "deployq_events";
/** Events kept in the table: what a reconnecting page or /ws/v0 client can catch up on. */
export const EVENTS_KEPT = 100_000;
/** Events waiting to be written; past this the oldest are dropped (and counted), never the deploy slowed. */
const MAX_BUFFERED = 10_000;
const FLUSH_MS = 25;

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

  function schedule(delayMs = FLUSH_MS): void {
    if (timer || writing || closed) return;
    timer = setTimeout(() => {
      timer = undefined;
      writing = flush().finally(() => {
        writing = undefined;
        if (buffer.length > 0) schedule(failing ? 1000 : FLUSH_MS);
      });
    }, delayMs);
    timer.unref();
  }

  async function flush(): Promise<void> {
    const batch = buffer.slice(0, 500);
    if (batch.length === 0) return;
    try {
      const rows = await db
        .insert(eventsTable)
        .values(batch.map((e) => ({ at: new Date(e.at), kind: e.kind, name: e.name, deployment: "deployment" in e ? (e.deployment ?? null) : null, data: e })))
        .returning({ id: eventsTable.id });
      buffer = buffer.slice(batch.length);
      const newest = Math.max(...rows.map((r) => r.id));
      await db.execute(sql`select pg_notify(${EVENTS_CHANNEL}, ${String(newest)})`);
      options.onWritten?.(newest);
      if (failing || dropped > 0) logger.warn({ dropped }, "events are written again" + (dropped > 0 ? "; the oldest of those that waited were dropped" : ""));
      failing = false;
      dropped = 0;
      // Now and then, the table is cut back to the newest EVENTS_KEPT.
      if ((written += rows.length) >= 1000) {
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

/** Events after `since` (a sequence number), oldest first, at most `limit`; only those of `deployments` (and deliveries) when given. */
export async function eventsSince(db: Db, since: number, limit: number, deployments?: readonly string[]): Promise<SequencedEvent[]> {
  const where = deployments
    ? and(gt(eventsTable.id, since), sql`(${eventsTable.deployment} is null or ${inArray(eventsTable.deployment, [...deployments, ""])})`)
    : gt(eventsTable.id, since);
  const rows = await db.select({ id: eventsTable.id, data: eventsTable.data }).from(eventsTable).where(where).orderBy(asc(eventsTable.id)).limit(limit);
  return rows.map((r) => ({ ...(r.data as StampedEvent), seq: r.id }));
}
