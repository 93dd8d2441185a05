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
  resolve: (outcome: "inserted" | "duplicate") => void;
  reject: (err: unknown) => void;
}

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
 */
export function createEnqueueBatcher(db: Db, layout: QueueLayout, maxBatch = 128) {
  let waiting: Pending[] = [];
  let running = false;

  async function drain(): Promise<void> {
    running = true;
    try {
      while (waiting.length > 0) {
        const batch = waiting.slice(0, maxBatch);
        waiting = waiting.slice(maxBatch);
        await commit(batch);
      }
    } finally {
      running = false;
    }
  }

  async function commit(batch: Pending[]): Promise<void> {
    // Copies of one delivery in the same batch: the first one speaks for all of them.
    const groups = new Map<string, Pending[]>();
    for (const p of batch) {
      const key = deliveryKey(p.row.hookId, p.row.deliveryId);
      groups.set(key, [...(groups.get(key) ?? []), p]);
    }
    const leaders = [...groups.values()].map((g) => g[0]!);
    let inserted: Set<string>;
    // Files renamed into router/ by this batch, and whether the transaction got as far as its COMMIT.
    const written: string[] = [];
    let committing = false;
    try {
      inserted = await db.transaction(async (tx) => {
        const fresh = await insertDeliveries(tx as unknown as Db, leaders.map((l) => l.row), leaders.map((l) => groups.get(deliveryKey(l.row.hookId, l.row.deliveryId))!.length - 1));
        const toWrite = leaders.flatMap((l) => (l.file && fresh.has(deliveryKey(l.row.hookId, l.row.deliveryId)) ? [l.file] : []));
        const results = await Promise.allSettled(toWrite.map(async (f) => written.push(await writeEntryFile(layout, layout.router, f.name, f.data))));
        const failed = results.find((r) => r.status === "rejected");
        if (failed) throw failed.reason;
        if (toWrite.length > 0) await fsyncDir(layout.router);
        committing = true;
        return fresh;
      });
    } catch (err) {
      if (!committing) {
        // Rolled back: no row stays, so no file may either (its redelivery would be a second
        // entry). A 503 means nothing was queued.
        await removeEntries(written).catch(() => {});
      }
      // A COMMIT that failed may still have committed: the files stay, and the receiver's next
      // start gives any of them that has no row its row (recordOrphanedEntries).
      for (const p of batch) p.reject(err);
      return;
    }
    for (const [key, group] of groups) {
      group[0]!.resolve(inserted.has(key) ? "inserted" : "duplicate");
      for (const copy of group.slice(1)) copy.resolve("duplicate");
    }
  }

  function add(row: DeliveryRow, file: Pending["file"]): Promise<"inserted" | "duplicate"> {
    return new Promise((resolve, reject) => {
      waiting.push({ row, file, resolve, reject });
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
