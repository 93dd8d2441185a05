import { desc } from "drizzle-orm";
import type { Db } from "../client.ts";
import { deliveries } from "../schema.ts";

export const DEFAULT_DELIVERIES_LIMIT = 20;

/** The most a listing returns: the table keeps every delivery, a listing is for reading. */
export const MAX_DELIVERIES_LIMIT = 1000;

/** A delivery as `deployq deliveries` (and GET /deliveries) shows it: plain JSON, the same either way. */
export interface DeliverySummary {
  receivedAt: string;
  event: string;
  repository: string | null;
  ref: string | null;
  sha: string | null;
  hookId: string;
  deliveryId: string;
  /** The queue entry's file name; null for a delivery that was never queued (ping, voided by the receiver). */
  entry: string | null;
  /** queued (not routed yet) | ping | routed | voided | dead-letter */
  outcome: string;
  /** The deployments it was handed to (routed). */
  deployments: string[];
  /** Why it was voided or dead-lettered. */
  reason: string | null;
  /** How many redeliveries of it were answered "duplicate". */
  duplicates: number;
}

/** The newest `limit` deliveries, newest first. */
export async function recentDeliveries(db: Db, limit: number): Promise<DeliverySummary[]> {
  const rows = await db.select().from(deliveries).orderBy(desc(deliveries.receivedAt), desc(deliveries.id)).limit(limit);
  return rows.map((r) => ({
    receivedAt: r.receivedAt.toISOString(),
    event: r.event,
    repository: r.repository,
    ref: r.ref,
    sha: r.afterSha,
    hookId: r.hookId,
    deliveryId: r.deliveryId,
    entry: r.entry,
    outcome: r.outcome,
    deployments: r.routedTo ?? [],
    reason: r.reason,
    duplicates: r.duplicates,
  }));
}

/** `--limit` and `?limit=`: a whole number from 1 to MAX_DELIVERIES_LIMIT, or undefined when it is not one. */
export function parseDeliveriesLimit(text: string): number | undefined {
  if (!/^\d{1,7}$/.test(text)) return undefined;
  const n = Number(text);
  return n >= 1 && n <= MAX_DELIVERIES_LIMIT ? n : undefined;
}
