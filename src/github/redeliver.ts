import { and, eq, inArray, sql } from "drizzle-orm";
import type { Logger } from "pino";
import type { Settings } from "../config/load.ts";
import type { Db } from "../db/client.ts";
import { deliveries, githubHookCursors, githubRedeliveries } from "../db/schema.ts";
import { errorMessage } from "../errors.ts";
import type { Metrics } from "../metrics/registry.ts";
import { type HookDelivery, type HooksApi, createHooksApi, hookUrl, hooksApiError } from "./hooks.ts";
import { claimLeaseOrTakeOver, leaseOwner, releaseLease } from "./lease.ts";

/**
 * Lost-delivery recovery. GitHub does not retry a delivery that failed (deployq stopped, a
 * proxy answering 502, a timeout): it keeps it in the hook's recent deliveries and
 * redelivers it when asked. So, at start and every `redeliver_interval_s`, one deployq
 * process (a lease per public_url, in the database) looks, for each repository it follows,
 * at the webhooks posting to its public_url, lists their deliveries newer than the last one
 * it looked at (the cursor, per hook; on the first pass the last 24 h), and asks GitHub to
 * redeliver each GUID that deployq has no `deliveries` row for: a delivery that never
 * arrived, or arrived and was refused (503) before anything was recorded. One that deployq
 * recorded is never asked for, whatever GitHub shows (it took it; GitHub may have timed out
 * meanwhile), and a redelivery that arrives twice is a duplicate to the receiver anyway.
 *
 * A redelivery is a new delivery with the same GUID and `redelivery: true`, listed above
 * the cursor once GitHub has sent it: that is when its GUID is looked at again. A GUID is
 * asked for again only when such a newer delivery exists (the previous one is not in
 * flight any more) and deployq still has no row for it, and at most MAX_REQUESTS times.
 *
 * Nothing here runs inside a deploy or blocks one: its own timer, every error logged and
 * the pass given up until the next.
 */

export type RedeliveryResult = "requested" | "failed";

export interface RedelivererDeps {
  db: Db;
  api: HooksApi;
  logger: Logger;
  publicUrl: string;
  /** The repositories deployments follow (owner/name, validated by the configuration). */
  repositories: readonly string[];
  /** 0: only the pass at start. */
  intervalMs: number;
  onRedelivery?: (result: RedeliveryResult) => void;
  /** How far back the first pass for a hook looks (no cursor yet). */
  firstWindowMs?: number;
  /** Aborted by close(); passed to the API client's requests. */
  abort?: AbortController;
}

export interface PassReport {
  /** Whether this process held the lease (else another process does the job). */
  leader: boolean;
  hooks: number;
  /** GUIDs asked to be redelivered. */
  requested: string[];
  failed: number;
}

const DAY_MS = 86_400_000;
/** GitHub redelivers only deliveries of the past 3 days. */
const GITHUB_REDELIVERY_LIMIT_MS = 3 * DAY_MS;
/** Per GUID: a delivery that keeps failing (the receiver still down, the secret wrong) is not asked for forever. */
export const MAX_REQUESTS = 5;

const ok = (d: HookDelivery) => d.statusCode >= 200 && d.statusCode < 300;

export class GithubRedeliverer {
  private readonly owner = leaseOwner();
  private readonly lease: string;
  private readonly abort: AbortController;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<PassReport> | undefined;
  private closing: Promise<void> | undefined;
  /** Set when a renewal finds another process holding the lease: the pass stops. */
  private leaseLost = false;
  /** Repositories already told about (no hook there): said once per process. */
  private readonly toldNoHook = new Set<string>();

  constructor(private readonly deps: RedelivererDeps) {
    this.lease = `redeliver:${deps.publicUrl}`;
    this.abort = deps.abort ?? new AbortController();
  }

  /** The first pass now, then one every intervalMs. */
  start(): void {
    void this.runOnce();
  }

  private schedule(): void {
    if (this.abort.signal.aborted || this.deps.intervalMs <= 0) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.runOnce();
    }, this.deps.intervalMs);
    this.timer.unref();
  }

  /** One pass (or the one running now); never rejects. */
  runOnce(): Promise<PassReport> {
    this.running ??= this.pass()
      .catch((err: unknown): PassReport => {
        if (!this.abort.signal.aborted) this.deps.logger.warn({ err: errorMessage(err) }, "lost-delivery recovery: the pass failed; trying again at the next one");
        return { leader: false, hooks: 0, requested: [], failed: 0 };
      })
      .finally(() => {
        this.running = undefined;
        this.schedule();
      });
    return this.running;
  }

  private async pass(): Promise<PassReport> {
    const report: PassReport = { leader: false, hooks: 0, requested: [], failed: 0 };
    if (!(await this.claim())) {
      this.deps.logger.debug("another deployq process recovers lost deliveries");
      return report;
    }
    report.leader = true;
    this.leaseLost = false;
    const url = hookUrl(this.deps.publicUrl);
    const seen = new Set<string>();
    for (const repository of this.deps.repositories) {
      if (seen.has(repository.toLowerCase())) continue;
      seen.add(repository.toLowerCase());
      if (this.abort.signal.aborted || this.leaseLost) return report;
      let hookIds: number[];
      try {
        hookIds = (await this.deps.api.list(repository)).filter((h) => h.url === url && h.active).map((h) => h.id);
      } catch (err) {
        if (this.abort.signal.aborted) return report;
        this.deps.logger.warn({ repository }, `lost-delivery recovery skips ${repository}: ${hooksApiError(err, repository, `list the webhooks of ${repository}`).message}`);
        continue;
      }
      if (hookIds.length === 0) {
        if (!this.toldNoHook.has(repository)) {
          this.toldNoHook.add(repository);
          this.deps.logger.info({ repository, url }, `no active webhook of ${repository} posts to ${url}: nothing to recover there (\`deployq github hook install\` creates it)`);
        }
        continue;
      }
      for (const hookId of hookIds) {
        if (this.leaseLost) return report;
        report.hooks++;
        await this.recoverHook(repository, hookId, report);
      }
    }
    return report;
  }

  /** Held until the next pass and a minute more (the other processes leave the job to this one while it lives); renewed before each request. */
  private claim(): Promise<boolean> {
    return claimLeaseOrTakeOver(this.deps.db, this.lease, this.owner, this.deps.intervalMs + 60_000);
  }

  private async recoverHook(repository: string, hookId: number, report: PassReport): Promise<void> {
    const { db, api, logger } = this.deps;
    const [cursor] = await db.select().from(githubHookCursors).where(eq(githubHookCursors.hookId, hookId));
    const after = cursor?.lastDeliveryId ?? 0;
    const since = Date.now() - (cursor ? GITHUB_REDELIVERY_LIMIT_MS : (this.deps.firstWindowMs ?? DAY_MS));
    const fresh = (d: HookDelivery) => d.id > after && Date.parse(d.deliveredAt) >= since;
    let listed: HookDelivery[];
    try {
      // Newest first: the pages stop at the first delivery already looked at, or too old.
      listed = (await api.deliveries(repository, hookId, (page) => page.length > 0 && fresh(page.at(-1)!))).filter(fresh);
    } catch (err) {
      if (!this.abort.signal.aborted) logger.warn({ repository, hook: hookId }, `lost-delivery recovery: ${hooksApiError(err, repository, `list the deliveries of webhook ${hookId}`).message}`);
      return;
    }
    if (listed.length === 0) return;
    const byGuid = new Map<string, HookDelivery[]>();
    for (const d of [...listed].sort((a, b) => a.id - b.id)) {
      const guid = d.guid.toLowerCase();
      byGuid.set(guid, [...(byGuid.get(guid) ?? []), d]);
    }
    const guids = [...byGuid.keys()];
    const received = new Set(
      (await db.select({ guid: deliveries.deliveryId }).from(deliveries).where(and(eq(deliveries.hookId, String(hookId)), inArray(deliveries.deliveryId, guids)))).map((r) => r.guid),
    );
    const asked = new Map(
      (await db.select().from(githubRedeliveries).where(and(eq(githubRedeliveries.hookId, hookId), inArray(githubRedeliveries.guid, guids)))).map((r) => [r.guid, r]),
    );
    let failed = false;
    for (const [guid, rows] of byGuid) {
      if (this.abort.signal.aborted) return;
      if (received.has(guid)) continue;
      const newest = rows.at(-1)!;
      const before = asked.get(guid);
      // Asked for already, and GitHub shows nothing newer yet: that redelivery is in flight.
      if (before && newest.id <= before.seenUpTo) continue;
      if (before && before.requests >= MAX_REQUESTS) {
        if (before.requests === MAX_REQUESTS) {
          logger.warn({ repository, hook: hookId, delivery: guid, event: newest.event, status: newest.statusCode }, `GitHub redelivered this delivery ${MAX_REQUESTS} times and deployq still did not take it (is the receiver reachable at its public_url, with the same secret?): deployq asks no more; redeliver it by hand from the webhook's Recent Deliveries`);
          await db.update(githubRedeliveries).set({ requests: MAX_REQUESTS + 1 }).where(and(eq(githubRedeliveries.hookId, hookId), eq(githubRedeliveries.guid, guid)));
        }
        continue;
      }
      if (!(await this.claim())) {
        this.leaseLost = true;
        logger.info({ repository, hook: hookId }, "another deployq process took over the recovery of lost deliveries; this one stops");
        return;
      }
      const about = { repository, hook: hookId, delivery: guid, githubDelivery: newest.id, event: newest.event, status: newest.statusCode, deliveredAt: newest.deliveredAt, attempt: (before?.requests ?? 0) + 1 };
      try {
        await api.redeliver(repository, hookId, newest.id);
      } catch (err) {
        if (this.abort.signal.aborted) return;
        failed = true;
        report.failed++;
        this.deps.onRedelivery?.("failed");
        logger.warn(about, `could not ask GitHub to redeliver a delivery deployq did not receive; trying again at the next pass: ${hooksApiError(err, repository, `redeliver delivery ${newest.id}`).message}`);
        continue;
      }
      // Recorded after GitHub took the request: a crash in between asks once more (a duplicate, which the receiver ignores), never zero times.
      await db
        .insert(githubRedeliveries)
        .values({ hookId, guid, repository, event: newest.event, deliveryId: newest.id, seenUpTo: newest.id, requests: 1 })
        .onConflictDoUpdate({
          target: [githubRedeliveries.hookId, githubRedeliveries.guid],
          set: { deliveryId: newest.id, seenUpTo: newest.id, requests: sql`${githubRedeliveries.requests} + 1`, requestedAt: sql`now()` },
        });
      report.requested.push(guid);
      this.deps.onRedelivery?.("requested");
      logger.info(about, `asked GitHub to redeliver a delivery deployq did not receive (${ok(newest) ? `GitHub shows ${newest.statusCode}, but deployq has no record of it` : `it failed with ${newest.statusCode || newest.status}`})`);
    }
    // Only a complete look moves the cursor: a GUID whose request failed is looked at again next time.
    if (failed) return;
    const newestId = Math.max(...listed.map((d) => d.id));
    await db
      .insert(githubHookCursors)
      .values({ hookId, repository, lastDeliveryId: newestId })
      .onConflictDoUpdate({ target: githubHookCursors.hookId, set: { lastDeliveryId: sql`greatest(${githubHookCursors.lastDeliveryId}, ${newestId})`, repository, updatedAt: sql`now()` } });
  }

  /** Idempotent: stops the timer, aborts the requests in flight, waits for the pass, gives the lease up. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.abort.abort();
      if (this.timer) clearTimeout(this.timer);
      this.timer = undefined;
      await this.running;
      if (this.timer) clearTimeout(this.timer);
      await releaseLease(this.deps.db, this.lease, this.owner).catch(() => {});
    })();
    return this.closing;
  }
}

/**
 * Recovery for the process that runs the workers, when it can: GITHUB_TOKEN (with
 * "Webhooks: read and write"), [server] public_url (to find the hooks) and
 * redeliver_interval_s above 0. undefined, with a log line saying why, otherwise.
 */
export function startRedelivererIfConfigured(deps: { settings: Settings; db: Db; logger: Logger; metrics: Metrics | undefined }): GithubRedeliverer | undefined {
  const { settings, db, metrics } = deps;
  const logger = deps.logger.child({ component: "github-redeliver" });
  const token = settings.secrets.githubToken;
  if (settings.github.redeliverIntervalMs <= 0 || !token) return undefined;
  if (!settings.publicUrl) {
    logger.info("lost-delivery recovery is off: set [server] public_url (the address the webhooks post to) to find the repositories' webhooks");
    return undefined;
  }
  const repositories = [...new Set([...settings.deployments.values()].map((d) => d.repository))];
  if (repositories.length === 0) return undefined;
  const abort = new AbortController();
  const api = createHooksApi({ apiUrl: settings.github.apiUrl, token, timeoutMs: settings.github.timeoutMs, writeIntervalMs: settings.github.writeIntervalMs, logger, signal: abort.signal });
  const redeliverer = new GithubRedeliverer({
    db,
    api,
    logger,
    publicUrl: settings.publicUrl,
    repositories,
    intervalMs: settings.github.redeliverIntervalMs,
    abort,
    onRedelivery: (result) => metrics?.countGithubRedelivery(result),
  });
  redeliverer.start();
  return redeliverer;
}
