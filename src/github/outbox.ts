import { and, asc, count, eq, isNull, min, sql } from "drizzle-orm";
import type { Db } from "../db/client.ts";
import { type GithubOutboxRow, githubOutbox, githubSender } from "../db/schema.ts";
import type { StatusRow } from "./statuses.ts";

/**
 * The outbox's order, and why collapsing is safe.
 *
 * A key is (repository, sha, context), and a context is one deployment: every row of a key
 * is written either by the router before it hands the entry over (the "queued" pending) or
 * by that deployment's worker while it holds the deployment's lock. Those writers are
 * serialised, each one's row committed before the next one can start (the entry file
 * appears in the deployment's queue only after the router's row is committed), so within
 * a key the bigserial id is the order in which the states happened.
 *
 * The sender only ever sends the row with the greatest id among a key's unsent rows, and
 * when that send succeeds it marks that row `sent` and every older unsent row of the key
 * `collapsed`, in one statement. Any row written meanwhile has a greater id and stays
 * unsent, so it is sent next: GitHub never receives an older state after a newer one, and
 * intermediate states nobody needs any more (a pending followed by its success) are not
 * sent at all. A crash between GitHub's answer and that statement sends the same row once
 * more, after restart, and nothing older: the one duplicate possible is of the newest state.
 */
export type Queryable = Pick<Db, "insert">;

export async function enqueueStatuses(db: Queryable, rows: readonly StatusRow[]): Promise<void> {
  if (rows.length === 0) return;
  await db.insert(githubOutbox).values(rows.map((r) => ({ ...r })));
}

/** The newest unsent row of each key, oldest key first, at most `limit`. */
export async function newestUnsent(db: Db, limit: number): Promise<GithubOutboxRow[]> {
  const rows = await db.execute<Record<string, unknown>>(sql`
    select * from (
      select distinct on (repository, sha, context) *
      from github_outbox where result is null
      order by repository, sha, context, id desc
    ) newest order by id limit ${limit}`);
  const list = (Array.isArray(rows) ? rows : (rows as { rows: Record<string, unknown>[] }).rows) as Record<string, unknown>[];
  return list.map(fromSql);
}

function fromSql(r: Record<string, unknown>): GithubOutboxRow {
  const date = (v: unknown) => (v == null ? null : v instanceof Date ? v : new Date(String(v)));
  return {
    id: Number(r.id),
    createdAt: date(r.created_at)!,
    repository: String(r.repository),
    sha: String(r.sha),
    context: String(r.context),
    state: String(r.state),
    description: String(r.description),
    targetUrl: r.target_url == null ? null : String(r.target_url),
    deployment: String(r.deployment),
    deployId: r.deploy_id == null ? null : Number(r.deploy_id),
    result: r.result == null ? null : String(r.result),
    attempts: Number(r.attempts),
    lastError: r.last_error == null ? null : String(r.last_error),
    lastAttemptAt: date(r.last_attempt_at),
    sentAt: date(r.sent_at),
  };
}

const sameKey = (row: Pick<GithubOutboxRow, "repository" | "sha" | "context">) =>
  and(eq(githubOutbox.repository, row.repository), eq(githubOutbox.sha, row.sha), eq(githubOutbox.context, row.context));

/** GitHub took `row`: it is sent, and every older unsent state of its key is collapsed into it. */
export async function markSent(db: Db, row: GithubOutboxRow): Promise<void> {
  await db
    .update(githubOutbox)
    .set({
      result: sql`case when ${githubOutbox.id} = ${row.id} then 'sent' else 'collapsed' end`,
      sentAt: sql`case when ${githubOutbox.id} = ${row.id} then now() else null end`,
      attempts: sql`case when ${githubOutbox.id} = ${row.id} then ${githubOutbox.attempts} + 1 else ${githubOutbox.attempts} end`,
      lastAttemptAt: sql`case when ${githubOutbox.id} = ${row.id} then now() else ${githubOutbox.lastAttemptAt} end`,
    })
    .where(and(sameKey(row), isNull(githubOutbox.result), sql`${githubOutbox.id} <= ${row.id}`));
}

/** A failed attempt: counted, with its error, on the row (what `deployq status` shows). */
export async function markAttempt(db: Db, row: GithubOutboxRow, error: string): Promise<void> {
  await db
    .update(githubOutbox)
    .set({ attempts: sql`${githubOutbox.attempts} + 1`, lastError: error.slice(0, 2000), lastAttemptAt: sql`now()` })
    .where(eq(githubOutbox.id, row.id));
}

/** A permanent answer: this row and the older unsent ones of its key will never be sent. */
export async function markGaveUp(db: Db, row: GithubOutboxRow, error: string): Promise<void> {
  await db
    .update(githubOutbox)
    .set({ result: "gave-up", lastError: error.slice(0, 2000), lastAttemptAt: sql`now()`, attempts: sql`${githubOutbox.attempts} + 1` })
    .where(and(sameKey(row), isNull(githubOutbox.result), sql`${githubOutbox.id} <= ${row.id}`));
}

/**
 * Takes or renews the sender's lease for `ms`: true when this process holds it. Only one
 * process sends at a time (two workers processes on one Postgres would otherwise race on a
 * key). A holder that dies loses it when it expires.
 */
export async function claimSenderLease(db: Db, owner: string, ms: number, takeOverFrom?: string): Promise<boolean> {
  const until = sql`now() + ${`${ms} milliseconds`}::interval`;
  const rows = await db
    .insert(githubSender)
    .values({ id: 1, owner, leaseUntil: until })
    .onConflictDoUpdate({
      target: githubSender.id,
      set: { owner, leaseUntil: until },
      setWhere: sql`${githubSender.owner} = ${owner} or ${githubSender.leaseUntil} < now() or ${githubSender.owner} = ${takeOverFrom ?? owner}`,
    })
    .returning({ owner: githubSender.owner });
  return rows[0]?.owner === owner;
}

/** Who holds the sender's lease now, if anyone. */
export async function senderLeaseHolder(db: Db): Promise<string | undefined> {
  const [row] = await db.select({ owner: githubSender.owner }).from(githubSender).where(sql`${githubSender.leaseUntil} >= now()`);
  return row?.owner;
}

export async function releaseSenderLease(db: Db, owner: string): Promise<void> {
  await db.update(githubSender).set({ leaseUntil: sql`now()` }).where(eq(githubSender.owner, owner));
}

export interface OutboxStatus {
  /** Statuses waiting to be sent (the newest of each key; older ones will be collapsed). */
  backlog: number;
  oldestAgeSeconds: number | null;
  /** The newest failed attempt or permanent refusal, if any. */
  lastError: { at: string; error: string; repository: string; sha: string; context: string; gaveUp: boolean } | undefined;
}

/** What `deployq status` shows of the outbox. */
export async function outboxStatus(db: Db): Promise<OutboxStatus> {
  const [waiting] = await db
    .select({ n: count(), oldest: min(githubOutbox.createdAt) })
    .from(githubOutbox)
    .where(isNull(githubOutbox.result));
  const [failed] = await db
    .select()
    .from(githubOutbox)
    .where(and(sql`${githubOutbox.lastError} is not null`, sql`${githubOutbox.lastAttemptAt} is not null`))
    .orderBy(sql`${githubOutbox.lastAttemptAt} desc`)
    .limit(1);
  const oldest = waiting?.oldest ? new Date(waiting.oldest as unknown as string) : undefined;
  return {
    backlog: Number(waiting?.n ?? 0),
    oldestAgeSeconds: oldest ? Math.max(0, Math.round((Date.now() - oldest.getTime()) / 1000)) : null,
    lastError: failed
      ? { at: new Date(failed.lastAttemptAt!).toISOString(), error: failed.lastError!, repository: failed.repository, sha: failed.sha, context: failed.context, gaveUp: failed.result === "gave-up" }
      : undefined,
  };
}

/**
 * Removes what was dealt with (sent, collapsed, given up) more than `days` ago. Order needs
 * only the unsent rows and the ids to come, so removing old ones changes nothing else.
 */
export async function pruneOutbox(db: Db, days: number): Promise<void> {
  await db.delete(githubOutbox).where(and(sql`${githubOutbox.result} is not null`, sql`${githubOutbox.createdAt} < now() - ${`${days} days`}::interval`));
}

/** Every row, in order (tests and debugging). */
export async function outboxRows(db: Db): Promise<GithubOutboxRow[]> {
  return db.select().from(githubOutbox).orderBy(asc(githubOutbox.id));
}
