import { eq } from "drizzle-orm";
import type { Db } from "../client.ts";
import { type Deploy, deploys } from "../schema.ts";

/** One deploy row (the dashboard's deploy page). */
export async function deployById(db: Db, id: number): Promise<Deploy | undefined> {
  const [row] = await db.select().from(deploys).where(eq(deploys.id, id)).limit(1);
  return row;
}
