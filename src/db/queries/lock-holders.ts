import { sql } from "drizzle-orm";
import type { Db } from "../client.ts";

export interface LockEventSummary {
  deployment: string;
  /** acquired, released or lost: the newest of these for the deployment's lock. */
  name: "acquired" | "released" | "lost";
  at: Date;
  pid: number | undefined;
  host: string | undefined;
}

/**
 * The newest acquired/released/lost event of each deployment's lock, as every process wrote
 * it to the events table: who holds the lock (an "acquired" not yet followed by a release),
 * from which host and process, since when. One statement: an index walk per deployment
 * (events_deployment_id_idx), newest first, to its first lock event.
 */
export async function lockEventsOf(db: Db, deployments: readonly string[]): Promise<Map<string, LockEventSummary>> {
  if (deployments.length === 0) return new Map();
  type Row = { deployment: string; name: LockEventSummary["name"]; at: string | Date; pid: number | null; host: string | null };
  const result = await db.execute<Row>(sql`
    select d.name as deployment, e.name, e.at, (e.data->>'pid')::int as pid, e.data->>'host' as host
    from unnest(${sql.raw("array[")}${sql.join(
      deployments.map((d) => sql`${d}`),
      sql`, `,
    )}${sql.raw("]::text[]")}) as d(name)
    cross join lateral (
      select name, at, data from events
      where events.deployment = d.name and events.kind = 'lock' and events.name in ('acquired', 'released', 'lost')
      order by events.id desc limit 1
    ) e`);
  // postgres.js answers an array of rows, PGlite an object holding them.
  const rows = (Array.isArray(result) ? result : (result as unknown as { rows: Row[] }).rows) as Row[];
  return new Map(
    rows.map((r) => [
      r.deployment,
      { deployment: r.deployment, name: r.name, at: new Date(r.at), pid: r.pid ?? undefined, host: r.host ?? undefined },
    ]),
  );
}
