import { and, desc, eq, lt, ne, sql } from "drizzle-orm";
import type { Db } from "../client.ts";
import { deploys } from "../schema.ts";

/**
 * Deletes this host's deploy rows of `deployment` beyond the newest `keep` (never a running
 * one), in one statement, and returns their ids so that their log files can go too. Per
 * host: hosts that share a database each keep their own logs, on their own disk.
 */
export async function deleteDeploysBeyond(db: Db, deployment: string, host: string, keep: number): Promise<number[]> {
  const mine = and(eq(deploys.deployment, deployment), eq(deploys.host, host));
  // The id of the oldest row kept; none (fewer rows than `keep`): nothing to delete, as `id < NULL` holds for no row.
  const oldestKept = db.select({ id: deploys.id }).from(deploys).where(mine).orderBy(desc(deploys.id)).offset(keep - 1).limit(1);
  const deleted = await db
    .delete(deploys)
    .where(and(mine, ne(deploys.status, "running"), lt(deploys.id, sql`(${oldestKept})`)))
    .returning({ id: deploys.id });
  return deleted.map((r) => r.id);
}
