import { sql } from "drizzle-orm";
import type { Db } from "../client.ts";
import { deliveries, type DeliveryOutcome } from "../schema.ts";

export interface DeliveryRow {
  hookId: string;
  deliveryId: string;
  event: string;
  repository: string | undefined;
  ref: string | undefined;
  afterSha: string | undefined;
  receivedAt: Date;
  entry: string | undefined;
  outcome: DeliveryOutcome;
  reason?: string | undefined;
  routedTo?: string[] | undefined;
}

/**
 * Payload strings are the sender's: Postgres text cannot hold NUL, and a column is no
 * place for a megabyte of ref. Such a value is recorded mangled rather than failing the
 * delivery (and every redelivery of it).
 */
function text(value: string | undefined): string | null {
  if (value === undefined) return null;
  const clean = value.replaceAll("\u0000", "\uFFFD");
  return clean.length > 1024 ? `${clean.slice(0, 1024)}…` : clean;
}

function values(row: DeliveryRow) {
  return {
    hookId: row.hookId,
    deliveryId: text(row.deliveryId)!,
    event: text(row.event)!,
    repository: text(row.repository),
    ref: text(row.ref),
    afterSha: text(row.afterSha),
    receivedAt: row.receivedAt,
    entry: row.entry ?? null,
    outcome: row.outcome,
    reason: text(row.reason),
    routedTo: row.routedTo ?? null,
  };
}

/**
 * The receiver's dedupe: one INSERT … ON CONFLICT, never check-then-insert. On a repeat
 * it counts the duplicate instead. A concurrent copy waits on the unique index until the
 * first insert's transaction ends: if that one rolls back (its file could not be written),
 * this copy inserts and is queued instead, so a failed first attempt never eats a retry.
 */
export async function insertDelivery(db: Db, row: DeliveryRow): Promise<"inserted" | "duplicate"> {
  const result = await db
    .insert(deliveries)
    .values(values(row))
    .onConflictDoUpdate({
      target: [deliveries.hookId, deliveries.deliveryId],
      set: { duplicates: sql`${deliveries.duplicates} + 1`, updatedAt: sql`now()` },
    })
    .returning({ inserted: sql<boolean>`(xmax = 0)` });
  return result[0]?.inserted ? "inserted" : "duplicate";
}

/**
 * Records what became of deliveries (routed, voided, dead-letter) in one statement,
 * creating the rows of entries that did not come through the receiver.
 */
export async function recordOutcomes(db: Db, rows: readonly DeliveryRow[]): Promise<void> {
  // One statement cannot touch a row twice: the last word on a delivery wins.
  const unique = new Map(rows.map((r) => [`${r.hookId}\u0000${r.deliveryId}`, r]));
  if (unique.size === 0) return;
  await db
    .insert(deliveries)
    .values([...unique.values()].map(values))
    .onConflictDoUpdate({
      target: [deliveries.hookId, deliveries.deliveryId],
      set: {
        outcome: sql`excluded.outcome`,
        reason: sql`excluded.reason`,
        routedTo: sql`excluded.routed_to`,
        entry: sql`coalesce(excluded.entry, ${deliveries.entry})`,
        updatedAt: sql`now()`,
      },
    });
}

/** Records a delivery only if it has no row yet (an entry whose receiver died before its commit). */
export async function recordIfMissing(db: Db, row: DeliveryRow): Promise<boolean> {
  const inserted = await db.insert(deliveries).values(values(row)).onConflictDoNothing().returning({ id: deliveries.id });
  return inserted.length > 0;
}
