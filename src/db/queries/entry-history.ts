import { desc, eq, inArray } from "drizzle-orm";
import type { Db } from "../client.ts";
import { type Delivery, deliveries, deploys } from "../schema.ts";

/** The delivery that became this queue entry (an entry queued by the CLI or the dashboard has none). */
export async function deliveryOfEntry(db: Db, entry: string): Promise<Delivery | undefined> {
  const [row] = await db.select().from(deliveries).where(eq(deliveries.entry, entry)).orderBy(desc(deliveries.id)).limit(1);
  return row;
}

export interface EntryDeploy {
  id: number;
  deployment: string;
  status: string;
  supersededBy: string | null;
}

/** For each entry, the newest deploy row of each deployment it reached: what became of a routed delivery. */
export async function latestDeploysOfEntries(db: Db, entries: readonly string[]): Promise<Map<string, EntryDeploy[]>> {
  const out = new Map<string, EntryDeploy[]>();
  if (entries.length === 0) return out;
  const rows = await db
    .select({ id: deploys.id, entry: deploys.entry, deployment: deploys.deployment, status: deploys.status, supersededBy: deploys.supersededBy })
    .from(deploys)
    .where(inArray(deploys.entry, [...entries]))
    .orderBy(desc(deploys.id));
  for (const r of rows) {
    const list = out.get(r.entry) ?? [];
    if (!list.some((d) => d.deployment === r.deployment)) list.push({ id: r.id, deployment: r.deployment, status: r.status, supersededBy: r.supersededBy });
    out.set(r.entry, list);
  }
  return out;
}
