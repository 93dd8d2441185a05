import { desc, eq } from "drizzle-orm";
import type { Db } from "../client.ts";
import { type AdminAction, adminActions } from "../schema.ts";

export type NewAdminAction = Omit<AdminAction, "id" | "at">;

export async function recordAdminAction(db: Db, action: NewAdminAction): Promise<void> {
  await db.insert(adminActions).values(action);
}

/** The newest actions on a deployment (its queue and dead letters included), newest first. */
export async function recentAdminActions(db: Db, deployment: string, limit = 20): Promise<AdminAction[]> {
  return db.select().from(adminActions).where(eq(adminActions.deployment, deployment)).orderBy(desc(adminActions.id)).limit(limit);
}
