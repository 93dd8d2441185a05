import { createHash } from "node:crypto";
import type { Writable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import type { Db } from "../db/client.ts";
import { and, eq, gt, notInArray, sql } from "drizzle-orm";
import { type Rollout, type RolloutState, rollouts } from "../db/schema.ts";
import { DeployqError, errorMessage } from "../errors.ts";
import { LockBusyError, type LockService } from "../lock/lock.ts";
import { readRollout, rolloutHostRows, updateRolloutHost } from "./rollouts.ts";

/** A rollout that no longer lets this host switch: a host failed it (halted, rolled back), or a newer one superseded it. */
export class RolloutStopped extends DeployqError {
  readonly rollout: Rollout;
  constructor(rollout: Rollout) {
    super("ROLLOUT", describeStop(rollout));
    this.name = "RolloutStopped";
    this.rollout = rollout;
  }
  get state(): RolloutState {
    return this.rollout.state as RolloutState;
  }
}

export function describeStop(r: Rollout): string {
  if (r.state === "superseded") return `rollout ${r.id} was superseded by rollout ${r.supersededBy ?? "?"} (a newer push): this host does not switch to ${r.sha}`;
  const failed = `${r.failedHost ?? "a host"} failed${r.failedStep ? ` at ${r.failedStep}` : ""}: ${r.reason ?? "no reason recorded"}`;
  if (r.state === "rolled-back") return `rollout ${r.id} is being rolled back (${failed}): this host does not switch to ${r.sha}`;
  return `rollout ${r.id} is halted (${failed}): this host does not switch to ${r.sha}`;
}

/**
 * Whether `r` no longer lets `host` switch: it is halted or rolled back, or superseded by a
 * newer rollout that will reach this host (one not halted). A superseded rollout that is the
 * newest the host can have (a host catching up after the newer one halted) still lets it.
 */
export async function stopsHost(db: Db, r: Rollout, host: string): Promise<boolean> {
  if (r.state === "halted" || r.state === "rolled-back") return true;
  if (r.state !== "superseded") return false;
  const [newer] = await db
    .select({ id: rollouts.id })
    .from(rollouts)
    .where(and(eq(rollouts.deployment, r.deployment), gt(rollouts.id, r.id), notInArray(rollouts.state, ["halted", "rolled-back"]), sql`${rollouts.hosts} ? ${host}`))
    .limit(1);
  return newer !== undefined;
}

/** The lock of one of a rollout's `parallel` slots: the same name on every host of the fleet. */
export const rolloutSlotLock = (deployment: string, slot: number) => `rollout:${deployment}:${slot}`;

export interface RollingContext {
  db: Db;
  /** The fleet's lock service (its names shared by every host: see Settings.fleetLockPrefix). */
  locks: LockService;
  hostName: string;
  rolloutId: number;
  log: Writable;
  /** The deploy's: a shutdown or a cancel ends the wait. */
  signal: AbortSignal;
  /** How often a free slot is looked for (a Redis attempt per slot); the database is read every fifth look. */
  pollMs?: number;
  /** `fn` failed: called before the slot is let go, so that the rollout stops before another host can take the slot. */
  failed?: (err: unknown) => Promise<void>;
}

/**
 * Runs `fn` (the switch, the restart, the health check and the sites) once the rollout lets
 * this host: the rollout still running, its canary (when it has one and it is not this host)
 * live and healthy on the commit, and one of its `parallel` slots held. The slot is held
 * until `fn` ends; the time it was held is recorded as this host's switch interval.
 * Throws RolloutStopped when the rollout stops first.
 */
export async function whenRolloutLets<T>(ctx: RollingContext, fn: () => Promise<T>): Promise<T> {
  const { db, hostName, rolloutId, log } = ctx;
  const pollMs = ctx.pollMs ?? 50;
  const running = async (): Promise<Rollout> => {
    const r = await readRollout(db, rolloutId);
    if (!r) throw new DeployqError("ROLLOUT", `rollout ${rolloutId} is not in the database (removed by hand?): this host does not switch`);
    if (await stopsHost(db, r, hostName)) throw new RolloutStopped(r);
    return r;
  };
  const pause = (ms = pollMs) => sleep(ms, undefined, { signal: ctx.signal }).catch(() => {});
  const aborted = () => {
    if (ctx.signal.aborted) throw new DeployqError("DEPLOY", "the deploy was cancelled (shutdown or lost lock) while it waited for its turn in the rollout; the entry stays queued");
  };
  let rollout = await running();
  // A rollout that is no longer running but still lets this host (one catching up) has had its canary.
  if (rollout.canary && rollout.canary !== hostName && rollout.state === "running") {
    log.write(`rollout ${rollout.id}: waiting for the canary ${rollout.canary} to be live and healthy on ${rollout.sha}\n`);
    for (;;) {
      aborted();
      const canary = (await rolloutHostRows(db, rollout.id)).find((h) => h.host === rollout.canary);
      if (canary?.state === "succeeded") break;
      await pause(pollMs * 5);
      rollout = await running();
    }
    log.write(`rollout ${rollout.id}: the canary ${rollout.canary} is live\n`);
  }
  const parallel = Math.max(1, rollout.parallel);
  // Hosts start at different slots, so that with parallel > 1 they do not all queue for the first.
  const first = createHash("sha256").update(hostName).digest().readUInt32BE(0) % parallel;
  let looks = 0;
  log.write(`rollout ${rollout.id}: waiting for one of its ${parallel} slot${parallel === 1 ? "" : "s"}\n`);
  for (;;) {
    for (let i = 0; i < parallel; i++) {
      aborted();
      const slot = (first + i) % parallel;
      try {
        return await ctx.locks.using(
          rolloutSlotLock(rollout.deployment, slot),
          async () => {
            // A host may have failed the rollout while this one waited.
            await running();
            log.write(`rollout ${rollout.id}: holding slot ${slot}\n`);
            await updateRolloutHost(db, rollout.id, hostName, { switchStartedAt: new Date() });
            try {
              return await fn();
            } catch (err) {
              // (The worker records the failure again once it ends the deploy, should this fail.)
              await ctx.failed?.(err).catch((recordErr: unknown) => log.write(`rollout ${rollout.id}: could not record this host's failure yet (${errorMessage(recordErr)})\n`));
              throw err;
            } finally {
              // What is live is done by now: a database that cannot be told must not turn it into a failure.
              await updateRolloutHost(db, rollout.id, hostName, { switchEndedAt: new Date() }).catch((err: unknown) =>
                log.write(`rollout ${rollout.id}: could not record the end of this host's switch (${errorMessage(err)})\n`),
              );
            }
          },
          // One attempt per slot and look: a slot is polled, so that it is taken soon after it is freed.
          { wait: false },
        );
      } catch (err) {
        if (!(err instanceof LockBusyError)) throw err;
      }
    }
    await pause();
    // The slots are cheap to look at; the rollout's state (a halt, a newer push) is read every fifth look.
    if (++looks % 5 === 0) rollout = await running();
  }
}
