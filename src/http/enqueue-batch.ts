import type { Db } from "../db/client.ts";
import { type DeliveryRow, deliveryKey, insertDeliveries } from "../db/queries/record-delivery.ts";
import { fsyncDir } from "../queue/fsync.ts";
import type { QueueLayout } from "../queue/layout.ts";
import { removeEntries } from "../queue/move.ts";
import { writeEntryFile } from "../queue/write.ts";


interface Pending {
  row: DeliveryRow;
  /** The entry to make durable in router/; none for a delivery that is only recorded (voided). */
  file: { name: string; data: Buffer } | undefined;
  /** Answers the request once, and stops its deadline. */
  settle: (outcome: { ok: "inserted" | "duplicate" } | { err: unknown }) => void;
  settled: boolean;
}

/** What a request whose batch did not commit by its deadline is rejected with (a 503). */
export class DeadlineExceeded extends Error {
  constructor(ms: number) {
    super(`the database did not commit within ${ms / 1000} s`);
    this.name = "DeadlineExceeded";
  }
}

/** The COMMIT was sent and its answer lost: the delivery may be queued (its redelivery is then a duplicate). */
export class CommitUncertain extends Error {
  constructor(cause: unknown) {
    super("the connection to the database was lost during the COMMIT", { cause });
    this.name = "CommitUncertain";
  }
}

/** GitHub gives up on an answer after 10 s: a delivery the database cannot take by then gets its 503 first. */
export const DEFAULT_DEADLINE_MS = 5000;

/**
 * Group commit for the receiver. Deliveries that arrive while a batch is being made
 * durable wait and form the next batch, which then costs one transaction, one multi-row
 * INSERT … ON CONFLICT, one fsync per file and one fsync of router/ for all of them. Each
 * request is still answered only after its own entry is durable and its row committed;
 * nothing is acknowledged early. As for a single delivery, the transaction stays open
 * until the files are durable, so a batch whose files cannot be written leaves no rows
 * behind (every request in it gets 503), and its redeliveries are queued.
 * A delivery that nothing follows is only recorded (`record`): its row commits with the
 * batch, and it has no file to wait for.
 *
 * Each request has a deadline (deadlineMs from its arrival), so that a database that is
 * down, restarting or hung gets its 503 in time for GitHub, never a timeout. A request
 * still waiting for its batch leaves the line; a batch that has not begun its COMMIT when
 * one of its requests' deadline passes is rolled back (its files removed) and every
 * request in it gets 503, so that a 503 still means nothing was queued. Once the COMMIT
 * is sent its answer is awaited: it is one round trip, and only a connection that hangs
 * right then (not one that closes) makes it late.
 */
export interface BatcherOptions {
  maxBatch?: number;
  deadlineMs?: number;
  /**
   * A COMMIT that failed (the connection lost while it was under way) may have committed or
   * not: these deliveries' files stay in router/, and their rows must be made sure of.
   */
  onUncertain?: (rows: DeliveryRow[]) => void;
}

export function createEnqueueBatcher(db: Db, layout: QueueLayout, options: BatcherOptions = {}) {
  const maxBatch = options.maxBatch ?? 128;
  const deadlineMs = options.deadlineMs ?? DEFAULT_DEADLINE_MS;
  let waiting: Pending[] = [];
  let running = false;
  /** The batch in its transaction, and whether its COMMIT has been sent (after which it is no longer abandoned). */
  let current: { members: Pending[]; committing: boolean; expired: DeadlineExceeded | undefined } | undefined;

  async function drain(): Promise<void> {
    running = true;
    try {
      while (waiting.length > 0) {
        const batch = waiting.slice(0, maxBatch);
        waiting = waiting.slice(maxBatch);
        current = { members: batch, committing: false, expired: undefined };
        try {
          await commit(batch, current);
        } finally {
          current = undefined;
        }
      }
    } finally {
      running = false;
    }
  }

  async function commit(batch: Pending[], state: NonNullable<typeof current>): Promise<void> {
    // Copies of one delivery in the same batch: the first one speaks for all of them.
    const groups = new Map<string, Pending[]>();
    for (const p of batch) {
      const key = deliveryKey(p.row.hookId, p.row.deliveryId);
      groups.set(key, [...(groups.get(key) ?? []), p]);
    }
    const leaders = [...groups.values()].map((g) => g[0]!);
    let inserted: Set<string>;
    // Files renamed into router/ by this batch, and the rows they go with.
    const written: string[] = [];
    let withFiles: DeliveryRow[] = [];
    // The transaction's own work. postgres.js rejects the transaction as soon as its
    // connection closes, while the work may still be writing files: it is then told to
    // stop (`over`), and what it wrote until then is removed once it has.
    let over: Error | undefined;
    const abandoned = () => {
      const reason = state.expired ?? over;
      if (reason) throw reason;
    };
    let work: Promise<Set<string>> | undefined;
    try {
      inserted = await db.transaction((tx) => {
        work = (async () => {
          abandoned();
          const fresh = await insertDeliveries(tx as unknown as Db, leaders.map((l) => l.row), leaders.map((l) => groups.get(deliveryKey(l.row.hookId, l.row.deliveryId))!.length - 1));
          const fileLeaders = leaders.filter((l) => l.file && fresh.has(deliveryKey(l.row.hookId, l.row.deliveryId)));
          withFiles = fileLeaders.map((l) => l.row);
          const results = await Promise.allSettled(fileLeaders.map(async (l) => written.push(await writeEntryFile(layout, layout.router, l.file!.name, l.file!.data))));
          const failed = results.find((r) => r.status === "rejected");
          if (failed) throw failed.reason;
          if (fileLeaders.length > 0) await fsyncDir(layout.router);
          abandoned();
          state.committing = true;
          return fresh;
        })();
        return work;
      });
    } catch (err) {
      if (!state.committing) {
        // Rolled back: no row stays, so no file may either (its redelivery would be a second
        // entry). A 503 means nothing was queued. The work is stopped at its next step, and
        // what it wrote until then removed.
        over = new Error("the transaction ended");
        await work?.catch(() => {});
        await removeEntries(written).catch(() => {});
        for (const p of batch) p.settle({ err });
      } else {
        // A COMMIT that failed may still have committed: the files stay, and get their rows
        // (onUncertain; at the latest the receiver's next start, recordOrphanedEntries).
        if (withFiles.length > 0) options.onUncertain?.(withFiles);
        for (const p of batch) p.settle({ err: new CommitUncertain(err) });
      }
      return;
    }
    for (const [key, group] of groups) {
      group[0]!.settle({ ok: inserted.has(key) ? "inserted" : "duplicate" });
      for (const copy of group.slice(1)) copy.settle({ ok: "duplicate" });
    }
  }

  function expire(p: Pending): void {
    const err = new DeadlineExceeded(deadlineMs);
    const at = waiting.indexOf(p);
    if (at >= 0) {
      waiting.splice(at, 1);
      p.settle({ err });
    } else if (current && !current.committing && current.members.includes(p)) {
      // The whole batch goes: its transaction throws at its next step, before any COMMIT.
      current.expired = err;
      for (const member of current.members) member.settle({ err });
    }
  }

  function add(row: DeliveryRow, file: Pending["file"]): Promise<"inserted" | "duplicate"> {
    return new Promise((resolve, reject) => {
      const pending: Pending = {
        row,
        file,
        settled: false,
        settle(outcome) {
          if (pending.settled) return;
          pending.settled = true;
          clearTimeout(timer);
          if ("ok" in outcome) resolve(outcome.ok);
          else reject(outcome.err);
        },
      };
      const timer = setTimeout(() => expire(pending), deadlineMs);
      waiting.push(pending);
      if (!running) void drain();
    });
  }

  return {
    /** Resolves once the delivery is durable and recorded ("inserted"), or known ("duplicate"). */
    enqueue(row: DeliveryRow, name: string, data: Buffer): Promise<"inserted" | "duplicate"> {
      return add(row, { name, data });
    },
    /** Resolves once the delivery's row (no entry: a voided delivery) is committed ("inserted"), or known ("duplicate"). */
    record(row: DeliveryRow): Promise<"inserted" | "duplicate"> {
      return add(row, undefined);
    },
  };
}
