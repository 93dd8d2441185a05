import { max } from "drizzle-orm";
import type { Db } from "../client.ts";
import { deliveries, deploys } from "../schema.ts";

/**
 * The newest entry names the database has seen (entry names sort by their epoch prefix), so
 * that a restarted process names its entries after those already handled and gone from disk.
 * Runs once at start.
 */
export async function newestEntryNames(db: Db): Promise<string[]> {
  const [d] = await db.select({ newest: max(deliveries.entry) }).from(deliveries);
  const [r] = await db.select({ newest: max(deploys.entry) }).from(deploys);
  return [d?.newest, r?.newest].filter((n): n is string => typeof n === "string");
}
