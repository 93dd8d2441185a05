import { and, desc, eq, inArray, sql } from "drizzle-orm";
import type { Db } from "../db/client.ts";
import { type Rollout, type RolloutHost, type RolloutHostState, fleetHosts, rolloutHosts, rollouts } from "../db/schema.ts";
import { type GithubWrite, enqueueGithubWrites } from "../github/outbox.ts";

/** Told (NOTIFY, with the deployment's name) when a rollout is recorded or changes state. */
export const ROLLOUTS_CHANNEL = "deployq_rollouts";

export interface NewRollout {
  deployment: string;
  entry: string;
  deliveryId: string | undefined;
  ref: string | undefined;
  sha: string | undefined;
  hosts: string[];
  parallel: number;
  canary: string | undefined;
  onFailure: "halt" | "rollback";
  /** The entry as each host writes it into its queue. */
  body: string;
}

/**
 * Records rollouts, in the caller's transaction (the router's, which marks the deliveries
 * routed): a rollout already recorded for the same entry (a router that crashed before it
 * removed the entry routes it again) is left as it is. Each new one supersedes the running
 * rollouts of its deployment, and the hosts are told.
 */
export async function recordRollouts(tx: Db, list: readonly NewRollout[]): Promise<void> {
  for (const r of list) {
    const [inserted] = await tx
      .insert(rollouts)
      .values({ ...r, deliveryId: r.deliveryId ?? null, ref: r.ref ?? null, sha: r.sha ?? null, canary: r.canary ?? null })
      .onConflictDoNothing()
      .returning({ id: rollouts.id });
    if (!inserted) continue;
    await tx
      .update(rollouts)
      .set({ state: "superseded", supersededBy: inserted.id, finishedAt: sql`now()` })
      .where(and(eq(rollouts.deployment, r.deployment), eq(rollouts.state, "running"), sql`${rollouts.id} < ${inserted.id}`));
    await notifyRollouts(tx, r.deployment);
  }
}

async function notifyRollouts(db: Db, deployment: string): Promise<void> {
  await db.execute(sql`select pg_notify(${ROLLOUTS_CHANNEL}, ${deployment})`);
}

/**
 * The rollout each of `deployments` should have on `host` and does not yet: the newest one
 * that lists the host and is running or succeeded (or was superseded after some host had
 * switched to it), never a halted or rolled-back one. A host that was down catches up with
 * it; one that has it already (a row of its own) has nothing to do.
 */
export async function pendingHandOvers(db: Db, host: string, deployments: readonly string[]): Promise<Rollout[]> {
  if (deployments.length === 0) return [];
  const newest = await db
    .selectDistinctOn([rollouts.deployment])
    .from(rollouts)
    .where(
      and(
        inArray(rollouts.deployment, [...deployments]),
        sql`${rollouts.hosts} ? ${host}`,
        sql`(${rollouts.state} in ('running', 'succeeded') or (${rollouts.state} = 'superseded' and exists (
          select 1 from ${rolloutHosts} h where h.rollout_id = ${rollouts.id} and h.state = 'succeeded')))`,
      ),
    )
    .orderBy(rollouts.deployment, desc(rollouts.id));
  if (newest.length === 0) return [];
  const have = await db
    .select({ rolloutId: rolloutHosts.rolloutId })
    .from(rolloutHosts)
    .where(and(eq(rolloutHosts.host, host), inArray(rolloutHosts.rolloutId, newest.map((r) => r.id))));
  const had = new Set(have.map((h) => h.rolloutId));
  return newest.filter((r) => !had.has(r.id));
}

/** The hand-over: `host` has the rollout's entry durably in its queue. Once per (rollout, host). */
export async function markHandedOver(db: Db, rolloutId: number, host: string): Promise<boolean> {
  const inserted = await db.insert(rolloutHosts).values({ rolloutId, host, state: "queued" }).onConflictDoNothing().returning({ host: rolloutHosts.host });
  return inserted.length > 0;
}

/** The rollouts that went back (on_failure = "rollback") on which `host` had switched: it goes back too. */
export async function rollbacksDue(db: Db, host: string, deployments: readonly string[]): Promise<Array<{ rollout: Rollout; mine: RolloutHost }>> {
  if (deployments.length === 0) return [];
  const rows = await db
    .select()
    .from(rollouts)
    .innerJoin(rolloutHosts, eq(rolloutHosts.rolloutId, rollouts.id))
    .where(and(inArray(rollouts.deployment, [...deployments]), eq(rollouts.state, "rolled-back"), eq(rolloutHosts.host, host), eq(rolloutHosts.state, "succeeded")));
  return rows.map((r) => ({ rollout: r.rollouts, mine: r.rollout_hosts }));
}

export async function readRollout(db: Db, id: number): Promise<Rollout | undefined> {
  const [row] = await db.select().from(rollouts).where(eq(rollouts.id, id));
  return row;
}

export async function rolloutHostRows(db: Db, id: number): Promise<RolloutHost[]> {
  return db.select().from(rolloutHosts).where(eq(rolloutHosts.rolloutId, id)).orderBy(rolloutHosts.host);
}

export interface HostPatch {
  state?: RolloutHostState;
  deployId?: number;
  release?: string | null;
  previousRelease?: string | null;
  step?: string | null;
  error?: string | null;
  switchStartedAt?: Date;
  switchEndedAt?: Date;
}

/** Moves `host`'s part in a rollout along (its row exists: it was handed over; one that does not, from an older deployq, is made). */
export async function updateRolloutHost(db: Db, rolloutId: number, host: string, patch: HostPatch): Promise<void> {
  await db
    .insert(rolloutHosts)
    .values({ rolloutId, host, state: patch.state ?? "queued", ...patch })
    .onConflictDoUpdate({ target: [rolloutHosts.rolloutId, rolloutHosts.host], set: { ...patch, updatedAt: sql`now()` } });
}

/** What the host that moves a rollout on tells GitHub (one commit status for the fleet), written in the same transaction. */
export interface FleetReport {
  progress(rollout: Rollout, live: string[]): GithubWrite[];
  live(rollout: Rollout): GithubWrite[];
  stopped(rollout: Rollout, host: string, step: string | undefined, rolledBack: boolean): GithubWrite[];
}

/** The rollout, locked until the transaction ends: the hosts that finish at once take turns, so the last one knows it is. */
async function lockedRollout(tx: Db, id: number): Promise<Rollout | undefined> {
  const [row] = await tx.select().from(rollouts).where(eq(rollouts.id, id)).for("update");
  return row;
}

/**
 * `host` is live on the rollout's commit: recorded, and when every listed host is, the
 * rollout is done. GitHub hears of the fleet's progress (n of N hosts), then of its end.
 */
export async function hostSucceeded(db: Db, rolloutId: number, host: string, patch: HostPatch, report?: FleetReport): Promise<void> {
  await db.transaction(async (t) => {
    const tx = t as unknown as Db;
    const rollout = await lockedRollout(tx, rolloutId);
    await updateRolloutHost(tx, rolloutId, host, { ...patch, state: "succeeded" });
    if (!rollout || rollout.state !== "running") return;
    const rows = await rolloutHostRows(tx, rolloutId);
    const live = rollout.hosts.filter((h) => rows.some((r) => r.host === h && r.state === "succeeded"));
    if (live.length < rollout.hosts.length) {
      if (report) await enqueueGithubWrites(tx, report.progress(rollout, live));
      return;
    }
    await tx.update(rollouts).set({ state: "succeeded", finishedAt: sql`now()` }).where(eq(rollouts.id, rolloutId));
    if (report) await enqueueGithubWrites(tx, report.live(rollout));
    await notifyRollouts(tx, rollout.deployment);
  });
}

/**
 * `host`'s deploy of the rollout failed for good: recorded, and a running rollout is halted
 * (the hosts that have not switched skip it) or rolled back (those that switched go back
 * too), with the host, step and reason.
 */
export async function hostFailed(db: Db, rolloutId: number, host: string, step: string | undefined, error: string, report?: FleetReport): Promise<void> {
  await db.transaction(async (t) => {
    const tx = t as unknown as Db;
    const rollout = await lockedRollout(tx, rolloutId);
    await updateRolloutHost(tx, rolloutId, host, { state: "failed", step: step ?? null, error: error.slice(0, 2000) });
    if (!rollout || rollout.state !== "running") return;
    const rolledBack = rollout.onFailure === "rollback";
    await tx
      .update(rollouts)
      .set({ state: rolledBack ? "rolled-back" : "halted", failedHost: host, failedStep: step ?? null, reason: error.slice(0, 2000), finishedAt: sql`now()` })
      .where(eq(rollouts.id, rolloutId));
    if (report) await enqueueGithubWrites(tx, report.stopped(rollout, host, step, rolledBack));
    await notifyRollouts(tx, rollout.deployment);
  });
}

/**
 * Keeps the newest `keep` rollouts of a deployment (its keep_deploys) and any still
 * running; older ones go, with their hosts' rows. Returns how many went.
 */
export async function pruneRollouts(db: Db, deployment: string, keep: number): Promise<number> {
  const removed = await db
    .delete(rollouts)
    .where(
      and(
        eq(rollouts.deployment, deployment),
        sql`${rollouts.state} <> 'running'`,
        sql`${rollouts.id} < (select id from ${rollouts} where deployment = ${deployment} order by id desc offset ${keep - 1} limit 1)`,
      ),
    )
    .returning({ id: rollouts.id });
  return removed.length;
}

/** This host's workers are alive (`deployq check` and `status` say who has been seen). */
export async function checkIn(db: Db, host: string, pid: number): Promise<void> {
  await db
    .insert(fleetHosts)
    .values({ host, pid })
    .onConflictDoUpdate({ target: fleetHosts.host, set: { pid, lastSeen: sql`now()` } });
}

export async function seenHosts(db: Db): Promise<Array<{ host: string; pid: number; lastSeen: Date }>> {
  return db.select().from(fleetHosts).orderBy(fleetHosts.host);
}

/** The newest rollouts, newest first (of one deployment, or all). */
export async function listRollouts(db: Db, options: { deployment?: string | undefined; limit: number }): Promise<Rollout[]> {
  return db
    .select()
    .from(rollouts)
    .where(options.deployment ? eq(rollouts.deployment, options.deployment) : undefined)
    .orderBy(desc(rollouts.id))
    .limit(options.limit);
}
