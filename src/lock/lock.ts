import { createHash } from "node:crypto";
import { realpathSync } from "node:fs";
import path from "node:path";
import { DeployqError, TransientError } from "../errors.ts";

/**
 * Named locks. `using` holds the lock for as long as `fn` runs; `signal` aborts if the
 * lock is lost (a distributed lock that could not be extended), and every step checks it
 * before a side effect.
 *
 * Throws LockBusyError when another process holds the lock past the acquisition window
 * (try again soon), LockUnavailableError when the lock service cannot be reached (retry
 * with backoff; the outage is reported by `health`).
 */
export interface LockService {
  kind: string;
  /** `wait: false`: one attempt, LockBusyError at once if another process holds it (the caller polls). */
  using<T>(name: string, fn: (signal: AbortSignal) => Promise<T>, options?: UsingOptions): Promise<T>;
  health(): { ok: true } | { ok: false; error: string };
  close(): Promise<void>;
}

export interface UsingOptions {
  wait?: boolean;
}

export class LockBusyError extends DeployqError {
  constructor() {
    super("LOCK_BUSY", "the lock is held by another deployq process");
    this.name = "LockBusyError";
  }
}

export class LockUnavailableError extends TransientError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "LockUnavailableError";
  }
}

// Lock names within an install; the lock service of a process (withLockPrefix) puts the
// install's prefix in front of each, so the name in Redis is `<lock_prefix>:deployment:<name>`.
// A fleet deployment's lock is each host's own (`@<host_name>`): its hosts may share a lock
// prefix (the same queue path on every machine), and one waiting for its rollout's canary
// must not keep the canary from deploying.
export const deploymentLockName = (deployment: string, host?: string) => (host ? `deployment:${deployment}@${host}` : `deployment:${deployment}`);
export const ROUTER_LOCK = "router";
/** Taken by the nginx and certbot steps: one nginx configuration change at a time, fleet-wide. */
export const NGINX_LOCK = "nginx";

/** The one place a lock's full name is made: what is locked in Redis, and what messages show. */
export function lockName(prefix: string, name: string): string {
  return `${prefix}:${name}`;
}

/**
 * The default lock_prefix: `deployq:` and 8 hex digits of the SHA-256 of the queue root's real
 * path. Two installs on one host (or sharing one Redis) have different queue roots, so their
 * locks differ; the receiver, the workers and the CLI of one install load the same settings, so
 * they agree. The real path makes a symlinked or relative spelling of the root agree too; a root
 * not made yet resolves through its deepest existing parent, as it will once it exists.
 */
export function defaultLockPrefix(queuesDir: string): string {
  return `deployq:${createHash("sha256").update(realpathOfPath(path.resolve(queuesDir))).digest("hex").slice(0, 8)}`;
}

function realpathOfPath(p: string): string {
  try {
    return realpathSync(p);
  } catch (err) {
    const parent = path.dirname(p);
    if ((err as NodeJS.ErrnoException).code !== "ENOENT" || parent === p) throw err;
    return path.join(realpathOfPath(parent), path.basename(p));
  }
}

/** A lock service that takes every name under `prefix` (lockName). Every lock service deployq opens goes through it. */
export function withLockPrefix(locks: LockService, prefix: string): LockService {
  return {
    kind: locks.kind,
    using: (name, fn, options) => locks.using(lockName(prefix, name), fn, options),
    health: () => locks.health(),
    close: () => locks.close(),
  };
}

/**
 * `locks.using(name, fn)`, waiting while another process holds the lock (a busy lock is
 * retried with jittered backoff up to `maxDelayMs`) until `signal` aborts. An unreachable
 * lock service is not waited for: its LockUnavailableError is transient, and the caller
 * retries the whole deploy.
 */
export async function usingWhenFree<T>(
  locks: LockService,
  name: string,
  signal: AbortSignal,
  fn: (lockSignal: AbortSignal) => Promise<T>,
  maxDelayMs = 2_000,
): Promise<T> {
  for (let delay = 50; ; delay = Math.min(delay * 2, maxDelayMs)) {
    if (signal.aborted) throw new DeployqError("DEPLOY", `cancelled while waiting for the lock ${name} (shutdown or lost lock)`);
    try {
      return await locks.using(name, fn);
    } catch (err) {
      if (!(err instanceof LockBusyError)) throw err;
    }
    await new Promise<void>((resolve) => {
      const timer = setTimeout(done, delay / 2 + Math.random() * delay);
      signal.addEventListener("abort", done, { once: true });
      function done() {
        clearTimeout(timer);
        signal.removeEventListener("abort", done);
        resolve();
      }
    });
  }
}
