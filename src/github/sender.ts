import type { Logger } from "pino";
import type { Db } from "../db/client.ts";
import type { GithubOutboxRow } from "../db/schema.ts";
import { errorMessage } from "../errors.ts";
import type { CommitStatus, DeploymentStatus, GithubClient, SendResult } from "./client.ts";
import { claimLeaseOrTakeOver, heldByDeadProcessHere, leaseOwner, releaseLease } from "./lease.ts";
import {
  type DeploymentPayload,
  claimSenderLease,
  githubDeploymentId,
  markAttempt,
  markDeploymentCreated,
  markGaveUp,
  markSent,
  newestUnsent,
  pruneOutbox,
  releaseSenderLease,
  senderLeaseHolder,
} from "./outbox.ts";

export type SendLabel = "success" | "transient" | "rate_limited" | "permanent";

export interface GithubSenderDeps {
  db: Db;
  /** GitHub's API: this sender sends the commit statuses and deployments. */
  client?: GithubClient;
  /**
   * Instead of GitHub's kinds: one lane of the outbox of its own (a notifier's), with its
   * handlers, the one key it sends, and the named lease (src/github/lease.ts) that makes
   * it the only process sending that key.
   */
  lane?: { name: string; key: string; kinds: Record<string, KindHandler>; /** What the logs say it sends to ("notifier DEPLOYQ_NOTIFY_OPS"). */ to: string };
  logger: Logger;
  /** Counts each send by its result (deployq_github_sends_total). */
  onSend?: (result: SendLabel) => void;
  /** How often the outbox is looked at when nothing wakes the sender (a row written by another process). */
  pollIntervalMs?: number;
}

/** Longer than one request may take (timeout_ms, and the retry plugin's one quick retry): renewed before each send. */
const LEASE_MS = 60_000;
const MAX_BACKOFF_MS = 30_000;
const BATCH = 50;
/** Rows dealt with are kept this long (for `deployq status` and whoever debugs a status), then removed, once an hour. */
const KEEP_DAYS = 7;
const PRUNE_EVERY_MS = 3600_000;

/** How the sender makes one kind of row into a request, and records the answer. */
export interface KindHandler {
  /** What the logs call it. */
  what: string;
  send(row: GithubOutboxRow, signal: AbortSignal): Promise<SendResult & { id?: number }>;
  /** Records a success (default: markSent). */
  sent?(row: GithubOutboxRow, result: { id?: number }): Promise<void>;
}

/** The kinds of rows GitHub takes: commit statuses, deployments and their statuses. */
function githubKinds(db: Db, client: GithubClient): Record<string, KindHandler> {
  const payload = (row: GithubOutboxRow) => (row.payload ?? {}) as unknown as DeploymentPayload;
  return {
    status: { what: "commit status", send: (row, signal) => client.createStatus({ ...row, state: row.state as CommitStatus["state"] }, signal) },
    deployment: {
      what: "GitHub deployment",
      send: (row, signal) =>
        client.createDeployment(
          {
            repository: row.repository,
            sha: row.sha,
            environment: payload(row).environment,
            productionEnvironment: payload(row).productionEnvironment,
            description: row.description,
            marker: payload(row).marker,
          },
          signal,
        ),
      // Its id, kept with the sent mark: statuses go to it, and a restart does not create it again.
      sent: (row, result) => markDeploymentCreated(db, row, result.id!),
    },
    deployment_status: {
      what: "deployment status",
      send: async (row, signal) => {
        const deploymentId = await githubDeploymentId(db, payload(row).deploymentRow);
        // Its creation is older in the same key, so it was sent first: without an id, GitHub refused it.
        if (deploymentId === undefined) return { ok: false, kind: "permanent", status: 0, message: "its GitHub deployment was never created (GitHub refused the creation: see the error logged for it)" };
        const status: DeploymentStatus = {
          repository: row.repository,
          deploymentId,
          state: row.state as DeploymentStatus["state"],
          description: row.description,
          logUrl: row.targetUrl,
          environmentUrl: payload(row).environmentUrl ?? null,
        };
        return client.createDeploymentStatus(status, signal);
      },
    },
  };
}

/**
 * Delivers the outbox to GitHub, one row at a time, in the process that runs the
 * deployment workers. It never runs inside a deploy: deploys only write rows, and wake()
 * is a hint. A transient failure (5xx, timeout, network) or a rate limit stops the whole
 * pass until the backoff or the reset is over: it is the API or the token that is
 * unavailable, not one status. Everything it has to remember is in the database, so a
 * restart resumes where it stopped. close() aborts the request in flight (its row stays
 * unsent), clears its timer and gives up its lease.
 */
export class GithubSender {
  private readonly owner = leaseOwner();
  private readonly abort = new AbortController();
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private again = false;
  private notBefore = 0;
  private failures = 0;
  private prunedAt = 0;
  private closing: Promise<void> | undefined;

  private readonly kinds: Record<string, KindHandler>;
  private readonly to: string;

  constructor(private readonly deps: GithubSenderDeps) {
    this.kinds = deps.lane?.kinds ?? (deps.client ? githubKinds(deps.db, deps.client) : {});
    this.to = deps.lane?.to ?? "GitHub";
  }

  start(): void {
    this.wake();
  }

  /** Something was written to the outbox: send it (now, or once a backoff or a rate limit is over). */
  wake(): void {
    if (this.abort.signal.aborted) return;
    if (this.running) {
      this.again = true;
      return;
    }
    const wait = this.notBefore - Date.now();
    if (wait > 0) return this.schedule(wait);
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.running = this.pass()
      .catch((err: unknown) => {
        // The database, most likely: look again after a backoff.
        this.backoff();
        this.deps.logger.warn({ err: errorMessage(err) }, `could not read or update the outbox (${this.to}); trying again`);
      })
      .finally(() => {
        this.running = undefined;
        if (this.abort.signal.aborted) return;
        if (this.again) {
          this.again = false;
          this.wake();
        } else {
          this.schedule(Math.max(this.notBefore - Date.now(), this.deps.pollIntervalMs ?? 1000));
        }
      });
  }

  private schedule(ms: number): void {
    if (this.abort.signal.aborted) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.wake();
    }, ms);
    this.timer.unref();
  }

  private backoff(retryAt?: number): void {
    this.failures++;
    const base = Math.min(1000 * 2 ** (this.failures - 1), MAX_BACKOFF_MS);
    const delay = retryAt !== undefined ? Math.max(0, retryAt - Date.now()) : Math.round(base / 2 + Math.random() * (base / 2));
    this.notBefore = Date.now() + delay;
  }

  private async pass(): Promise<void> {
    const { db, logger } = this.deps;
    if (Date.now() - this.prunedAt > PRUNE_EVERY_MS) {
      this.prunedAt = Date.now();
      await pruneOutbox(db, KEEP_DAYS);
    }
    for (;;) {
      if (this.abort.signal.aborted) return;
      const rows = await newestUnsent(db, BATCH, Object.keys(this.kinds), this.deps.lane?.key);
      if (rows.length === 0) return;
      for (const row of rows) {
        if (this.abort.signal.aborted) return;
        // Renewed before each send: another process that held it may still be sending.
        if (!(await this.claim())) {
          logger.debug(`another deployq process sends to ${this.to}`);
          this.notBefore = Date.now() + 5000;
          return;
        }
        const handler = this.kinds[row.kind]!;
        const result = await handler.send(row, this.abort.signal);
        if (this.abort.signal.aborted && !result.ok) return;
        if (!(await this.record(row, result, handler))) return;
      }
    }
  }

  private async claim(): Promise<boolean> {
    const { db, lane } = this.deps;
    if (lane) return claimLeaseOrTakeOver(db, lane.name, this.owner, LEASE_MS);
    if (await claimSenderLease(db, this.owner, LEASE_MS)) return true;
    const holder = await senderLeaseHolder(db);
    return heldByDeadProcessHere(holder) && (await claimSenderLease(db, this.owner, LEASE_MS, holder));
  }

  /** Records one send's result; false when the pass must stop (the API is unavailable for now). */
  private async record(row: GithubOutboxRow, result: SendResult & { id?: number }, handler: KindHandler): Promise<boolean> {
    const { db, logger } = this.deps;
    const about = { kind: row.kind, repository: row.repository, sha: row.sha, context: row.context, state: row.state };
    const { what } = handler;
    if (result.ok) {
      await (handler.sent ? handler.sent(row, result) : markSent(db, row));
      this.failures = 0;
      this.deps.onSend?.("success");
      return true;
    }
    if (result.kind === "permanent") {
      await markGaveUp(db, row, result.message);
      this.deps.onSend?.("permanent");
      logger.error({ ...about, status: result.status }, `${this.to} will not take this ${what}; deployq gives up on it: ${result.message}`);
      return true;
    }
    await markAttempt(db, row, result.message);
    if (result.kind === "rate-limited") {
      this.backoff(result.retryAt);
      this.deps.onSend?.("rate_limited");
      logger.warn({ ...about, status: result.status, retryAt: new Date(result.retryAt).toISOString() }, `${this.to}: rate limited; its outbox waits until it resets (a ${what}: ${result.message})`);
    } else {
      this.backoff();
      this.deps.onSend?.("transient");
      logger.warn({ ...about, status: result.status, retryInMs: this.notBefore - Date.now() }, `could not send a ${what} to ${this.to}; retrying: ${result.message}`);
    }
    return false;
  }

  /** Idempotent: stops sending, aborts the request in flight, and gives the lease up. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.abort.abort();
      if (this.timer) clearTimeout(this.timer);
      this.timer = undefined;
      await this.running;
      const { db, lane } = this.deps;
      await (lane ? releaseLease(db, lane.name, this.owner) : releaseSenderLease(db, this.owner)).catch(() => {});
    })();
    return this.closing;
  }
}
