import { Redis } from "ioredis";
import type { Logger } from "pino";
import Redlock, { ExecutionError, type Lock, ResourceLockedError } from "redlock";
import { errorMessage, redactUrl } from "../errors.ts";
import { LockBusyError, type LockService, LockUnavailableError } from "./lock.ts";

export interface RedlockOptions {
  /** One URL per independent node: a lock needs a majority of them (Redlock's quorum). */
  urls: string[];
  /** How long a lock lives without extension; `using()` extends it at half its life. */
  ttlMs: number;
  logger: Logger;
  /** How long one acquisition waits for a lock held elsewhere before giving up (LockBusyError). */
  acquireTimeoutMs?: number;
}

/**
 * Distributed locks on Dragonfly/Redis with redlock's `using()`, which extends a lock
 * while its routine runs and aborts the routine's signal when an extension fails (the
 * lock may then be taken by someone else: every step checks the signal before a side
 * effect). An outage of the lock service is logged once, reported by `health`, and ends
 * by itself when the service comes back.
 */
export function createRedlockLocks(options: RedlockOptions): LockService {
  const { logger, ttlMs } = options;
  const clients = options.urls.map((url) => {
    const client = new Redis(url, {
      // Fail at once while disconnected instead of queueing: the caller retries with backoff.
      enableOfflineQueue: false,
      maxRetriesPerRequest: 1,
      connectTimeout: 2000,
      retryStrategy: (times) => Math.min(times * 200, 2000),
    });
    client.on("error", () => {}); // reported through the outage state, once
    // Each lock held listens for its nodes' "close" (below): one listener per lock, as many as deployments deploying at once.
    client.setMaxListeners(0);
    return client;
  });
  /** How many nodes must hold a lock (Redlock's majority). */
  const quorum = Math.floor(clients.length / 2) + 1;
  const retryDelay = 200;
  const redlock = new Redlock(clients, {
    retryCount: Math.max(1, Math.ceil((options.acquireTimeoutMs ?? 5000) / retryDelay)),
    retryDelay,
    retryJitter: 100,
  });
  let outage: string | undefined;
  redlock.on("error", (err: unknown) => {
    // Failed extensions and acquisitions also arrive here; a held lock is not an error.
    if (!(err instanceof ResourceLockedError)) reportOutage(errorMessage(err));
  });

  function reportOutage(message: string): void {
    if (outage !== undefined) return;
    outage = message;
    logger.error({ urls: options.urls.map(redactUrl), err: message }, "the lock service is unreachable: deploys wait in their queues and resume when it is back");
  }
  function reportUp(): void {
    if (outage === undefined) return;
    outage = undefined;
    logger.info({ urls: options.urls.map(redactUrl) }, "the lock service is reachable again: deploys resume");
  }

  async function classify(err: unknown): Promise<Error> {
    if (!(err instanceof ExecutionError)) return new LockUnavailableError(`lock service error: ${errorMessage(err)}`, { cause: err });
    const stats = await Promise.all(err.attempts).catch(() => []);
    const reasons = stats.flatMap((s) => [...s.votesAgainst.values()]);
    if (reasons.length > 0 && reasons.every((r) => r instanceof ResourceLockedError)) return new LockBusyError();
    const first = reasons.find((r) => !(r instanceof ResourceLockedError));
    return new LockUnavailableError(`the lock service did not answer: ${first ? errorMessage(first) : errorMessage(err)}`, { cause: err });
  }

  /** A client still connecting (at start, or reconnecting) gets a moment before its command would fail. */
  async function connected(): Promise<void> {
    await Promise.all(
      clients
        .filter((c) => c.status !== "ready")
        .map(
          (c) =>
            new Promise<void>((resolve) => {
              const timer = setTimeout(done, 5000);
              function done() {
                clearTimeout(timer);
                c.off("ready", done);
                resolve();
              }
              c.once("ready", done);
            }),
        ),
    );
  }

  /**
   * Extends a held lock at half its life, with one attempt each time and no retries: the
   * routine's signal aborts on the first failed extension (the lock service down, or the key
   * gone: a Redis restarted empty), and in any case a little before the lock would expire
   * without one (a paused process, an extension that hangs). redlock's own `using()` retried a
   * failed extension for its whole retry budget (about 5 s), long past a short lock's expiry,
   * while the routine went on acting as the lock's holder.
   */
  function keepExtended(name: string, first: Lock) {
    const controller = new AbortController();
    let lock = first;
    let extendTimer: NodeJS.Timeout | undefined;
    let deadline: NodeJS.Timeout | undefined;
    const lose = (why: string) => {
      if (controller.signal.aborted) return;
      logger.warn({ lock: name, err: why }, "lost a lock: what it protects stops before its next side effect");
      controller.abort(new Error(`the lock ${name} was lost: ${why}`));
    };
    const arm = () => {
      const left = lock.expiration - Date.now();
      // Expiry, less a margin for clock drift and the time an abort takes to be seen.
      deadline = setTimeout(() => lose("it was not extended before it expired (the process was paused, or the lock service hung)"), Math.max(0, left - Math.min(500, ttlMs / 10)));
      extendTimer = setTimeout(extend, Math.max(0, left / 2));
    };
    const extend = async () => {
      try {
        const next = await redlock.extend(lock, ttlMs, { retryCount: 0 });
        if (controller.signal.aborted) return;
        lock = next;
        clearTimeout(deadline);
        arm();
      } catch (err) {
        const classified = await classify(err);
        if (classified instanceof LockUnavailableError) reportOutage(classified.message);
        lose(`its extension failed: ${classified instanceof LockBusyError ? "the key is gone or held by another process (a Redis restarted empty?)" : classified.message}`);
      }
    };
    // The nodes this lock is known to live on: those connected when it was taken, and ever
    // since. A node whose connection drops may come back empty (a Redis without persistence,
    // restarted) and grant the lock to another process at once, long before the next extension
    // would find out: once fewer than a quorum are left, the lock is lost now.
    const holding = new Set(clients.filter((c) => c.status === "ready"));
    const onClose = (client: Redis) => () => {
      if (closing || !holding.delete(client) || holding.size >= quorum) return;
      lose(`its connection to ${clients.length - holding.size} of ${clients.length} lock node${clients.length === 1 ? "" : "s"} dropped (one restarted empty could grant it to another process)`);
    };
    const closeListeners = clients.map((c) => {
      const listener = onClose(c);
      c.on("close", listener);
      return () => c.off("close", listener);
    });
    arm();
    return {
      signal: controller.signal,
      stop() {
        clearTimeout(extendTimer);
        clearTimeout(deadline);
        for (const off of closeListeners) off();
      },
      async release() {
        try {
          await lock.release();
        } catch (err) {
          // The routine ran; only the release failed. The lock expires by itself.
          logger.warn({ lock: name, err: errorMessage(err) }, "could not release a lock; it expires by itself");
        }
      },
    };
  }

  let closing: Promise<void> | undefined;
  return {
    kind: `redlock (${clients.length} node${clients.length === 1 ? "" : "s"})`,
    async using(name, fn, options) {
      await connected();
      let lock: Lock;
      try {
        lock = await redlock.acquire([name], ttlMs, options?.wait === false ? { retryCount: 0 } : undefined);
      } catch (err) {
        const classified = await classify(err);
        if (classified instanceof LockUnavailableError) reportOutage(classified.message);
        throw classified;
      }
      reportUp();
      const held = keepExtended(name, lock);
      try {
        return await fn(held.signal);
      } finally {
        held.stop();
        await held.release();
      }
    },
    health() {
      return outage === undefined ? { ok: true } : { ok: false, error: outage };
    },
    close() {
      closing ??= redlock.quit().catch(() => {
        for (const c of clients) c.disconnect();
      });
      return closing;
    },
  };
}

