import { LockBusyError, type LockService } from "./lock.ts";

/**
 * In-process locks: enough when one workers process runs (the default without REDIS_URL).
 * Waiters are served in arrival order; the lock is never lost, so the signal never aborts.
 */
export function createLocalLocks(): LockService {
  const tails = new Map<string, Promise<void>>();
  return {
    kind: "in-process",
    async using(name, fn, options) {
      if (options?.wait === false && tails.has(name)) throw new LockBusyError();
      const previous = tails.get(name) ?? Promise.resolve();
      let release!: () => void;
      const mine = new Promise<void>((resolve) => (release = resolve));
      const tail = previous.then(() => mine);
      tails.set(name, tail);
      await previous;
      try {
        return await fn(new AbortController().signal);
      } finally {
        release();
        if (tails.get(name) === tail) tails.delete(name);
      }
    },
    health: () => ({ ok: true }),
    async close() {},
  };
}
