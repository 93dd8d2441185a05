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
  using<T>(name: string, fn: (signal: AbortSignal) => Promise<T>): Promise<T>;
  health(): { ok: true } | { ok: false; error: string };
  close(): Promise<void>;
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

export const deploymentLockName = (deployment: string) => `deployq:deployment:${deployment}`;
export const ROUTER_LOCK = "deployq:router";
/** Taken by the nginx and certbot steps: one nginx configuration change at a time, fleet-wide. */
export const NGINX_LOCK = "deployq:nginx";

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
