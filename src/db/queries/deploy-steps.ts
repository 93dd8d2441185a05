import { asc, eq } from "drizzle-orm";
import type { Db } from "../client.ts";
import { type DeployStep, deploySteps } from "../schema.ts";

export type NewDeployStep = Omit<DeployStep, "id">;

export async function recordDeployStep(db: Db, step: NewDeployStep): Promise<void> {
  await db.insert(deploySteps).values(step).onConflictDoNothing();
}

/** A deploy's steps, in the order they ran. */
export async function deployStepsOf(db: Db, deployId: number): Promise<DeployStep[]> {
  return db.select().from(deploySteps).where(eq(deploySteps.deployId, deployId)).orderBy(asc(deploySteps.position));
}
