import { type Settings, isFleet } from "../../config/load.ts";
import type { Db } from "../../db/client.ts";
import { lockEventsOf } from "../../db/queries/lock-holders.ts";
import type { LockInspector } from "../../lock/inspect.ts";
import { deploymentLockName, lockName } from "../../lock/lock.ts";

/** A deployment's lock as the overview shows it. */
export interface LockState {
  /** held: a deploy holds it; free; unknown: the lock service did not answer. */
  state: "held" | "free" | "unknown";
  /** The process holding it, from its "acquired" event: `pid 4242 on web-1`. */
  holder: string | undefined;
  since: Date | undefined;
  /** The time left before the lock expires unless extended (Redis locks only). */
  ttlMs: number | undefined;
  /** The last holder took it and never released it, and the lock has expired since (a killed worker). */
  abandoned: boolean;
}

/**
 * Who holds each deployment's lock and for how long yet: the holder from the newest lock
 * event every process wrote to the events table, the time left from Redis (PTTL, read-only)
 * when locks are distributed. In-process locks have no TTL: they end with their process.
 */
export async function lockStates(settings: Settings, db: Db, inspector: LockInspector | undefined, deployments: readonly string[], now = Date.now()): Promise<Map<string, LockState>> {
  const full = (d: string) => {
    const deployment = settings.deployments.get(d);
    return lockName(settings.lockPrefix, deploymentLockName(d, deployment && isFleet(deployment) ? settings.hostName : undefined));
  };
  const [events, ttls] = await Promise.all([lockEventsOf(db, deployments), inspector ? inspector.ttls(deployments.map(full)) : Promise.resolve(undefined)]);
  const states = new Map<string, LockState>();
  for (const d of deployments) {
    const event = events.get(d);
    const acquired = event?.name === "acquired" ? event : undefined;
    const holder = acquired ? `pid ${acquired.pid ?? "?"} on ${acquired.host ?? "?"}` : undefined;
    if (!inspector) {
      states.set(d, { state: acquired ? "held" : "free", holder, since: acquired?.at, ttlMs: undefined, abandoned: false });
      continue;
    }
    if (!ttls) {
      states.set(d, { state: "unknown", holder, since: acquired?.at, ttlMs: undefined, abandoned: false });
      continue;
    }
    const ttl = ttls.get(full(d));
    // Free while the newest event says acquired: either its release is not written yet (the
    // event writer batches), or its holder died holding it. A dead holder's key outlives its
    // acquisition by at least lock_ttl_ms, so only an acquisition older than that was abandoned.
    const abandoned = acquired !== undefined && now - acquired.at.getTime() >= settings.lockTtlMs;
    if (ttl === undefined) states.set(d, { state: "free", holder: undefined, since: undefined, ttlMs: undefined, abandoned });
    else states.set(d, { state: "held", holder: holder ?? "another process (no event of its acquisition yet)", since: acquired?.at, ttlMs: ttl, abandoned: false });
  }
  return states;
}
