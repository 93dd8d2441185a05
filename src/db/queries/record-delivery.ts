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
 * The receiver's dedupe for a batch of deliveries: one INSERT … ON CONFLICT for all of
 * them (keys must be distinct). `copies[i]` more copies of row i arrived in the same batch
 * and count as its duplicates. Returns the keys (hookId, deliveryId) that were new.
 */
export async function insertDeliveries(db: Db, rows: readonly DeliveryRow[], copies: readonly number[]): Promise<Set<string>> {
  const result = await db
    .insert(deliveries)
    .values(rows.map((r, i) => ({ ...values(r), duplicates: copies[i] ?? 0 })))
    .onConflictDoUpdate({
      target: [deliveries.hookId, deliveries.deliveryId],
      set: { duplicates: sql`${deliveries.duplicates} + 1 + excluded.duplicates`, updatedAt: sql`now()` },
    })
    .returning({ hookId: deliveries.hookId, deliveryId: deliveries.deliveryId, inserted: sql<boolean>`(xmax = 0)` });
  return new Set(result.filter((r) => r.inserted).map((r) => deliveryKey(r.hookId, r.deliveryId)));
}

export const deliveryKey = (hookId: string, deliveryId: string) => `${hookId}\u0000${deliveryId}`;

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
