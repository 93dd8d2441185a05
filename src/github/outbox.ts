import { and, asc, count, eq, isNull, min, ne, sql } from "drizzle-orm";
import type { Db } from "../db/client.ts";
import { type GithubOutboxRow, githubDeployments, githubOutbox, githubSender } from "../db/schema.ts";
import { type NotifyWrite, writeNotifications } from "../notify/notify.ts";
import { RELEASED } from "./lease.ts";
import type { StatusRow } from "./statuses.ts";

/**
 * The outbox's order, and why collapsing is safe.
 *
 * Every row has a key: a commit status's is (repository, sha, context), and a context is
 * one deployment; a GitHub Deployment's rows (its creation, then its statuses) share the
 * key deployment:<github_deployments id>, and that deployment row too belongs to one
 * deployq deployment. Every row of a key is written either by the router before it hands
 * the entry over (the "queued" states) or by that deployment's worker while it holds the
 * deployment's lock. Those writers are serialised, each one's row committed before the
 * next one can start (the entry file appears in the deployment's queue only after the
 * router's row is committed), so within a key the bigserial id is the order in which the
 * states happened. (A success also writes `inactive` into the key of the environment's
 * previous deployment, in the same transaction, under the same lock.)
 *
 * Most rows are collapsible: a newer state replaces an older one nobody needs any more.
 * The sender only ever sends, per key, the row with the greatest id among the unsent
 * collapsible rows that come before the key's first unsent non-collapsible row (a
 * "barrier": a deployment's creation), or that barrier itself when there are none. When a
 * collapsible row's send succeeds it marks that row `sent` and every older unsent row of
 * the key `collapsed`, in one statement; a barrier is marked `sent` alone. Any row written
 * meanwhile has a greater id and stays unsent, so it is sent next: GitHub never receives
 * an older state after a newer one, never a deployment status before the deployment
 * exists, and intermediate states (a pending followed by its success) are not sent at
 * all. A crash between GitHub's answer and that statement sends the same row once more,
 * after restart, and nothing older: the one duplicate possible is of the newest state. A
 * creation is not repeated even then: the sender first looks for the deployment it may
 * have created already (sender.ts).
 *
 * Another kind of request adds a `kind`, its payload and a handler in the sender; its key
 * says what it must stay in order with. Notifications ([[notify]], src/notify/notify.ts)
 * are one: kind "notify", one key per notifier, never collapsed (each is sent, in order),
 * and a sender of their own per notifier, so that a notifier that is down holds up neither
 * GitHub nor the other notifiers.
 */
export type Queryable = Pick<Db, "insert">;

/** A commit status's key: its states are ordered (and collapsed) per commit and context. */
export function statusKey(r: Pick<StatusRow, "repository" | "sha" | "context">): string {
  return `status:${r.repository}@${r.sha}:${r.context}`;
}

export async function enqueueStatuses(db: Queryable, rows: readonly StatusRow[]): Promise<void> {
  if (rows.length === 0) return;
  await db.insert(githubOutbox).values(rows.map((r) => ({ ...r, kind: "status", key: statusKey(r) })));
}

/** The states of a GitHub deployment status (POST …/deployments/{id}/statuses). */
export type DeploymentState = "queued" | "in_progress" | "success" | "failure" | "error" | "inactive";

/** One GitHub Deployment, as deployq knows it before GitHub does: one per deployment, entry and commit. */
export interface DeploymentTarget {
  deployment: string;
  entry: string;
  sha: string;
  repository: string;
  /** deployq/<deployment>, as for the commit statuses (what `deployq status` names). */
  context: string;
  environment: string;
  productionEnvironment: boolean | undefined;
}

/** A deployment status; the deployment is created first (once) if it was not yet. */
export interface DeploymentStatusWrite {
  kind: "deployment_status";
  target: DeploymentTarget;
  state: DeploymentState;
  description: string;
  logUrl: string | null;
  environmentUrl: string | null;
  deployId: number | null;
  /** A success: the environment's previous live deployment is marked `inactive`, with this description. */
  replaces?: { description: string };
}

/** What a deploy step tells GitHub (and the notifiers): written to the outbox in the transaction of the deploy row it reports. */
export type GithubWrite = { kind: "status"; status: StatusRow } | DeploymentStatusWrite | NotifyWrite;

/** The payload of a deployment's rows. */
export interface DeploymentPayload {
  /** github_deployments.id */
  deploymentRow: number;
  environment: string;
  productionEnvironment?: boolean;
  environmentUrl?: string;
  /** Put into the GitHub deployment's own payload, to find it again (a creation whose answer was lost). */
  marker: string;
}

/** The marker a deployment deployq created carries in its payload (`deployq`). */
export const deploymentMarker = (t: Pick<DeploymentTarget, "deployment" | "entry" | "sha">) => `${t.deployment}/${t.entry}/${t.sha}`;

/**
 * Writes `writes` to the outbox. Give it a transaction when there is more than one row to
 * write (the deploy queries do): a deployment's row, its creation and its statuses belong
 * together.
 */
export async function enqueueGithubWrites(db: Db, writes: readonly GithubWrite[]): Promise<void> {
  await enqueueStatuses(
    db,
    writes.flatMap((w) => (w.kind === "status" ? [w.status] : [])),
  );
  for (const w of writes) if (w.kind === "deployment_status") await writeDeploymentStatus(db, w);
  for (const w of writes) if (w.kind === "notify") await writeNotifications(db, w);
}

async function writeDeploymentStatus(db: Db, w: DeploymentStatusWrite): Promise<void> {
  const t = w.target;
  const { id, created } = await ensureDeployment(db, t, w.deployId);
  const row = (state: DeploymentState | "create", description: string, payload: Partial<DeploymentPayload>, targetUrl: string | null, kind = "deployment_status") => ({
    kind,
    key: `deployment:${id}`,
    collapsible: kind !== "deployment",
    repository: t.repository,
    sha: t.sha,
    context: t.context,
    state,
    description,
    targetUrl,
    deployment: t.deployment,
    deployId: w.deployId,
    payload: { deploymentRow: id, environment: t.environment, marker: deploymentMarker(t), ...payload } as Record<string, unknown>,
  });
  if (created) {
    await db.insert(githubOutbox).values(row("create", `Deploy of ${t.sha.slice(0, 7)} to ${t.deployment} by deployq`, t.productionEnvironment === undefined ? {} : { productionEnvironment: t.productionEnvironment }, null, "deployment"));
  }
  await db.insert(githubOutbox).values(row(w.state, w.description, w.environmentUrl ? { environmentUrl: w.environmentUrl } : {}, w.logUrl));
  if (!w.replaces) return;
  // The environment's live deployment until now (GitHub's auto_inactive skips production environments).
  const previous = await db
    .select()
    .from(githubDeployments)
    .where(and(eq(githubDeployments.repository, t.repository), eq(githubDeployments.environment, t.environment), eq(githubDeployments.live, true), ne(githubDeployments.id, id)));
  for (const p of previous) {
    await db.insert(githubOutbox).values({
      kind: "deployment_status",
      key: `deployment:${p.id}`,
      repository: p.repository,
      sha: p.sha,
      context: t.context,
      state: "inactive",
      description: w.replaces.description,
      targetUrl: null,
      deployment: p.deployment,
      deployId: w.deployId,
      payload: { deploymentRow: p.id, environment: p.environment, marker: deploymentMarker(p) },
    });
  }
  await db.update(githubDeployments).set({ live: sql`${githubDeployments.id} = ${id}` }).where(and(eq(githubDeployments.repository, t.repository), eq(githubDeployments.environment, t.environment), sql`(${githubDeployments.live} or ${githubDeployments.id} = ${id})`));
}

/** The deployment's row, made (with its creation in the outbox) if it is new; a deployment is created once. */
async function ensureDeployment(db: Db, t: DeploymentTarget, deployId: number | null): Promise<{ id: number; created: boolean }> {
  const [inserted] = await db
    .insert(githubDeployments)
    .values({ deployment: t.deployment, entry: t.entry, sha: t.sha, repository: t.repository, environment: t.environment, deployId })
    .onConflictDoNothing({ target: [githubDeployments.deployment, githubDeployments.entry, githubDeployments.sha] })
    .returning({ id: githubDeployments.id });
  const id = inserted?.id ?? (await db.select({ id: githubDeployments.id }).from(githubDeployments).where(and(eq(githubDeployments.deployment, t.deployment), eq(githubDeployments.entry, t.entry), eq(githubDeployments.sha, t.sha))))[0]!.id;
  return { id, created: inserted !== undefined };
}

/** The GitHub id of a deployment (undefined until its creation was answered). */
export async function githubDeploymentId(db: Db, deploymentRow: number): Promise<number | undefined> {
  const [row] = await db.select({ githubId: githubDeployments.githubId }).from(githubDeployments).where(eq(githubDeployments.id, deploymentRow));
  return row?.githubId ?? undefined;
}

/** GitHub created the deployment: its id is kept, and its creation row is sent, in one transaction. */
export async function markDeploymentCreated(db: Db, row: GithubOutboxRow, githubId: number): Promise<void> {
  const payload = row.payload as unknown as DeploymentPayload;
  await db.transaction(async (tx) => {
    await tx.update(githubDeployments).set({ githubId }).where(eq(githubDeployments.id, payload.deploymentRow));
    await markSent(tx as unknown as Db, row);
  });
}

/**
 * The next row to send of each key, oldest first, at most `limit`: of the unsent rows
 * before the key's first unsent barrier (a row that is not collapsible), the newest; if
 * there are none, the barrier.
 */
export async function newestUnsent(db: Db, limit: number, kinds?: readonly string[], key?: string): Promise<GithubOutboxRow[]> {
  // Kinds this deployq cannot send (written by a newer one) are left alone, for that one.
  const ofKinds = kinds ? sql`and kind in (${sql.join(kinds.map((k) => sql`${k}`), sql`, `)})` : sql``;
  const ofKey = key !== undefined ? sql`and key = ${key}` : sql``;
  const rows = await db.execute<Record<string, unknown>>(sql`
    select * from (
      select distinct on (key) *
      from github_outbox o
      where result is null ${ofKinds} ${ofKey}
        and not exists (select 1 from github_outbox b where b.key = o.key and b.result is null and not b.collapsible and b.id < o.id)
      order by key, collapsible desc, id desc
    ) newest order by id limit ${limit}`);
  const list = (Array.isArray(rows) ? rows : (rows as { rows: Record<string, unknown>[] }).rows) as Record<string, unknown>[];
  return list.map(fromSql);
}

function fromSql(r: Record<string, unknown>): GithubOutboxRow {
  const date = (v: unknown) => (v == null ? null : v instanceof Date ? v : new Date(String(v)));
  return {
    id: Number(r.id),
    createdAt: date(r.created_at)!,
    kind: String(r.kind),
    key: String(r.key),
    collapsible: r.collapsible === true || r.collapsible === "t",
    payload: r.payload == null ? null : ((typeof r.payload === "string" ? JSON.parse(r.payload) : r.payload) as Record<string, unknown>),
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

const sameKey = (row: Pick<GithubOutboxRow, "key">) => eq(githubOutbox.key, row.key);

/** GitHub took `row`: it is sent, and (a collapsible row) every older unsent state of its key is collapsed into it. */
export async function markSent(db: Db, row: GithubOutboxRow): Promise<void> {
  await db
    .update(githubOutbox)
    .set({
      result: sql`case when ${githubOutbox.id} = ${row.id} then 'sent' else 'collapsed' end`,
      sentAt: sql`case when ${githubOutbox.id} = ${row.id} then now() else null end`,
      attempts: sql`case when ${githubOutbox.id} = ${row.id} then ${githubOutbox.attempts} + 1 else ${githubOutbox.attempts} end`,
      lastAttemptAt: sql`case when ${githubOutbox.id} = ${row.id} then now() else ${githubOutbox.lastAttemptAt} end`,
    })
    .where(and(sameKey(row), isNull(githubOutbox.result), row.collapsible ? sql`${githubOutbox.id} <= ${row.id}` : eq(githubOutbox.id, row.id)));
}

/** A failed attempt: counted, with its error, on the row (what `deployq status` shows). */
export async function markAttempt(db: Db, row: GithubOutboxRow, error: string): Promise<void> {
  await db
    .update(githubOutbox)
    .set({ attempts: sql`${githubOutbox.attempts} + 1`, lastError: error.slice(0, 2000), lastAttemptAt: sql`now()` })
    .where(eq(githubOutbox.id, row.id));
}

/**
 * A permanent answer: this row and the older unsent ones of its key will never be sent (a
 * creation refused: nor anything of its key, which has no deployment to go to).
 */
export async function markGaveUp(db: Db, row: GithubOutboxRow, error: string): Promise<void> {
  await db
    .update(githubOutbox)
    .set({ result: "gave-up", lastError: error.slice(0, 2000), lastAttemptAt: sql`now()`, attempts: sql`${githubOutbox.attempts} + 1` })
    .where(and(sameKey(row), isNull(githubOutbox.result), row.collapsible ? sql`${githubOutbox.id} <= ${row.id}` : undefined));
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
  await db.update(githubSender).set({ leaseUntil: RELEASED }).where(eq(githubSender.owner, owner));
}

export interface OutboxStatus {
  /** Rows waiting to be sent, of every kind (the older states of a key may be collapsed, not sent). */
  backlog: number;
  oldestAgeSeconds: number | null;
  /** The newest failed attempt or permanent refusal, if any; `kind`: status, deployment or deployment_status. */
  lastError: { at: string; error: string; repository: string; sha: string; context: string; gaveUp: boolean; kind?: string; key?: string } | undefined;
}

/** What `deployq status` shows of the outbox: GitHub's rows, or (`notifications`) the notifiers'. */
export async function outboxStatus(db: Db, part: "github" | "notifications" = "github"): Promise<OutboxStatus> {
  const ofPart = part === "notifications" ? eq(githubOutbox.kind, "notify") : ne(githubOutbox.kind, "notify");
  const [waiting] = await db
    .select({ n: count(), oldest: min(githubOutbox.createdAt) })
    .from(githubOutbox)
    .where(and(isNull(githubOutbox.result), ofPart));
  const [failed] = await db
    .select()
    .from(githubOutbox)
    .where(and(sql`${githubOutbox.lastError} is not null`, sql`${githubOutbox.lastAttemptAt} is not null`, ofPart))
    .orderBy(sql`${githubOutbox.lastAttemptAt} desc`)
    .limit(1);
  const oldest = waiting?.oldest ? new Date(waiting.oldest as unknown as string) : undefined;
  return {
    backlog: Number(waiting?.n ?? 0),
    oldestAgeSeconds: oldest ? Math.max(0, Math.round((Date.now() - oldest.getTime()) / 1000)) : null,
    lastError: failed
      ? { at: new Date(failed.lastAttemptAt!).toISOString(), error: failed.lastError!, repository: failed.repository, sha: failed.sha, context: failed.context, gaveUp: failed.result === "gave-up", kind: failed.kind, key: failed.key }
      : undefined,
  };
}

/**
 * Removes what was dealt with (sent, collapsed, given up) more than `days` ago. Order needs
 * only the unsent rows and the ids to come, so removing old ones changes nothing else.
 */
export async function pruneOutbox(db: Db, days: number): Promise<void> {
  await db.delete(githubOutbox).where(and(sql`${githubOutbox.result} is not null`, sql`${githubOutbox.createdAt} < now() - ${`${days} days`}::interval`));
  // A deployment nothing will be sent to any more: not its environment's live one (the next
  // success marks that inactive), and with no row waiting. An entry requeued after that long
  // is a new deploy, and gets a new GitHub deployment.
  await db
    .delete(githubDeployments)
    .where(
      and(
        eq(githubDeployments.live, false),
        sql`${githubDeployments.createdAt} < now() - ${`${days} days`}::interval`,
        sql`not exists (select 1 from github_outbox o where o.key = 'deployment:' || ${githubDeployments.id} and o.result is null)`,
      ),
    );
}

/** Every row, in order (tests and debugging). */
export async function outboxRows(db: Db): Promise<GithubOutboxRow[]> {
  return db.select().from(githubOutbox).orderBy(asc(githubOutbox.id));
}
