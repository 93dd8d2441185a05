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
 *
 * The rows travel as one JSON parameter (json_to_recordset) rather than through drizzle's
 * query builder: on the receiver's hot path that builder cost about 0.1 ms of the event
 * loop per delivery (3.6 ms CPU for a 32-row batch against 1.5 ms this way).
 */
export async function insertDeliveries(db: Db, rows: readonly DeliveryRow[], copies: readonly number[]): Promise<Set<string>> {
  const json = JSON.stringify(
    rows.map((r, i) => {
      const v = values(r);
      return {
        hook_id: v.hookId,
        delivery_id: v.deliveryId,
        event: v.event,
        repository: v.repository,
        ref: v.ref,
        after_sha: v.afterSha,
        received_at: v.receivedAt.toISOString(),
        entry: v.entry,
        outcome: v.outcome,
        reason: v.reason,
        routed_to: v.routedTo,
        duplicates: copies[i] ?? 0,
      };
    }),
  );
  const result = await db.execute<{ hook_id: string; delivery_id: string; inserted: boolean }>(sql`
    insert into ${deliveries} (hook_id, delivery_id, event, repository, ref, after_sha, received_at, entry, outcome, reason, routed_to, duplicates)
    select hook_id, delivery_id, event, repository, ref, after_sha, received_at, entry, outcome, reason, routed_to, duplicates
    from json_to_recordset(${json}::json) as x(hook_id text, delivery_id text, event text, repository text, ref text, after_sha text,
      received_at timestamptz, entry text, outcome text, reason text, routed_to jsonb, duplicates integer)
    on conflict (hook_id, delivery_id) do update set duplicates = ${deliveries}.duplicates + 1 + excluded.duplicates, updated_at = now()
    returning hook_id, delivery_id, (xmax = 0) as inserted`);
  const list = Array.isArray(result) ? result : (result as unknown as { rows: Array<{ hook_id: string; delivery_id: string; inserted: boolean }> }).rows;
  return new Set(list.filter((r) => r.inserted).map((r) => deliveryKey(r.hook_id, r.delivery_id)));
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

/** Records the deliveries that have no row yet (entries whose receiver died before its commit); returns how many were new. */
export async function recordAllIfMissing(db: Db, rows: readonly DeliveryRow[]): Promise<number> {
  if (rows.length === 0) return 0;
  const inserted = await db.insert(deliveries).values(rows.map(values)).onConflictDoNothing().returning({ id: deliveries.id });
  return inserted.length;
}
