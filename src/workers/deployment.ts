import { createWriteStream } from "node:fs";
import { mkdir, readFile } from "node:fs/promises";
import { hostname } from "node:os";
import path from "node:path";
import { Writable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import type { Logger } from "pino";
import { type Deployment, isFleet } from "../config/load.ts";
import type { Db } from "../db/client.ts";
import { finishDeploy, finishedTurns, markInterrupted, newerFencingToken, nextFencingToken, recordUnrun, setDeployLog, startDeploy } from "../db/queries/deploys.ts";
import { ConfigError, DeployqError, TransientError, errorMessage } from "../errors.ts";
import { ExecError } from "../exec/exec-error.ts";
import { killLeftoverCommands } from "../exec/run-command.ts";
import { LockBusyError, type LockService, LockUnavailableError, NGINX_LOCK, deploymentLockName, usingWhenFree } from "../lock/lock.ts";
import { type QueueEntry, parseEntry, summarizePayload } from "../queue/entry.ts";
import { SETTLE_MS, mayBeUnfinished, readEntryFile } from "../queue/read.ts";
import type { QueueLayout } from "../queue/layout.ts";
import { Unmovable, deadLetterEntry } from "../queue/dead-letter.ts";
import { parseEntryName } from "../queue/entry-name.ts";
import { removeEntry, rewriteInto } from "../queue/move.ts";
import { scanQueue } from "../queue/scan.ts";
import { QueueWorker } from "../queue/watch.ts";
import { isProcessAlive } from "../pid-lock.ts";
import { currentRelease, deploymentPaths, readReleaseMeta, removeIncomplete } from "../steps/release.ts";
import { type DeployRequest, type HostSteps, inPlaceStateFile, performDeploy, resumePm2Apps } from "./deploy.ts";
import { pruneDeploys } from "./prune-deploys.ts";
import { StepRecorder } from "./step-recorder.ts";
import { readPause, removePause } from "../queue/pause.ts";
import { readCancel, removeCancel, removeRunning, writeRunning } from "./cancel.ts";
import { type Events, noEvents } from "../events/bus.ts";
import type { DeployOutcomeName, StepKind } from "../events/types.ts";
import type { GithubClient } from "../github/client.ts";
import { CHECK_EVENTS, checkEventSha, judgeChecks, nextChecksPoll } from "../github/checks.ts";
import { type GithubWrite, enqueueGithubWrites } from "../github/outbox.ts";
import type { GithubReports } from "../github/reports.ts";
import { isCommitSha } from "../github/statuses.ts";
import type { DeploymentNotifier, Happening } from "../notify/notify.ts";
import { type FleetReport, hostFailed, hostSucceeded, readRollout, updateRolloutHost } from "../fleet/rollouts.ts";
import type { StatusRow } from "../github/statuses.ts";
import { RolloutStopped, describeStop, stopsHost, whenRolloutLets } from "../fleet/rolling.ts";
import type { Rollout } from "../db/schema.ts";

export interface DeploymentWorkerDeps {
  deployment: Deployment;
  dataDir: string;
  layout: QueueLayout;
  db: Db;
  locks: LockService;
  /** pm2, nginx and certbot settings of this host (the nginx lock comes from `locks`). */
  host: Omit<HostSteps, "withNginxLock">;
  logger: Logger;
  rescanIntervalMs: number;
  shutdownGraceMs: number;
  watch: boolean;
  /** Where deploys, steps and their outcomes are told (the daemon's; none by default). */
  events?: Events;
  /** What to tell GitHub with the deploy rows (GITHUB_TOKEN set): commit statuses, deployments; none by default. */
  statuses?: GithubReports;
  /** Where a deployment with require_checks reads its pushes' checks (GITHUB_TOKEN set: required then). */
  checks?: Pick<GithubClient, "readChecks">;
  /** [[notify]]: what to tell the notifiers that listen to this deployment, with the deploy rows; none by default. */
  notify?: DeploymentNotifier;
  /** This host's name (host_name): in the deploy rows, and among a fleet deployment's hosts. */
  hostName?: string;
  /** A fleet deployment (hosts): the lock service whose names every host shares, for the rollout's slots. */
  fleetLocks?: LockService;
}

/** A payload's commit, if it is one (an entry that could not be deployed may carry anything). */
const commitOrNothing = (sha: string | undefined) => (isCommitSha(sha) ? sha : undefined);

/** The deployment lock was lost mid-deploy (expired while paused, or a newer fencing token exists). */
export class LockLostError extends DeployqError {
  constructor(message: string) {
    super("LOCK_LOST", message);
    this.name = "LockLostError";
  }
}

/** A deploy row's process still runs (this process has only just started: its rows are not ours). */
const pidAlive = (pid: number) => pid !== process.pid && isProcessAlive(pid);

/** Where a deploy's log lives: <data_dir>/logs/<deployment>/<deploy id>.log */
export function deployLogPath(dataDir: string, deployment: string, id: number): string {
  return path.join(dataDir, "logs", deployment, `${id}.log`);
}

/** What an entry asks for; undefined with a reason when it cannot be deployed at all. */
export function toRequest(name: string, entry: QueueEntry): DeployRequest | string {
  const payload = (typeof entry.payload === "object" && entry.payload !== null ? entry.payload : {}) as Record<string, unknown>;
  switch (entry.event) {
    case "push": {
      const { ref, after } = summarizePayload(entry.payload);
      if (!after) return "the push has no commit sha (payload.after)";
      return { kind: "push", entry: name, ref, sha: after };
    }
    case "deploy":
      if (typeof payload.ref !== "string" || payload.ref === "") return "a deploy entry needs payload.ref (a branch or a sha)";
      if (payload.force !== undefined && typeof payload.force !== "boolean") return "payload.force must be true or false";
      return { kind: "deploy", entry: name, ref: payload.ref, force: payload.force === true };
    case "rollback":
      if (payload.to !== undefined && typeof payload.to !== "string") return "payload.to must be a release name";
      return { kind: "rollback", entry: name, to: payload.to };
    default:
      return `"${entry.event}" entries cannot be deployed`;
  }
}

/**
 * One worker per deployment: entries are handled one at a time, under the lock
 * `<lock_prefix>:deployment:<name>`. The newest entry wins: older ones still waiting are
 * recorded as superseded and removed, and a push deploys its branch's head as it is when
 * taken (never an older commit: see fetchTarget in deploy.ts). A transient failure is retried with backoff up to
 * max_attempts; a permanent one, or the last attempt, moves the entry to
 * dead-letter/<name>/ with its attempts and error. An entry leaves its queue only once
 * its outcome is recorded, so a crash at any point redoes it.
 */
export class DeploymentWorker {
  readonly name: string;
  private readonly queue: QueueWorker;
  private readonly unmovable: Unmovable;
  private readonly abort = new AbortController();
  private retryTimer: NodeJS.Timeout | undefined;
  private retryAt = Infinity;
  private closing: Promise<void> | undefined;
  private readonly deps: DeploymentWorkerDeps;
  /** Per process: several workers processes on one host share the data directory. */
  /** The deployment's lock: this host's own for a fleet deployment (see deploymentLockName). */
  private get lockName(): string {
    return deploymentLockName(this.name, isFleet(this.deps.deployment) ? this.hostName : undefined);
  }

  /** This host, as the deploy rows and the fleet's rollouts name it. */
  private get hostName(): string {
    return this.deps.hostName ?? hostname();
  }

  private get pidFile(): string {
    return path.join(this.deps.dataDir, "run", `${this.name}.${process.pid}.command.pid`);
  }

  private get events(): Events {
    return this.deps.events ?? noEvents;
  }

  /** The step the running deploy is in (for status and logs). */
  current: { entry: string; step: string } | undefined;

  constructor(deps: DeploymentWorkerDeps) {
    if (deps.deployment.require_checks.length > 0 && !deps.checks) {
      throw new ConfigError(`deployment ${deps.deployment.name} has require_checks: its worker needs a GitHub client (set GITHUB_TOKEN)`);
    }
    this.deps = deps;
    this.name = deps.deployment.name;
    this.unmovable = new Unmovable(deps.logger, this.name);
    this.queue = new QueueWorker({
      name: this.name,
      dir: deps.layout.deployment(this.name),
      handle: (names) => this.handle(names[0]!),
      skip: () => this.paused(),
      rescanIntervalMs: deps.rescanIntervalMs,
      watch: deps.watch,
      logger: deps.logger,
    });
  }

  get healthy(): boolean {
    return this.queue.healthy;
  }

  kick(): Promise<void> {
    return this.queue.kick();
  }

  async start(): Promise<void> {
    await this.recover();
    await this.queue.start();
  }

  /** A deploy that was running when a process died: record it, and clear what it left half-made. */
  private async recover(): Promise<void> {
    const { db, deployment, locks, logger } = this.deps;
    await mkdir(path.dirname(this.pidFile), { recursive: true });
    await locks.using(this.lockName, async () => {
      const { killed, alive } = await killLeftoverCommands(path.dirname(this.pidFile), this.name);
      if (killed.length > 0) logger.warn({ deployment: this.name, pids: killed }, "killed a command left running by a deployq process that died");
      if (alive.length > 0) {
        logger.error({ deployment: this.name, pids: alive }, "processes of that command survive SIGKILL (uninterruptible sleep, e.g. a hung mount): check them with ps");
      }
      const interrupted = await markInterrupted(db, this.name, this.hostName, pidAlive);
      const removed = deployment.strategy === "releases" ? await removeIncomplete(deploymentPaths(deployment.path)) : [];
      if (interrupted.length > 0 || removed.length > 0) {
        logger.warn({ deployment: this.name, interrupted, removed }, "cleaned up after a deploy that was interrupted; its entry is redone");
      }
      await this.resumeApps();
    });
  }

  /** pm2 apps of the deployed release that pm2 no longer runs (after a reboot) are started again; a failure is logged, not fatal. */
  private async resumeApps(): Promise<void> {
    const { deployment, dataDir, host, logger } = this.deps;
    if (!deployment.restart || !("pm2" in deployment.restart)) return;
    let output = "";
    const log = new Writable({
      write(chunk: Buffer, _encoding, done) {
        output = (output + chunk.toString()).slice(-8192);
        done();
      },
    });
    try {
      const outcome = await resumePm2Apps(deployment, dataDir, host.pm2Home, { log, signal: this.abort.signal, timeoutMs: deployment.command_timeout_s * 1000, pidFile: this.pidFile });
      if (outcome === "started") logger.warn({ deployment: this.name, pm2Home: host.pm2Home }, "pm2 ran none of this deployment's apps: started them from the current release");
    } catch (err) {
      logger.error({ deployment: this.name, err, output }, "could not start this deployment's pm2 apps from the current release; the next deploy will");
    }
  }

  /**
   * One turn of the queue, entirely under the deployment's lock (so that two workers
   * processes never act on the same entries): read what is queued, supersede all but the
   * newest, deploy the newest. Lock trouble leaves everything queued and tries again later.
   */
  private async handle(name: string): Promise<void> {
    const dir = this.deps.layout.deployment(this.name);
    if (await this.paused()) return;
    await this.waitForBurstToSettle(dir);
    try {
      if (this.draining) return;
      await this.deps.locks.using(this.lockName, async (lockSignal) => {
        if (this.abort.signal.aborted || this.draining) return;
        // The queue as it is now, under the lock: another process may have moved on.
        const names = await scanQueue(dir);
        if (!names.includes(name)) return;
        const token = await nextFencingToken(this.deps.db);
        const entries: Array<{ name: string; entry: QueueEntry }> = [];
        for (const n of names) {
          const read = await readEntryFile(path.join(dir, n));
          if (!read.ok) {
            if (!("gone" in read)) await this.unmovable.attempt(path.join(dir, n), read.problem, () => this.deadLetter(n, undefined, read.problem, 0));
            continue;
          }
          const parsed = parseEntry(read.text);
          if (parsed.ok) entries.push({ name: n, entry: parsed.entry });
          else if (mayBeUnfinished(read)) this.scheduleRetry(read.modifiedMs + SETTLE_MS); // still being copied in, perhaps
          else await this.unmovable.attempt(path.join(dir, n), parsed.error, () => this.deadLetter(n, parsed.json as QueueEntry | undefined, parsed.error, 0));
        }
        // A copy of an entry that has had its turn here already (handed over twice) is dropped.
        const turns = await finishedTurns(this.deps.db, this.name, this.hostName, entries.map((e) => e.name));
        for (const e of [...entries]) {
          if ((turns.get(e.name) ?? 0) <= (e.entry.requeues ?? 0)) continue;
          await removeEntry(path.join(dir, e.name));
          entries.splice(entries.indexOf(e), 1);
          this.deps.logger.warn({ deployment: this.name, entry: e.name }, "dropped a second copy of an entry this deployment has handled already (the router handed it over again after a crash)");
        }
        // Check events deploy nothing: they only tell a push waiting for its checks to look again now.
        const woken = new Set<string>();
        for (const e of entries.filter((x) => CHECK_EVENTS.has(x.entry.event))) {
          const sha = checkEventSha(e.entry.event, e.entry.payload);
          if (sha) woken.add(sha);
          await removeEntry(path.join(dir, e.name));
          entries.splice(entries.indexOf(e), 1);
        }
        // Entries a bulk requeue marked as superseded never run; of the rest, the newest wins.
        const winner = entries.filter((e) => e.entry.superseded_by === undefined).at(-1);
        const winnerSha = winner ? summarizePayload(winner.entry.payload).after : undefined;
        for (const older of entries) {
          if (older !== winner) await this.supersede(older.name, older.entry, older.entry.superseded_by ?? winner!.name, token, older.entry.superseded_by === undefined ? winnerSha : undefined);
        }
        if (!winner) return;
        const retryAt = winner.entry.retry_at ? Date.parse(winner.entry.retry_at) : 0;
        // A push waiting for its checks (not one waiting to retry a failure) looks again when a check of its commit moves.
        const wokenNow = winner.entry.checks_waiting !== undefined && winner.entry.attempts === undefined && winnerSha !== undefined && woken.has(winnerSha);
        if (retryAt > Date.now() && !wokenNow) {
          this.scheduleRetry(retryAt);
          return;
        }
        const checked = this.requiresChecks(winner.entry) ? await this.awaitChecks(winner.name, winner.entry, token) : false;
        if (checked === "wait") return;
        await this.run(winner.name, winner.entry, token, lockSignal, checked);
      });
      this.lockDelay = 0;
    } catch (err) {
      if (err instanceof LockBusyError) {
        // Another process deploys this app right now: look again shortly.
        this.scheduleRetry(Date.now() + 500 + Math.random() * 500);
        return;
      }
      if (err instanceof LockUnavailableError) {
        // Not the entry's fault: no attempt is counted, nothing is rewritten; back off and retry.
        this.lockDelay = Math.min(Math.max(this.lockDelay * 2, 500), 30_000);
        const delay = this.lockDelay / 2 + Math.random() * this.lockDelay;
        this.deps.logger.debug({ deployment: this.name, retryInMs: Math.round(delay) }, "lock service unreachable; the queue waits");
        this.scheduleRetry(Date.now() + delay);
        return;
      }
      throw err;
    }
  }

  private lockDelay = 0;
  /** The pause last seen (its `at`), so that a pause is told once, not at every look. */
  private pausedAt: string | undefined;

  /**
   * Whether the deployment is paused now (queues/paused/<name>.json): its entries then
   * wait, looked at again every second and at the pause's expiry. A pause that has expired
   * is removed here; a file that is not a pause counts as one (never ignore an operator's
   * freeze because of a typo) and is logged.
   */
  private async paused(): Promise<boolean> {
    const { layout, logger } = this.deps;
    const found = await readPause(layout, this.name);
    if (found && "pause" in found && found.expired) {
      await removePause(layout, this.name);
      logger.info({ deployment: this.name, pausedBy: found.pause.by, until: found.pause.until }, "pause expired: deploying again");
    }
    const active = found && !("pause" in found && found.expired) ? found : undefined;
    if (!active) {
      if (this.pausedAt !== undefined) {
        this.pausedAt = undefined;
        this.events.emit({ kind: "deploy", name: "resumed", deployment: this.name });
        if (!(found && "pause" in found)) logger.info({ deployment: this.name }, "resumed: deploying again");
      }
      return false;
    }
    const at = "pause" in active ? active.pause.at : "invalid";
    if (this.pausedAt !== at) {
      this.pausedAt = at;
      if ("pause" in active) {
        this.events.emit({ kind: "deploy", name: "paused", deployment: this.name, reason: active.pause.reason, by: active.pause.by, until: active.pause.until });
        logger.warn({ deployment: this.name, reason: active.pause.reason, by: active.pause.by, until: active.pause.until }, "paused: entries wait until `deployq resume` (or the pause's end)");
      } else {
        logger.error({ deployment: this.name, err: active.invalid }, "paused by a file that is not a pause: entries wait");
      }
    }
    const until = "pause" in active && active.pause.until ? Date.parse(active.pause.until) : Infinity;
    this.scheduleRetry(Math.min(until, Date.now() + 1000));
    return true;
  }

  /**
   * Pushes that come in a burst (a rebase pushed branch by branch, a merge train) should
   * cost one deploy, not one each. A single waiting entry is deployed at once; when
   * several are waiting, the worker first lets the queue go quiet for `coalesce_ms`
   * (newest arrival, from its entry name), for at most ten times that, so that the
   * deploy it then starts is of the newest commit of the burst.
   */
  private async waitForBurstToSettle(dir: string): Promise<void> {
    const quietMs = this.deps.deployment.coalesce_ms;
    if (quietMs <= 0) return;
    const started = Date.now();
    for (let first = true; ; first = false) {
      if (this.abort.signal.aborted || this.draining) return;
      const names = await scanQueue(dir);
      if (names.length < 2) return;
      const newest = parseEntryName(names.at(-1)!)?.epochMs ?? 0;
      const quietFor = Date.now() - newest;
      const waited = Date.now() - started;
      if (quietFor >= quietMs || waited >= quietMs * 10) return;
      if (first) this.deps.logger.debug({ deployment: this.name, queued: names.length, quietMs }, "several entries waiting: letting the burst settle");
      // A shutdown ends the wait at once (the entries stay queued for the next start).
      await sleep(Math.min(quietMs - quietFor, quietMs * 10 - waited), undefined, { signal: this.drain.signal }).catch(() => {});
    }
  }
  /** Aborted when close() starts: no new deploy begins; the running one gets its grace. */
  private readonly drain = new AbortController();
  private get draining(): boolean {
    return this.drain.signal.aborted;
  }

  /** `bySha`: the commit of the entry that wins, when it is a push (named in the superseded commit's status). */
  private async supersede(name: string, entry: QueueEntry, by: string, token: number, bySha?: string): Promise<void> {
    const { ref, after } = summarizePayload(entry.payload);
    const texts = entry.event === "push" ? this.deps.statuses : undefined;
    await recordUnrun(
      this.deps.db,
      { deployment: this.name, entry: name, deliveryId: entry.delivery_id, event: entry.event, ref, sha: after, attempt: (entry.attempts ?? 0) + 1, host: this.hostName, pid: process.pid, fencingToken: token },
      { status: "superseded", supersededBy: by },
      texts ? (id) => texts.superseded(name, after, bySha, id) : undefined,
    );
    await removeEntry(path.join(this.deps.layout.deployment(this.name), name));
    this.events.emit({ kind: "deploy", name: "finished", deployment: this.name, entry: name, outcome: "superseded", durationMs: 0, sha: after, supersededBy: by });
    this.deps.logger.info({ deployment: this.name, entry: name, sha: after, supersededBy: by }, "entry superseded by a newer one");
  }

  /** Pushes wait for their commit's checks when the deployment requires some; `deployq deploy` and rollbacks do not. */
  private requiresChecks(entry: QueueEntry): boolean {
    return this.deps.deployment.require_checks.length > 0 && entry.event === "push" && summarizePayload(entry.payload).after !== undefined;
  }

  /**
   * A push whose deployment requires checks: true when they have all succeeded on its
   * commit (it deploys that commit, and no other), "wait" when it goes on waiting (its
   * entry rewritten with what is pending and when to look again) or when it failed (its
   * check failed, it waited longer than checks_timeout_s, or GitHub refuses the token:
   * recorded and dead-lettered). A GitHub that cannot be reached is waited for, up to the
   * same timeout: a push is never deployed unchecked. The caller holds the lock.
   */
  private async awaitChecks(name: string, entry: QueueEntry, token: number): Promise<true | "wait"> {
    const { deployment, logger } = this.deps;
    const checks = this.deps.checks!;
    const sha = summarizePayload(entry.payload).after!;
    const waiting = entry.checks_waiting;
    const since = waiting ? Date.parse(waiting.since) || Date.now() : Date.now();
    const polls = waiting?.polls ?? 0;
    const read = await checks.readChecks(deployment.repository, sha, this.abort.signal);
    const fail = async (why: string, detail: string) => {
      await this.failUnrun(name, entry, token, sha, why, detail);
      return "wait" as const;
    };
    let pending: string[];
    let notBefore = 0;
    if (read.ok) {
      const verdict = judgeChecks(deployment.require_checks, read.checks);
      if (verdict.state === "passed") {
        logger.info({ deployment: this.name, entry: name, sha, checks: deployment.require_checks, waitedMs: Date.now() - since }, "required checks passed: deploying");
        return true;
      }
      if (verdict.state === "failed") {
        const { check } = verdict;
        return fail(`check ${check.name} failed`, `required ${check.source} "${check.name}" is ${check.detail} on ${sha}${check.url ? `: ${check.url}` : ""}; nothing was deployed`);
      }
      pending = verdict.pending;
    } else {
      if (read.kind === "permanent") return fail("its checks could not be read", `could not read the required checks of ${sha}: ${read.message}`);
      pending = waiting?.pending ?? [...deployment.require_checks];
      if (read.kind === "rate-limited") notBefore = read.retryAt;
      logger.warn({ deployment: this.name, entry: name, sha, err: read.message }, "could not read the required checks from GitHub; the push goes on waiting");
    }
    const deadline = since + deployment.checks_timeout_s * 1000;
    if (Date.now() >= deadline) {
      return fail(
        `${pending.join(", ")} did not pass in time`,
        `required checks not successful within checks_timeout_s (${deployment.checks_timeout_s} s): ${pending.join(", ")} still pending on ${sha}; nothing was deployed`,
      );
    }
    const next = Math.min(Math.max(Date.now() + nextChecksPoll(polls), notBefore), deadline);
    const sinceIso = new Date(since).toISOString();
    const file = path.join(this.deps.layout.deployment(this.name), name);
    await rewriteInto(this.deps.layout, file, path.dirname(file), { ...entry, checks_waiting: { since: sinceIso, pending, polls: polls + 1 }, retry_at: new Date(next).toISOString() });
    const changed = !waiting || waiting.pending.join("\0") !== pending.join("\0");
    if (changed) {
      if (this.deps.statuses) await this.deps.db.transaction(async (tx) => enqueueGithubWrites(tx as unknown as Db, this.deps.statuses!.waitingForChecks(name, sha, pending)));
      this.events.emit({ kind: "deploy", name: "waiting-for-checks", deployment: this.name, entry: name, sha, pending, since: sinceIso });
      logger.info({ deployment: this.name, entry: name, sha, pending, timeoutAt: new Date(deadline).toISOString() }, "waiting for required checks");
    }
    this.scheduleRetry(next);
    return "wait";
  }

  /** An entry that failed before it ran (its required checks): one final row, its commit status, dead-letter/. */
  private async failUnrun(name: string, entry: QueueEntry, token: number, sha: string, why: string, error: string): Promise<void> {
    const { ref } = summarizePayload(entry.payload);
    const attempt = (entry.attempts ?? 0) + 1;
    const texts = this.deps.statuses;
    const id = await recordUnrun(
      this.deps.db,
      { deployment: this.name, entry: name, deliveryId: entry.delivery_id, event: entry.event, ref, sha, attempt, host: this.hostName, pid: process.pid, fencingToken: token },
      { status: "failed", error },
      (deployId) => [...(texts ? texts.checksFailed(name, sha, deployId, why) : []), ...this.notify(name, deployId, { what: "failed", sha, error, step: undefined, rolledBack: false, liveSha: undefined, deadLettered: true })],
    );
    this.events.emit({ kind: "deploy", name: "finished", deployment: this.name, deployId: id, entry: name, outcome: "failed", durationMs: 0, sha, error });
    await this.deadLetter(name, entry, error, attempt, true);
  }

  /** Deploys one entry; the caller holds the lock (`lockSignal` aborts when it is lost). `checked`: a push whose required checks passed. */
  private async run(name: string, entry: QueueEntry, token: number, lockSignal: AbortSignal, checked = false): Promise<void> {
    const { db, deployment, logger } = this.deps;
    const file = path.join(this.deps.layout.deployment(this.name), name);
    const parsed = toRequest(name, entry);
    const request = typeof parsed !== "string" && parsed.kind === "push" && checked ? { ...parsed, checked } : parsed;
    const attempt = (entry.attempts ?? 0) + 1;
    if (typeof request === "string") {
      await this.deadLetter(name, entry, request, attempt);
      return;
    }
    const { ref } = summarizePayload(entry.payload);
    const sha = request.kind === "push" ? request.sha : undefined;
    // A push from a fleet rollout that no longer lets this host switch is not deployed at all.
    const rolloutId = entry.rollout;
    const rolling = rolloutId !== undefined && request.kind === "push" ? await readRollout(db, rolloutId) : undefined;
    if (rolling && (await stopsHost(db, rolling, this.hostName))) {
      await this.skipRollout(name, entry, token, rolling);
      return;
    }
    const id = await startDeploy(db, {
      deployment: this.name,
      entry: name,
      deliveryId: entry.delivery_id,
      event: entry.event,
      ref: request.kind === "deploy" ? request.ref : ref,
      sha,
      attempt,
      host: this.hostName,
      pid: process.pid,
      fencingToken: token,
    }, request.kind === "push" && this.deps.statuses && rolloutId === undefined ? (deployId) => this.deps.statuses!.started(name, request.sha, deployId, attempt) : undefined);
    // A rollout's entry: GitHub hears of the fleet (one status, written as the rollout moves on), not of each host.
    const texts = rolloutId === undefined ? this.deps.statuses : undefined;
    // The step that failed, for the commit status (not the rollback that followed it).
    let failedStep: StepKind | undefined;
    const report = async (ended: "retrying" | "failed" | "cancelled", by = "unknown", err?: unknown): Promise<GithubWrite[]> => {
      if (ended === "retrying") return texts ? texts.retrying(name, sha, id, attempt) : [];
      if (ended === "cancelled") return [...(texts ? texts.cancelled(name, sha, id, by) : []), ...this.notify(name, id, { what: "dead-lettered", sha, error: `cancelled by ${by}` })];
      const liveSha = await this.liveSha();
      return [
        ...(texts ? texts.failed(name, sha, id, failedStep, liveSha) : []),
        ...this.notify(name, id, { what: "failed", sha, error: errorMessage(err), step: failedStep, rolledBack: steps.ran("rollback"), liveSha, deadLettered: true }),
      ];
    };
    const logPath = deployLogPath(this.deps.dataDir, this.name, id);
    await mkdir(path.dirname(logPath), { recursive: true });
    await setDeployLog(db, id, logPath);
    const log = createWriteStream(logPath, { flags: "a" });
    let ended: Promise<void> | undefined;
    // The log is complete on disk before the entry leaves its queue (`deployq deploy` reads it).
    const endLog = () => (ended ??= new Promise<void>((resolve) => log.end(resolve)));
    const what = request.kind === "rollback" ? (request.to ?? "to the previous release") : request.kind === "deploy" ? request.ref : `${ref ?? ""} ${sha}`;
    log.write(`deploy ${id} of ${this.name}: entry ${name}, attempt ${attempt}, ${entry.event} ${what}, lock ${this.deps.locks.kind} token ${token}\n`);
    // `deployq cancel` stops it until the step that changes what is live (see cancel.ts).
    const cancel = new AbortController();
    let cancellable = true;
    let cancelledBy: string | undefined;
    const signal = AbortSignal.any([this.abort.signal, lockSignal, cancel.signal]);
    const child = logger.child({ deployment: this.name, deploy: id, entry: name });
    const { dataDir } = this.deps;
    await writeRunning(dataDir, this.name, { deployId: id, entry: name, pid: process.pid, cancellable: true });
    let checking = false;
    const poll = setInterval(() => {
      if (checking) return;
      checking = true;
      void (async () => {
        const asked = await readCancel(dataDir, this.name);
        if (!asked) return;
        await removeCancel(dataDir, this.name);
        if (asked.deployId !== id) return;
        if (cancellable) {
          cancelledBy = asked.by;
          log.write(`\n== cancelled by ${asked.by}: stopping; the previous release stays current\n`);
          child.warn({ by: asked.by }, "deploy cancelled: stopping it; the previous release stays current");
          cancel.abort(new Error(`cancelled by ${asked.by}`));
        } else {
          log.write(`\n== a cancel by ${asked.by} came after the switch: the deploy finishes (or rolls back by itself)\n`);
          child.warn({ by: asked.by }, "cancel refused: the deploy is past its switch");
        }
      })().finally(() => (checking = false));
    }, 250);
    child.info({ event: entry.event, sha, attempt, log: logPath, fencingToken: token }, "deploy started");
    const events = this.events;
    const started = Date.now();
    const tell = (outcome: DeployOutcomeName, more: { sha?: string | undefined; release?: string | undefined; error?: string | undefined; supersededBy?: string | undefined; nextAttemptAt?: string | undefined } = {}) =>
      events.emit({ kind: "deploy", name: "finished", deployment: this.name, deployId: id, entry: name, outcome, durationMs: Date.now() - started, ...more });
    events.emit({ kind: "deploy", name: "started", deployment: this.name, deployId: id, entry: name, attempt, sha, ref: request.kind === "deploy" ? request.ref : ref, logPath });
    const steps = new StepRecorder({ db, events, logger: child, deployment: this.name, deployId: id, entry: name });
    if (rolloutId !== undefined) await updateRolloutHost(db, rolloutId, this.hostName, { state: request.kind === "rollback" ? "rolling-back" : "deploying", deployId: id });
    const fleetLocks = this.deps.fleetLocks;
    try {
      const outcome = await performDeploy(request, {
        deployment,
        dataDir: this.deps.dataDir,
        host: { ...this.deps.host, withNginxLock: (fn) => usingWhenFree(this.deps.locks, NGINX_LOCK, signal, fn) },
        log,
        signal,
        pidFile: this.pidFile,
        onStep: (kind, title) => {
          if (cancellable && (kind === "switch" || (deployment.strategy === "in-place" && kind === "checkout"))) {
            cancellable = false;
            void writeRunning(dataDir, this.name, { deployId: id, entry: name, pid: process.pid, cancellable: false, step: title });
          }
          if (kind !== "rollback") failedStep = kind;
          this.current = { entry: name, step: title };
          child.info({ step: title }, "deploy step");
          steps.start(kind, title);
        },
        fence: async () => {
          if (lockSignal.aborted) throw new LockLostError("the deployment lock was lost (it could not be extended)");
          // A fleet deployment's hosts each deploy it under a lock of their own: only this host's rows fence it.
          const newer = await newerFencingToken(db, this.name, token, isFleet(deployment) ? this.hostName : undefined);
          if (newer !== undefined) throw new LockLostError(`a newer deploy holds the lock (fencing token ${newer} > ${token})`);
        },
        ...(rolling && fleetLocks
          ? {
              rolling: <T>(fn: () => Promise<T>) =>
                whenRolloutLets(
                  {
                    db,
                    locks: fleetLocks,
                    hostName: this.hostName,
                    rolloutId: rolling.id,
                    log,
                    signal,
                    // Told while the slot is still held, so that no other host switches to a commit that just failed here.
                    failed: async (err) => {
                      if (!cancel.signal.aborted && this.verdict(err, attempt, lockSignal) === "final") await hostFailed(db, rolling.id, this.hostName, failedStep, errorMessage(err), this.fleetReport(id));
                    },
                  },
                  fn,
                ),
            }
          : {}),
      });
      await steps.finish(true);
      if (outcome.status === "superseded") {
        log.write(`\n== superseded: ${outcome.note}\n`);
        await endLog();
        await finishDeploy(
          db,
          id,
          { status: "superseded", sha: outcome.sha, supersededBy: outcome.supersededBy, error: outcome.note, logPath },
          outcome.supersededBy ? texts?.superseded(name, outcome.sha, outcome.supersededBy, id) : texts?.branchDeleted(name, outcome.sha, id),
        );
        await removeEntry(file);
        tell("superseded", { sha: outcome.sha, supersededBy: outcome.supersededBy });
        child.info({ sha: outcome.sha, supersededBy: outcome.supersededBy }, `push superseded: ${outcome.note}`);
        return;
      }
      log.write(`\n== ${outcome.status}: ${outcome.sha}${outcome.release ? ` (releases/${outcome.release})` : ""}\n`);
      await endLog();
      await finishDeploy(db, id, { ...outcome, logPath }, [...(texts ? await this.reportOutcome(texts, name, request, outcome, id) : []), ...(await this.notifyOutcome(name, request, outcome, id))]);
      await removeEntry(file);
      if (rolloutId !== undefined) {
        if (request.kind === "rollback") await updateRolloutHost(db, rolloutId, this.hostName, { state: "rolled-back", release: outcome.release ?? null });
        else {
          const switched = outcome.status === "succeeded";
          await hostSucceeded(db, rolloutId, this.hostName, { release: outcome.release ?? null, previousRelease: switched ? (outcome.previousRelease ?? null) : null }, this.fleetReport(id));
        }
      }
      tell(outcome.status, { sha: outcome.sha, release: outcome.release });
      const requestedSha = outcome.status === "succeeded" ? outcome.requestedSha : undefined;
      child.info(
        { status: outcome.status, sha: outcome.sha, release: outcome.release, ...(requestedSha ? { requestedSha } : {}) },
        outcome.status === "succeeded" ? (requestedSha ? `deploy succeeded: the branch's head, superseding the push of ${requestedSha}` : "deploy succeeded") : "already deployed",
      );
    } catch (err) {
      log.write(`\n== failed: ${errorMessage(err)}\n`);
      await endLog();
      await steps.finish(false, err instanceof ExecError ? err.exitCode : undefined);
      if (err instanceof RolloutStopped) {
        await this.rolloutStopped(id, name, err.rollout, logPath);
        tell(err.rollout.state === "superseded" ? "superseded" : "cancelled", { sha, error: err.message });
        return;
      }
      const ended = cancel.signal.aborted ? await this.cancelled(id, name, entry, attempt, cancelledBy ?? "unknown", err, report) : await this.fail(id, name, entry, attempt, err, child, lockSignal, report);
      // A deploy that failed after its switch and put the previous release back was rolled back.
      const outcome = ended.outcome === "failed" && steps.ran("rollback") ? "rolled-back" : ended.outcome;
      if (rolloutId !== undefined && (ended.outcome === "failed" || ended.outcome === "cancelled")) {
        // This host failed the rollout: it stops the wave (and, with on_failure = "rollback", turns it back).
        if (request.kind === "rollback") await updateRolloutHost(db, rolloutId, this.hostName, { state: "failed", step: failedStep ?? null, error: errorMessage(err).slice(0, 2000) });
        else await hostFailed(db, rolloutId, this.hostName, failedStep, errorMessage(err), this.fleetReport(id));
      }
      tell(outcome, { sha, error: errorMessage(err).slice(0, 2000), nextAttemptAt: ended.nextAttemptAt });
    } finally {
      clearInterval(poll);
      await removeRunning(dataDir, this.name);
      this.current = undefined;
      await endLog();
      // The row is final: keep the newest keep_deploys deploys (rows and logs) of this deployment on this host.
      await pruneDeploys({ db, deployment: this.name, host: this.hostName, keep: deployment.keep_deploys, logFile: (n) => deployLogPath(this.deps.dataDir, this.name, n) }).catch(
        (err: unknown) => child.warn({ err: errorMessage(err) }, "could not remove old deploy records; the next deploy tries again"),
      );
    }
  }

  /** A rollout's push that its rollout stopped before it started here: recorded, removed, and the host's part in the rollout told. */
  private async skipRollout(name: string, entry: QueueEntry, token: number, rollout: Rollout): Promise<void> {
    const { ref, after } = summarizePayload(entry.payload);
    const why = describeStop(rollout);
    const outcome = rollout.state === "superseded" ? { status: "superseded" as const, supersededBy: `rollout ${rollout.supersededBy ?? "?"}` } : { status: "cancelled" as const, error: why };
    const id = await recordUnrun(this.deps.db, { deployment: this.name, entry: name, deliveryId: entry.delivery_id, event: entry.event, ref, sha: after, attempt: (entry.attempts ?? 0) + 1, host: this.hostName, pid: process.pid, fencingToken: token }, outcome);
    await this.rolloutStopped(id, name, rollout, undefined, true);
    this.events.emit({ kind: "deploy", name: "finished", deployment: this.name, deployId: id, entry: name, outcome: outcome.status, durationMs: 0, sha: after, error: why });
  }

  /** The rollout stopped this host before its switch: the deploy row says why, the entry goes, and the host's part is halted or superseded. */
  private async rolloutStopped(id: number, name: string, rollout: Rollout, logPath: string | undefined, recorded = false): Promise<void> {
    const why = describeStop(rollout);
    const superseded = rollout.state === "superseded";
    if (!recorded) {
      await finishDeploy(this.deps.db, id, superseded ? { status: "superseded", sha: rollout.sha ?? undefined, supersededBy: `rollout ${rollout.supersededBy ?? "?"}`, error: why, logPath } : { status: "cancelled", error: why });
    }
    await removeEntry(path.join(this.deps.layout.deployment(this.name), name));
    await updateRolloutHost(this.deps.db, rollout.id, this.hostName, { state: superseded ? "superseded" : "halted", deployId: id, error: why });
    this.deps.logger.warn({ deployment: this.name, entry: name, rollout: rollout.id, state: rollout.state, failedHost: rollout.failedHost }, why);
  }

  /** What this host tells GitHub of the fleet when it moves a rollout on (GITHUB_TOKEN set). */
  private fleetReport(deployId: number): FleetReport | undefined {
    const texts = this.deps.statuses?.statuses;
    if (!texts) return undefined;
    const status = (rows: StatusRow[]): GithubWrite[] => rows.map((row) => ({ kind: "status", status: row }));
    return {
      progress: (r, live) => status(texts.fleetProgress(r.sha ?? undefined, live, r.hosts.length, deployId)),
      live: (r) => status(texts.fleetLive(r.sha ?? undefined, r.hosts.length, deployId)),
      stopped: (r, host, step, rolledBack) => status(texts.fleetStopped(r.sha ?? undefined, host, step as StepKind | undefined, rolledBack, deployId)),
    };
  }

  /** The commit live now (after a failed deploy: the one that kept serving), if any can be read. */
  private async liveSha(): Promise<string | undefined> {
    const { deployment, dataDir } = this.deps;
    try {
      if (deployment.strategy === "in-place") return (await readFile(inPlaceStateFile(dataDir, this.name), "utf8")).trim() || undefined;
      const paths = deploymentPaths(deployment.path);
      const current = await currentRelease(paths);
      return current ? (await readReleaseMeta(path.join(paths.releases, current)))?.sha : undefined;
    } catch {
      return undefined;
    }
  }

  /** What a deploy that ended well tells GitHub (a rollback: on both commits). */
  private async reportOutcome(texts: GithubReports, name: string, request: DeployRequest, outcome: Exclude<Awaited<ReturnType<typeof performDeploy>>, { status: "superseded" }>, id: number): Promise<GithubWrite[]> {
    if (outcome.status === "already-deployed") return texts.alreadyLive(name, outcome.sha, id);
    if (request.kind !== "rollback") return texts.succeeded(name, outcome.sha, id, outcome.requestedSha);
    const from = outcome.previousRelease ? await readReleaseMeta(path.join(deploymentPaths(this.deps.deployment.path).releases, outcome.previousRelease)) : undefined;
    return texts.rolledBack(name, outcome.sha, from?.sha, id);
  }

  /** What the notifiers of this deployment are told (nothing when nobody listens). */
  private notify(name: string, deployId: number | null, happening: Happening): GithubWrite[] {
    return this.deps.notify?.write(name, deployId, happening) ?? [];
  }

  /** A deploy that ended well: a success, or a rollback (already deployed tells nobody). */
  private async notifyOutcome(name: string, request: DeployRequest, outcome: Exclude<Awaited<ReturnType<typeof performDeploy>>, { status: "superseded" }>, id: number): Promise<GithubWrite[]> {
    if (!this.deps.notify || outcome.status === "already-deployed") return [];
    if (request.kind !== "rollback") return this.notify(name, id, { what: "succeeded", sha: outcome.sha, requestedSha: outcome.requestedSha });
    const from = outcome.previousRelease ? await readReleaseMeta(path.join(deploymentPaths(this.deps.deployment.path).releases, outcome.previousRelease)) : undefined;
    return this.notify(name, id, { what: "rolled-back", to: outcome.sha, from: from?.sha });
  }

  /** Records how a deploy failed, and what becomes of its entry; says which it was. */
  private async fail(
    id: number,
    name: string,
    entry: QueueEntry,
    attempt: number,
    err: unknown,
    logger: Logger,
    lockSignal: AbortSignal,
    report: (ended: "retrying" | "failed", by: undefined, err: unknown) => Promise<GithubWrite[]>,
  ): Promise<{ outcome: DeployOutcomeName; nextAttemptAt?: string }> {
    const exec = err instanceof ExecError ? err : undefined;
    const base = { error: errorMessage(err).slice(0, 8000), exitCode: exec?.exitCode, signal: exec?.signal };
    const verdict = this.verdict(err, attempt, lockSignal);
    if (verdict === "lock lost") {
      // Someone else may own this deployment now: touch neither `current` nor the queue.
      await finishDeploy(this.deps.db, id, { status: "interrupted", ...base });
      logger.warn({ err: base.error }, "deploy stopped: the lock was lost; whoever holds it now handles the queue");
      return { outcome: "interrupted" };
    }
    if (verdict === "shutdown") {
      await finishDeploy(this.deps.db, id, { status: "interrupted", ...base });
      logger.warn("deploy interrupted by shutdown; the entry stays queued and is redone at the next start");
      return { outcome: "interrupted" };
    }
    if (verdict === "retry") {
      await finishDeploy(this.deps.db, id, { status: "retrying", ...base }, await report("retrying", undefined, err));
      const at = await this.retryLater(name, entry, attempt, err);
      return { outcome: "retrying", ...(at ? { nextAttemptAt: new Date(at).toISOString() } : {}) };
    }
    await finishDeploy(this.deps.db, id, { status: "failed", ...base }, await report("failed", undefined, err));
    await this.deadLetter(name, entry, errorMessage(err), attempt, true);
    return { outcome: "failed" };
  }

  /** What a deploy's failure is: an interruption (its lock lost, a shutdown), a transient one to retry, or final. */
  private verdict(err: unknown, attempt: number, lockSignal: AbortSignal): "lock lost" | "shutdown" | "retry" | "final" {
    if (err instanceof LockLostError || lockSignal.aborted) return "lock lost";
    // While draining, a command that died of a signal was most likely stopped with us (a
    // process manager signalling the whole group): that is an interruption, not a failure.
    if (this.abort.signal.aborted || (this.draining && err instanceof ExecError && err.signal !== undefined)) return "shutdown";
    if (err instanceof TransientError && attempt < this.deps.deployment.max_attempts) return "retry";
    return "final";
  }

  /** A cancelled deploy: recorded as such, and its entry kept in dead-letter/ (requeue it to deploy it after all). */
  private async cancelled(
    id: number,
    name: string,
    entry: QueueEntry,
    attempt: number,
    by: string,
    err: unknown,
    report: (ended: "cancelled", by: string) => Promise<GithubWrite[]>,
  ): Promise<{ outcome: DeployOutcomeName; nextAttemptAt?: string }> {
    const exec = err instanceof ExecError ? err : undefined;
    await finishDeploy(
      this.deps.db,
      id,
      { status: "cancelled", error: `cancelled by ${by} (${errorMessage(err).slice(0, 2000)})`, exitCode: exec?.exitCode, signal: exec?.signal },
      await report("cancelled", by),
    );
    await deadLetterEntry(this.deps.layout, path.join(this.deps.layout.deployment(this.name), name), this.name, entry, `cancelled by ${by}`, attempt);
    this.deps.logger.warn({ deployment: this.name, entry: name, by }, `deploy cancelled; entry kept in dead-letter/${this.name}/ (\`deployq queue requeue ${this.name}\` deploys it after all)`);
    return { outcome: "cancelled" };
  }

  /** Returns when the next attempt is due, or undefined when there is none (dead-lettered). */
  private async retryLater(name: string, entry: QueueEntry, attempt: number, err: unknown): Promise<number | undefined> {
    if (attempt >= this.deps.deployment.max_attempts) {
      await this.deadLetter(name, entry, errorMessage(err), attempt);
      return undefined;
    }
    const base = this.deps.deployment.retry_backoff_s * 1000 * 2 ** (attempt - 1);
    const delay = Math.round(base / 2 + Math.random() * base); // jitter: 0.5x–1.5x
    const at = Date.now() + delay;
    const file = path.join(this.deps.layout.deployment(this.name), name);
    await rewriteInto(this.deps.layout, file, path.dirname(file), { ...entry, attempts: attempt, last_error: errorMessage(err).slice(0, 8000), retry_at: new Date(at).toISOString() });
    this.deps.logger.warn({ deployment: this.name, entry: name, attempt, retryInMs: delay, err: errorMessage(err) }, "transient failure; will retry");
    this.scheduleRetry(at);
    return at;
  }

  private scheduleRetry(at: number): void {
    if (at >= this.retryAt && this.retryTimer) return;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryAt = at;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      this.retryAt = Infinity;
      void this.queue.kick();
    }, Math.max(0, at - Date.now()));
    this.retryTimer.unref();
  }

  /** `notified`: its notification was written with its deploy row; else the notifiers are told of it here. */
  private async deadLetter(name: string, entry: QueueEntry | undefined, error: string, attempts: number, notified = false): Promise<void> {
    await deadLetterEntry(this.deps.layout, path.join(this.deps.layout.deployment(this.name), name), this.name, entry, error, attempts);
    const writes = notified ? [] : this.notify(name, null, { what: "dead-lettered", sha: entry?.payload ? commitOrNothing(summarizePayload(entry.payload).after) : undefined, error });
    if (writes.length > 0) {
      // After the move: a crash between the two loses this notification, never sends it twice.
      await this.deps.db.transaction((tx) => enqueueGithubWrites(tx as unknown as Db, writes)).catch((err: unknown) => this.deps.logger.warn({ deployment: this.name, entry: name, err: errorMessage(err) }, "could not write the dead-letter notification"));
    }
    this.deps.logger.error(
      { deployment: this.name, entry: name, attempts, err: error },
      attempts === 0
        ? `not an entry deployq can deploy; moved to dead-letter/${this.name}/: fix or remove it there (\`deployq queue requeue ${this.name}\` puts a fixed one back)`
        : `deploy failed for good; entry moved to dead-letter/${this.name}/: fix the cause, then \`deployq queue requeue ${this.name}\``,
    );
  }

  /**
   * Stops taking entries. A running deploy gets `shutdownGraceMs` to finish; then its
   * command's process group is killed and the entry stays queued. Idempotent.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.drain.abort();
      if (this.retryTimer) clearTimeout(this.retryTimer);
      const grace = setTimeout(() => this.abort.abort(), this.deps.shutdownGraceMs);
      try {
        await this.queue.close();
      } finally {
        clearTimeout(grace);
      }
    })();
    return this.closing;
  }

  /** Cancels a running deploy now (a second signal). */
  cancel(): void {
    this.abort.abort();
  }
}
