import { max } from "drizzle-orm";
import type { Logger } from "pino";
import type { Db } from "../db/client.ts";
import { events as eventsTable } from "../db/schema.ts";
import { errorMessage } from "../errors.ts";
import { type SequencedEvent, eventsSince } from "./store.ts";

/** How far back a subscriber may catch up: older events are gone from its view (the table keeps more). */
export const CATCH_UP_LIMIT = 5000;
/** The feed looks for new events this often even without a NOTIFY (one lost while the connection was down). */
const POLL_MS = 2000;

export interface Subscription {
  /** Only the events of these deployments (and every delivery event); all when absent. */
  deployments?: ReadonlySet<string> | undefined;
  /** Called for each event, in sequence order, never twice, never with a gap. Must not block. */
  deliver(event: SequencedEvent): void;
}

/**
 * The receiver's view of the stream: every event any deployq process wrote into the
 * `events` table, in sequence order, for the dashboard and /ws/v0. It reads new rows when
 * told (a NOTIFY on the events channel, or this process's own writer) and every 2 s in any
 * case. A subscriber that gives the last sequence number it saw first gets what it missed
 * (up to CATCH_UP_LIMIT), then the live events, with no gap and no repeat between them.
 */
export class EventFeed {
  #last = 0;
  #reading: Promise<void> | undefined;
  #again = false;
  #timer: NodeJS.Timeout | undefined;
  #closed = false;
  readonly #subscribers = new Set<{ sub: Subscription; held: SequencedEvent[] | undefined }>();

  constructor(private readonly deps: { db: Db; logger: Logger }) {}

  /** Starts from the newest event already written: subscribers catch up on older ones with `since`. */
  async start(): Promise<void> {
    const [row] = await this.deps.db.select({ newest: max(eventsTable.id) }).from(eventsTable);
    this.#last = row?.newest ?? 0;
    this.#timer = setInterval(() => this.wake(), POLL_MS);
    this.#timer.unref();
  }

  /** The newest sequence number delivered. */
  get last(): number {
    return this.#last;
  }

  /**
   * A NOTIFY on the events channel, whose payload is the newest id its writer wrote: news
   * only if it is past what was read (this process's own writer has woken the feed already).
   */
  notified(payload: string): void {
    const newest = Number(payload);
    if (Number.isSafeInteger(newest) && newest <= this.#last) return;
    this.wake();
  }

  /** New events may be in the table. */
  wake(): void {
    if (this.#closed) return;
    if (this.#reading) {
      this.#again = true;
      return;
    }
    this.#reading = this.#read().finally(() => {
      this.#reading = undefined;
      if (this.#again) {
        this.#again = false;
        this.wake();
      }
    });
  }

  async #read(): Promise<void> {
    try {
      for (;;) {
        const batch = await eventsSince(this.deps.db, this.#last, 500);
        for (const event of batch) {
          this.#last = event.seq;
          for (const s of this.#subscribers) {
            if (s.sub.deployments && "deployment" in event && event.deployment !== undefined && !s.sub.deployments.has(event.deployment)) continue;
            if (s.held) s.held.push(event);
            else s.sub.deliver(event);
          }
        }
        if (batch.length < 500) return;
      }
    } catch (err) {
      this.deps.logger.debug({ err: errorMessage(err) }, "could not read new events; the feed tries again");
    }
  }

  /**
   * Subscribes; with `since`, first delivers the events after it (at most CATCH_UP_LIMIT:
   * a client that was away longer starts from the oldest still available). Returns the
   * function that ends the subscription.
   */
  async subscribe(sub: Subscription, since?: number): Promise<() => void> {
    const entry = { sub, held: since === undefined ? undefined : ([] as SequencedEvent[]) };
    this.#subscribers.add(entry);
    const end = () => void this.#subscribers.delete(entry);
    if (since === undefined) return end;
    try {
      // Live events that arrive meanwhile are held, then delivered after the catch-up, without repeats.
      const upTo = this.#last;
      let seen = since;
      for (;;) {
        const batch = (await eventsSince(this.deps.db, Math.max(seen, upTo - CATCH_UP_LIMIT), 500, sub.deployments ? [...sub.deployments] : undefined)).filter((e) => e.seq <= upTo);
        for (const e of batch) sub.deliver(e);
        if (batch.length > 0) seen = batch.at(-1)!.seq;
        if (batch.length < 500 || seen >= upTo) break;
      }
      for (const e of entry.held!) if (e.seq > seen) sub.deliver(e);
    } catch (err) {
      end();
      throw err;
    } finally {
      entry.held = undefined;
    }
    return end;
  }

  /** Stops at once: a read under way (on a database that does not answer, it may never end) is left to finish unheard. */
  close(): void {
    this.#closed = true;
    if (this.#timer) clearInterval(this.#timer);
    this.#subscribers.clear();
  }
}
