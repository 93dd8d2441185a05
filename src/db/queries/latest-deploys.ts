import { inArray, sql } from "drizzle-orm";
import type { Db } from "../client.ts";
import { type Deploy, deploys } from "../schema.ts";

/** How far back "the last deploy that ran" is looked for: the newest rows of a deployment (as `deployq status` always did). */
export const RAN_WITHIN = 50;

export interface LatestDeploys {
  /** The newest row (it may be superseded or already-deployed). */
  last: Deploy | undefined;
  /** The newest of the RAN_WITHIN newest rows that ran (not superseded or skipped as already deployed). */
  lastRun: Deploy | undefined;
}

/**
 * For each deployment, its newest deploy row and the newest that ran, in two round trips
 * whatever the number of deployments: first the ids (two index lookups per deployment, in
 * one statement), then those rows. The status page and the dashboard's overview used to
 * read 50 rows of each deployment one after the other.
 */
export async function latestDeploys(db: Db, names: readonly string[]): Promise<Map<string, LatestDeploys>> {
  const out = new Map<string, LatestDeploys>(names.map((n) => [n, { last: undefined, lastRun: undefined }]));
  if (names.length === 0) return out;
  const result = await db.execute<{ name: string; last_id: string | number | null; ran_id: string | number | null }>(sql`
    select n.name,
      (select d.id from ${deploys} d where d.deployment = n.name order by d.id desc limit 1) as last_id,
      (select r.id from (select d.id, d.status from ${deploys} d where d.deployment = n.name order by d.id desc limit ${RAN_WITHIN}) r
        where r.status not in ('superseded', 'already-deployed') order by r.id desc limit 1) as ran_id
    from (values ${sql.join(
      names.map((n) => sql`(${n}::text)`),
      sql`, `,
    )}) as n(name)`);
  const ids = Array.isArray(result) ? result : (result as unknown as { rows: Array<{ name: string; last_id: string | number | null; ran_id: string | number | null }> }).rows;
  const wanted = new Set<number>();
  for (const r of ids) {
    if (r.last_id != null) wanted.add(Number(r.last_id));
    if (r.ran_id != null) wanted.add(Number(r.ran_id));
  }
  if (wanted.size === 0) return out;
  const rows = await db.select().from(deploys).where(inArray(deploys.id, [...wanted]));
  const byId = new Map(rows.map((r) => [r.id, r]));
  for (const r of ids) {
    out.set(r.name, {
      last: r.last_id == null ? undefined : byId.get(Number(r.last_id)),
      lastRun: r.ran_id == null ? undefined : byId.get(Number(r.ran_id)),
    });
  }
  return out;
}
