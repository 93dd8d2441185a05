import { mkdir, readFile, unlink, writeFile } from "node:fs/promises";
import path from "node:path";
import type { Logger } from "pino";
import { type Settings, deploysHere, isFleet, requireChecksToken, requireFleetServices, requireNotifyUrls, requireWebhookSecrets } from "./config/load.ts";
import { FleetFollower } from "./fleet/follower.ts";
import { setTimeout as sleep } from "node:timers/promises";
import { type Database, databaseUnreachable, openDatabase, postgresDriverPatched } from "./db/client.ts";
import { errorMessage } from "./errors.ts";
import { Readiness } from "./http/readiness.ts";
import { Events } from "./events/bus.ts";
import { withLockEvents } from "./events/lock-events.ts";
import { EventFeed } from "./events/feed.ts";
import { EVENTS_CHANNEL, startEventWriter } from "./events/store.ts";
import { type LiveStream, startLiveStreamIfConfigured } from "./http/ws.ts";
import { orphanDeliveryIds, recordOrphanedEntries } from "./http/github-webhook.ts";
import { scanQueue } from "./queue/scan.ts";
import { type HealthCheck, type RunningServer, createApp, listen } from "./http/server.ts";
import { dashboardFor } from "./http/dashboard/app.ts";
import { newestEntryNames } from "./db/queries/newest-entry-names.ts";
import { seedEntryClock } from "./queue/entry-clock.ts";
import { queueLayout } from "./queue/layout.ts";
import type { QueueWorker } from "./queue/watch.ts";
import { ensureQueueDirs, sweepTmp } from "./queue/write.ts";
import { createLocalLocks } from "./lock/local-lock.ts";
import { pingLockService } from "./lock/ping.ts";
import { createRedlockLocks } from "./lock/redlock.ts";
import { type LockService, withLockPrefix } from "./lock/lock.ts";
import { acquirePidLock } from "./pid-lock.ts";
import { collectStatus } from "./status.ts";
import { DeploymentWorker } from "./workers/deployment.ts";
import { createRouter } from "./workers/router.ts";
import { createMetricsApp } from "./metrics/http.ts";
import { createMetrics } from "./metrics/registry.ts";
import { startGithubStatuses } from "./github/start.ts";
import { giveUpRemovedNotifiers } from "./notify/notify.ts";
import { startNotifications } from "./notify/start.ts";
import { startRedelivererIfConfigured } from "./github/redeliver.ts";
import { GithubHookRanges } from "./github/meta.ts";

export type Role = "serve" | "receiver" | "workers";

export interface Daemon {
  role: Role;
  /** Where the receiver listens (none for the workers, whose [metrics] address is metricsUrl). */
  url: string | undefined;
  /** Where this process serves GET /metrics: the receiver's address, or [metrics] for the workers (none without its port). */
  metricsUrl: string | undefined;
  database: Database;
  router: QueueWorker | undefined;
  deployments: Map<string, DeploymentWorker>;
  /** What this process's receiver, router, workers and locks do, as it happens. */
  events: Events;
  /** Every process's events as written to the database, in sequence (receiver roles only). */
  feed: EventFeed | undefined;
  /** /ws/v0 (receiver roles with DEPLOYQ_ADMIN_TOKEN set). */
  live: LiveStream | undefined;
  /** First call drains: stops accepting, lets the current step finish, closes the database. */
  close(): Promise<void>;
}

export interface StartOptions {
  settings: Settings;
  role: Role;
  logger: Logger;
  /** Watch the queue directories (default); off, the periodic rescan alone finds entries. */
  watch?: boolean;
  /** An already open database (tests); otherwise opened from the settings, and closed on close(). */
  database?: Database;
  /** Lock service (tests); otherwise in-process locks. */
  locks?: LockService;
  /** Gives up waiting for the database (a signal while starting): startDaemon then rejects with an AbortError. */
  signal?: AbortSignal;
  /** Called once the HTTP server listens, which is before the database is reached (pm2's "ready"). */
  onListening?: (url: string) => void;
  /**
   * Metrics and the event stream (/metrics, the event writer, the feed, /ws/v0); on by
   * default. Off only for the bench's baseline, which measures what they cost the receiver.
   */
  observability?: boolean;
}

/**
 * The composition root: prepare the queue root, start the HTTP server, reach the database
 * and migrate, then start the workers this role runs. The server listens first, so that a
 * receiver started while Postgres is down (or restarting, or not created yet) answers 503
 * and /healthz says why, and reaches it as soon as it is up, instead of exiting in a loop.
 * Resolves once everything runs and the orphans of a previous receiver are recorded (the
 * receiver takes deliveries meanwhile). Every resource started is released by close(), in
 * reverse order, even when one release fails.
 */
export async function startDaemon(options: StartOptions): Promise<Daemon> {
  const { settings, role, logger } = options;
  const receives = role !== "workers";
  const works = role !== "receiver";
  const secrets = receives ? requireWebhookSecrets(settings) : undefined;
  if (works) {
    requireChecksToken(settings);
    requireNotifyUrls(settings);
    requireFleetServices(settings);
  }
  const layout = queueLayout(settings.queuesDir);
  const events = new Events();
  const observed = options.observability ?? true;
  const reportsToGithub = works && settings.secrets.githubToken !== undefined;
  // Lost-delivery recovery runs beside the workers (see src/github/redeliver.ts and ARCHITECTURE.md).
  const recovers = reportsToGithub && settings.publicUrl !== undefined && settings.github.redeliverIntervalMs > 0 && settings.deployments.size > 0;
  const metrics = observed ? createMetrics({ layout, deployments: [...settings.deployments.values()], deploys: works, github: reportsToGithub, redeliveries: recovers, notifiers: works ? settings.notify.map((n) => n.name) : [] }) : undefined;
  if (metrics) events.on(metrics.listener);
  const cleanups: Array<() => Promise<void>> = [];
  const closeAll = async () => {
    for (const cleanup of cleanups.reverse()) {
      try {
        await cleanup();
      } catch (err) {
        logger.error({ err }, "error while shutting down");
      }
    }
  };
  try {
    const database = options.database ?? (await openDatabase({ databaseUrl: settings.secrets.databaseUrl, dataDir: settings.dataDir }));
    if (!options.database) cleanups.push(() => database.close());
    if (database.kind === "postgres" && !postgresDriverPatched()) {
      logger.error("postgres.js is not patched (installed with --ignore-scripts?): a Postgres restart may hang or end this process; run `node scripts/patch-postgres.mjs` in the deployq directory, then restart");
    }
    await ensureQueueDirs(layout, settings.deployments.keys());
    const swept = await sweepTmp(layout);
    if (swept.length > 0) logger.warn({ files: swept }, "removed temporaries left in .tmp/ by a process that died");

    const readiness = new Readiness(`deployq is starting: the database (${database.describe}) is not reached yet`);
    // Filled in once the workers run; /healthz reads it at each request.
    const health: HealthCheck[] = [];
    let server: RunningServer | undefined;
    let rangesKnown: Promise<void> | undefined;
    if (receives) {
      const allowlist = settings.github.allowlist ? allowlistRanges(settings, logger) : undefined;
      if (allowlist) {
        cleanups.push(() => allowlist.close());
        health.push({ name: "github allowlist", check: async () => describeRanges(allowlist) });
        // Fetched while the database is reached; awaited before deliveries are taken.
        rangesKnown = allowlist.start();
      }
      const dashboard = dashboardFor(settings, database.db, logger);
      if (dashboard) cleanups.push(() => dashboard.close());
      const app = createApp({
        db: database.db,
        layout,
        logger,
        secrets,
        readiness,
        events,
        metrics,
        deployments: [...settings.deployments.values()],
        status: (only) => collectStatus(settings, database.db, only),
        health,
        dashboard,
        trustProxy: settings.trustProxy,
        allowlist,
      });
      server = await listen(app, settings.host, settings.port);
      const running = server;
      cleanups.push(() => running.close());
      // Where a CLI command finds this daemon (the port may have been chosen by the system).
      const announced = await announceDaemon(settings.dataDir, { pid: process.pid, role, url: running.url });
      cleanups.push(announced);
      options.onListening?.(running.url);
    } else if (metrics && settings.metrics.port !== undefined) {
      // The workers alone have no HTTP server: one that serves /metrics only, if asked for.
      const running = await listen(createMetricsApp(metrics, logger), settings.metrics.host, settings.metrics.port);
      server = running;
      cleanups.push(() => running.close());
    }
    const metricsUrl = server && metrics ? `${server.url}/metrics` : undefined;

    // Until Postgres answers: it may be down, restarting, or starting with this machine.
    await untilReachable(database, readiness, logger, options.signal, async () => {
      await database.migrate();
      // Entries named from now on sort after every one already issued, whatever this clock says.
      await seedEntryClock(layout, await newestEntryNames(database.db));
    });
    metrics?.readRolloutsFrom(database.db);

    // Every process writes its events; the one that serves HTTP reads everyone's.
    let feed: EventFeed | undefined;
    let live: LiveStream | undefined;
    if (observed) {
      const writer = startEventWriter({ db: database.db, events, logger, onWritten: () => feed?.wake() });
      cleanups.push(() => writer.close());
    }
    if (receives && observed) {
      const started = new EventFeed({ db: database.db, logger });
      await started.start();
      feed = started;
      const unlisten = await database.listen(EVENTS_CHANNEL, (payload) => started.notified(payload));
      cleanups.push(async () => {
        started.close();
        // On a connection that hangs, UNLISTEN would too: the database's own close ends it.
        await Promise.race([unlisten(), sleep(1000)]);
      });
      live = startLiveStreamIfConfigured(settings, server!.server, started, logger);
      if (live) cleanups.push(live.close);
    }

    let router: QueueWorker | undefined;
    let lockService: LockService | undefined;
    const deployments = new Map<string, DeploymentWorker>();
    if (works) {
      const redisUrls = settings.secrets.redisUrls;
      const baseLocks = options.locks ?? (redisUrls.length > 0 ? createRedlockLocks({ urls: redisUrls, ttlMs: settings.lockTtlMs, logger }) : createLocalLocks());
      const locks = withLockEvents(withLockPrefix(baseLocks, settings.lockPrefix), events);
      // A rollout's slots: names every host of the fleet shares (their queue roots, hence their default lock_prefix, differ).
      // Polled (one attempt at a time), so not told as lock events: a wait would be hundreds of them.
      const fleetLocks = withLockPrefix(baseLocks, settings.fleetLockPrefix);
      if (!options.locks && redisUrls.length === 0) {
        // In-process locks protect nothing across processes: one workers process per queue root.
        const held = acquirePidLock(
          path.join(layout.root, ".workers.lock"),
          (owner) =>
            `deployq process ${owner} already runs the workers for ${layout.root}: stop it first ` +
            "(two workers processes with in-process locks could deploy one app twice at once), or set REDIS_URL " +
            "to a Dragonfly/Redis (several, comma-separated, for a quorum) so that several can share the work",
        );
        cleanups.push(async () => held.release());
      }
      lockService = locks;
      cleanups.push(() => locks.close());
      // Commit statuses (GITHUB_TOKEN): written with the deploy rows, sent by a sender of their own.
      const github = reportsToGithub ? startGithubStatuses({ settings, db: database.db, logger, events, metrics }) : undefined;
      if (github) cleanups.push(() => github.close());
      // [[notify]]: written with the deploy rows too, each notifier sent by a sender of its own.
      const notifications = settings.notify.length > 0 ? startNotifications({ settings, db: database.db, logger, events, metrics }) : undefined;
      if (notifications) cleanups.push(() => notifications.close());
      await giveUpRemovedNotifiers(database.db, settings.notify.map((n) => n.name)).then(
        (n) => n > 0 && logger.warn({ notifications: n }, "notifications to notifiers no longer configured were given up"),
        (err: unknown) => logger.warn({ err: errorMessage(err) }, "could not give up the notifications of notifiers no longer configured; the next start tries again"),
      );
      let follower: FleetFollower | undefined;
      router = createRouter({ settings, layout, db: database.db, locks, logger, events, watch: options.watch ?? true, onRollouts: () => void follower?.kick(), ...(github ? { statuses: github.statuses } : {}), ...(notifications?.router ? { notify: notifications.router } : {}) });
      const started = router;
      cleanups.push(() => started.close());
      // A fleet deployment that does not list this host is routed here, never deployed here.
      const here = [...settings.deployments.values()].filter((d) => deploysHere(d, settings.hostName));
      for (const deployment of here) {
        deployments.set(
          deployment.name,
          new DeploymentWorker({
            deployment,
            dataDir: settings.dataDir,
            layout,
            db: database.db,
            locks,
            host: { pm2Home: settings.pm2Home, nginx: settings.nginx, certbot: settings.certbot },
            logger,
            rescanIntervalMs: settings.rescanIntervalMs,
            shutdownGraceMs: settings.shutdownGraceMs,
            watch: options.watch ?? true,
            events,
            ...(github ? { statuses: github.statuses.get(deployment.name)!, checks: github.client } : {}),
            ...(notifications?.notifiers.has(deployment.name) ? { notify: notifications.notifiers.get(deployment.name)! } : {}),
            hostName: settings.hostName,
            ...(isFleet(deployment) ? { fleetLocks } : {}),
          }),
        );
      }
      cleanups.push(() => Promise.all([...deployments.values()].map((w) => w.close())).then(() => {}));
      await router.start();
      for (const worker of deployments.values()) await worker.start();
      const fleet = here.filter(isFleet);
      if (fleet.length > 0) {
        const fleetFollower = new FleetFollower({ database, layout, hostName: settings.hostName, deployments: fleet, pollIntervalMs: settings.rescanIntervalMs, logger });
        await fleetFollower.start();
        follower = fleetFollower;
        cleanups.push(() => fleetFollower.close());
      }
    }
    const routerStarted = router;
    health.push(
      ...(routerStarted ? [{ name: "router", check: async () => assertHealthy(routerStarted) }] : []),
      ...(lockService
        ? [{ name: "locks", check: async () => assertLocks(lockService!) }]
        : receives && settings.secrets.redisUrls.length > 0
          ? // The receiver alone: the workers' lock service, as reachable from here.
            [{ name: "locks", check: () => assertReachable(settings.secrets.redisUrls) }]
          : []),
      ...[...deployments.values()].map((w) => ({ name: `deployment:${w.name}`, check: async () => assertHealthy(w) })),
    );
    if (receives) {
      // Entries a previous receiver left without their rows: known by name before the first
      // delivery is taken, recorded while deliveries are.
      const orphans = await scanQueue(layout.router);
      readiness.expectUnrecorded(orphanDeliveryIds(orphans));
      // One attempt at GitHub's ranges (bounded by [github] timeout_ms); still unknown, deliveries get 503.
      await rangesKnown;
      readiness.accepting();
      await untilReachable(database, readiness, logger, options.signal, () => recordOrphanedEntries(database.db, layout, logger, orphans, readiness), { accepting: true });
    }
    // Last: in `serve`, the receiver takes deliveries by now, so the first redeliveries are not refused.
    if (reportsToGithub && settings.github.redeliverIntervalMs > 0) {
      const redeliverer = startRedelivererIfConfigured({ settings, db: database.db, logger, metrics });
      if (redeliverer) cleanups.push(() => redeliverer.close());
    }
    logger.info(
      { role, url: receives ? server?.url : undefined, metrics: metricsUrl, queues: layout.root, database: database.describe, locks: lockService?.kind, lockPrefix: lockService ? settings.lockPrefix : undefined },
      "deployq started",
    );
    let closing: Promise<void> | undefined;
    return {
      role,
      url: receives ? server?.url : undefined,
      metricsUrl,
      database,
      router,
      deployments,
      events,
      feed,
      live,
      close() {
        closing ??= closeAll();
        return closing;
      },
    };
  } catch (err) {
    await closeAll();
    throw err;
  }
}

/**
 * Runs `attempt` until it gets through to the database: while Postgres cannot be reached
 * (down, restarting, refusing connections) it waits, 0.5 s doubling to 10 s, says so in the
 * log and, before the receiver takes deliveries, in their 503s and /healthz. Any other
 * error (a wrong password, a missing database, a failed migration) is thrown: waiting
 * would not mend it.
 */
async function untilReachable<T>(
  database: Database,
  readiness: Readiness,
  logger: Logger,
  signal: AbortSignal | undefined,
  attempt: () => Promise<T>,
  options: { accepting?: boolean } = {},
): Promise<T> {
  for (let delayMs = 500; ; delayMs = Math.min(delayMs * 2, 10_000)) {
    signal?.throwIfAborted();
    try {
      return await attempt();
    } catch (err) {
      if (!databaseUnreachable(err)) throw err;
      const reason = `the database (${database.describe}) is not reachable: ${errorMessage(err)}`;
      if (!options.accepting) readiness.waiting(`deployq is starting: ${reason}`);
      logger.warn({ retryInMs: delayMs }, `${reason}; retrying${options.accepting ? "" : " (deliveries get 503 until then)"}`);
      await sleep(delayMs, undefined, { signal });
    }
  }
}

function allowlistRanges(settings: Settings, logger: Logger): GithubHookRanges {
  const { host, trustProxy } = settings;
  if (trustProxy.length === 0 && (host === "127.0.0.1" || host === "::1" || host === "localhost")) {
    logger.warn(
      `[github] allowlist is on and the receiver listens on ${host} with no [server] trust_proxy: behind a reverse proxy on this host every delivery comes from it and is refused; ` +
        `set trust_proxy = ["127.0.0.1"] (and have the proxy send X-Forwarded-For)`,
    );
  }
  return new GithubHookRanges({ apiUrl: settings.github.apiUrl, token: settings.secrets.githubToken, timeoutMs: settings.github.timeoutMs, dataDir: settings.dataDir, logger });
}

/** /healthz's "github allowlist": unhealthy only while no ranges are known (deliveries get 503). */
function describeRanges(ranges: GithubHookRanges): string {
  const state = ranges.state();
  if (!state.known) throw new Error(`GitHub's webhook ranges are not known yet (${state.reason}): deliveries get 503`);
  const from = state.fetchedAt.toISOString();
  return state.lastError ? `ok: the last refresh failed (${state.lastError}); using the cached ranges from ${from}` : `ok: ${state.ranges} ranges from GitHub, ${from}`;
}

async function assertReachable(urls: string[]): Promise<void> {
  const ping = await pingLockService(urls);
  if (!ping.ok) throw new Error(`lock service unreachable: ${ping.detail}`);
}

function assertLocks(locks: LockService): void {
  const health = locks.health();
  if (!health.ok) throw new Error(`${locks.kind}: ${health.error}`);
}

function assertHealthy(worker: { healthy: boolean }): void {
  if (!worker.healthy) throw new Error("the last pass over the queue failed; see the log");
}

export interface DaemonInfo {
  pid: number;
  role: Role;
  url: string;
}

const daemonFile = (dataDir: string, pid: number) => path.join(dataDir, "run", `${pid}.json`);

async function announceDaemon(dataDir: string, info: DaemonInfo): Promise<() => Promise<void>> {
  const file = daemonFile(dataDir, info.pid);
  await mkdir(path.dirname(file), { recursive: true });
  await writeFile(file, `${JSON.stringify(info)}\n`);
  return () => unlink(file).catch(() => {});
}

/** The HTTP address of a running daemon process, if it announced one in the data directory. */
export async function findDaemon(dataDir: string, pid: number): Promise<DaemonInfo | undefined> {
  try {
    return JSON.parse(await readFile(daemonFile(dataDir, pid), "utf8")) as DaemonInfo;
  } catch {
    return undefined;
  }
}
