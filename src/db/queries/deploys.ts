import { and, desc, eq, inArray, sql } from "drizzle-orm";
import type { Db } from "../client.ts";
import { type Deploy, type DeployStatus, deploys } from "../schema.ts";
import { type GithubWrite, enqueueGithubWrites } from "../../github/outbox.ts";

/**
 * Runs `write`, and adds what it reports to GitHub (commit statuses, deployment statuses)
 * to the GitHub outbox in the same transaction (none: no transaction), so that a crash can
 * never keep the one without the other.
 */
async function withStatuses<T>(db: Db, statuses: ((result: T) => readonly GithubWrite[]) | undefined, write: (q: Db) => Promise<T>): Promise<T> {
  if (!statuses) return write(db);
  return db.transaction(async (tx) => {
    const result = await write(tx as unknown as Db);
    await enqueueGithubWrites(tx as unknown as Db, statuses(result));
    return result;
  });
}

/** A new fencing token: every lock acquisition takes one. */
export async function nextFencingToken(db: Db): Promise<number> {
  const [row] = await db.select({ token: sql<string>`nextval('deploy_fencing_seq')` }).from(sql`(select 1) as one`);
  return Number(row!.token);
}

/** The newest token recorded for a deployment by any worker, if newer than `token`. */
export async function newerFencingToken(db: Db, deployment: string, token: number, host?: string): Promise<number | undefined> {
  const [row] = await db
    .select({ token: sql<string | null>`max(${deploys.fencingToken})` })
    .from(deploys)
    .where(host === undefined ? eq(deploys.deployment, deployment) : and(eq(deploys.deployment, deployment), eq(deploys.host, host)));
  const newest = row?.token == null ? undefined : Number(row.token);
  return newest !== undefined && newest > token ? newest : undefined;
}

export interface NewDeploy {
  deployment: string;
  entry: string;
  deliveryId: string | undefined;
  event: string;
  ref: string | undefined;
  sha: string | undefined;
  attempt: number;
  host: string;
  pid: number;
  fencingToken?: number;
}

/** `statuses`: what its start reports to GitHub, given the new row's id. */
export async function startDeploy(db: Db, row: NewDeploy, statuses?: (id: number) => readonly GithubWrite[]): Promise<number> {
  return withStatuses(db, statuses, async (q) => {
    const [inserted] = await q
      .insert(deploys)
      .values({ ...row, deliveryId: row.deliveryId ?? null, ref: row.ref ?? null, sha: row.sha ?? null, status: "running" })
      .returning({ id: deploys.id });
    return inserted!.id;
  });
}

export interface DeployResult {
  status: Exclude<DeployStatus, "running">;
  sha?: string | undefined;
  /** The push's own commit, when its branch's head was deployed instead. */
  requestedSha?: string | undefined;
  /** For superseded: what won (a newer entry's name, or the live commit the branch had moved on to). */
  supersededBy?: string | undefined;
  release?: string | undefined;
  previousRelease?: string | undefined;
  logPath?: string | undefined;
  error?: string | undefined;
  exitCode?: number | undefined;
  signal?: string | undefined;
}

export async function setDeployLog(db: Db, id: number, logPath: string): Promise<void> {
  await db.update(deploys).set({ logPath }).where(eq(deploys.id, id));
}

export async function finishDeploy(db: Db, id: number, result: DeployResult, statuses?: readonly GithubWrite[]): Promise<void> {
  await withStatuses(db, statuses && statuses.length > 0 ? () => statuses : undefined, async (q) => {
    await q
    .update(deploys)
    .set({
      status: result.status,
      finishedAt: sql`now()`,
      durationMs: sql`(extract(epoch from now() - ${deploys.startedAt}) * 1000)::int`,
      ...(result.sha ? { sha: result.sha } : {}),
      ...(result.requestedSha ? { requestedSha: result.requestedSha } : {}),
      ...(result.supersededBy ? { supersededBy: result.supersededBy } : {}),
      release: result.release ?? null,
      previousRelease: result.previousRelease ?? null,
      error: result.error ?? null,
      exitCode: result.exitCode ?? null,
      signal: result.signal ?? null,
    })
    .where(eq(deploys.id, id));
  });
}

/**
 * An entry that never ran: superseded by a newer one, or failed before it could start (its
 * required checks failed or timed out). `statuses`: its commit statuses, given the row's id.
 */
export async function recordUnrun(
  db: Db,
  row: NewDeploy,
  outcome: { status: "superseded"; supersededBy: string } | { status: "failed" | "cancelled"; error: string },
  statuses?: (id: number) => readonly GithubWrite[],
): Promise<number> {
  return withStatuses(db, statuses, async (q) => {
    const [inserted] = await q
      .insert(deploys)
      .values({
        ...row,
        deliveryId: row.deliveryId ?? null,
        ref: row.ref ?? null,
        sha: row.sha ?? null,
        ...outcome,
        finishedAt: sql`now()`,
        durationMs: 0,
      })
      .returning({ id: deploys.id });
    return inserted!.id;
  });
}

/** Deploys left `running` on this host by processes that are gone: the entry is still queued and is redone. */
export async function markInterrupted(db: Db, deployment: string, host: string, alive: (pid: number) => boolean): Promise<number[]> {
  const rows = await db
    .select({ id: deploys.id, pid: deploys.pid })
    .from(deploys)
    .where(and(eq(deploys.deployment, deployment), eq(deploys.host, host), eq(deploys.status, "running")));
  const dead = rows.filter((r) => !alive(r.pid)).map((r) => r.id);
  if (dead.length > 0) {
    await db
      .update(deploys)
      .set({ status: "interrupted", finishedAt: sql`now()`, error: "the deployq process running it stopped; the entry was redone" })
      .where(inArray(deploys.id, dead));
  }
  return dead;
}

export async function recentDeploys(db: Db, deployment: string, limit = 20): Promise<Deploy[]> {
  return db.select().from(deploys).where(eq(deploys.deployment, deployment)).orderBy(desc(deploys.id)).limit(limit);
}

/** Statuses that end an entry's turn in a deployment: each turn of an entry leaves exactly one. */
export const FINAL_STATUSES = ["succeeded", "already-deployed", "superseded", "failed", "cancelled"] as const satisfies readonly DeployStatus[];

/** How many turns each of these entries has already had in a deployment on this host (its final rows there: a fleet shares the rows, and the entry names). */
export async function finishedTurns(db: Db, deployment: string, host: string, entries: readonly string[]): Promise<Map<string, number>> {
  if (entries.length === 0) return new Map();
  const rows = await db
    .select({ entry: deploys.entry, turns: sql<string>`count(*)` })
    .from(deploys)
    .where(and(eq(deploys.deployment, deployment), eq(deploys.host, host), inArray(deploys.entry, [...entries]), inArray(deploys.status, [...FINAL_STATUSES])))
    .groupBy(deploys.entry);
  return new Map(rows.map((r) => [r.entry, Number(r.turns)]));
}
