import { mkdir, readFile, unlink, writeFile } from "node:fs/promises";
import path from "node:path";
import type { Logger } from "pino";
import { type Settings, requireWebhookSecrets } from "./config/load.ts";
import { type Database, openDatabase } from "./db/client.ts";
import { recordOrphanedEntries } from "./http/github-webhook.ts";
import { type RunningServer, createApp, listen } from "./http/server.ts";
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

export type Role = "serve" | "receiver" | "workers";

export interface Daemon {
  role: Role;
  /** Where the HTTP server listens (the receiver, or the workers' health endpoint). */
  url: string | undefined;
  database: Database;
  router: QueueWorker | undefined;
  deployments: Map<string, DeploymentWorker>;
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
}

/**
 * The composition root: open the database and migrate, prepare the queue root, start the
 * HTTP server and the workers this role runs. Every resource started is released by close(),
 * in reverse order, even when one release fails.
 */
export async function startDaemon(options: StartOptions): Promise<Daemon> {
  const { settings, role, logger } = options;
  const receives = role !== "workers";
  const works = role !== "receiver";
  const secrets = receives ? requireWebhookSecrets(settings) : undefined;
  const layout = queueLayout(settings.queuesDir);
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
    await database.migrate();
    await ensureQueueDirs(layout, settings.deployments.keys());
    // Entries named from now on sort after every one already issued, whatever this clock says.
    await seedEntryClock(layout, await newestEntryNames(database.db));
    const swept = await sweepTmp(layout);
    if (swept.length > 0) logger.warn({ files: swept }, "removed temporaries left in .tmp/ by a process that died");

    let router: QueueWorker | undefined;
    let lockService: LockService | undefined;
    const deployments = new Map<string, DeploymentWorker>();
    if (works) {
      const redisUrls = settings.secrets.redisUrls;
      const locks = withLockPrefix(
        options.locks ?? (redisUrls.length > 0 ? createRedlockLocks({ urls: redisUrls, ttlMs: settings.lockTtlMs, logger }) : createLocalLocks()),
        settings.lockPrefix,
      );
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
      router = createRouter({ settings, layout, db: database.db, locks, logger, watch: options.watch ?? true });
      const started = router;
      cleanups.push(() => started.close());
      for (const deployment of settings.deployments.values()) {
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
          }),
        );
      }
      cleanups.push(() => Promise.all([...deployments.values()].map((w) => w.close())).then(() => {}));
      await router.start();
      for (const worker of deployments.values()) await worker.start();
    }
    let server: RunningServer | undefined;
    if (receives) {
      await recordOrphanedEntries(database.db, layout, logger);
      const app = createApp({
        db: database.db,
        layout,
        logger,
        secrets,
        deployments: [...settings.deployments.values()],
        status: (only) => collectStatus(settings, database.db, only),
        health: [
          ...(router ? [{ name: "router", check: async () => assertHealthy(router) }] : []),
          ...(lockService
            ? [{ name: "locks", check: async () => assertLocks(lockService!) }]
            : settings.secrets.redisUrls.length > 0
              ? // The receiver alone: the workers' lock service, as reachable from here.
                [{ name: "locks", check: () => assertReachable(settings.secrets.redisUrls) }]
              : []),
          ...[...deployments.values()].map((w) => ({ name: `deployment:${w.name}`, check: async () => assertHealthy(w) })),
        ],
      });
      server = await listen(app, settings.host, settings.port);
      const running = server;
      cleanups.push(() => running.close());
      // Where a CLI command finds this daemon (the port may have been chosen by the system).
      const announced = await announceDaemon(settings.dataDir, { pid: process.pid, role, url: running.url });
      cleanups.push(announced);
    }
    logger.info(
      { role, url: server?.url, queues: layout.root, database: database.describe, locks: lockService?.kind, lockPrefix: lockService ? settings.lockPrefix : undefined },
      "deployq started",
    );
    let closing: Promise<void> | undefined;
    return {
      role,
      url: server?.url,
      database,
      router,
      deployments,
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
