import type { LockService } from "../lock/lock.ts";
import type { Events } from "./bus.ts";

/**
 * A lock service that tells `events` when a lock is waited for, acquired (with the wait),
 * lost (its signal aborted while held) and released (with how long it was held). A lock
 * that could not be had (busy, or the service down) is only "waiting".
 */
export function withLockEvents(locks: LockService, events: Events): LockService {
  return {
    kind: locks.kind,
    health: () => locks.health(),
    close: () => locks.close(),
    async using(name, fn, options) {
      // deployment:<name>, or deployment:<name>@<host> for a fleet deployment (lock.ts deploymentLockName).
      const deployment = name.startsWith("deployment:") ? name.slice("deployment:".length).split("@")[0] : undefined;
      const asked = Date.now();
      events.emit({ kind: "lock", name: "waiting", lock: name, deployment });
      return locks.using(name, async (signal) => {
        const acquired = Date.now();
        events.emit({ kind: "lock", name: "acquired", lock: name, deployment, waitedMs: acquired - asked });
        const onLost = () => events.emit({ kind: "lock", name: "lost", lock: name, deployment, error: String((signal.reason as Error | undefined)?.message ?? signal.reason ?? "aborted") });
        signal.addEventListener("abort", onLost, { once: true });
        try {
          return await fn(signal);
        } finally {
          signal.removeEventListener("abort", onLost);
          events.emit({ kind: "lock", name: "released", lock: name, deployment, heldMs: Date.now() - acquired });
        }
      }, options);
    },
  };
}
