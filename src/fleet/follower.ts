import { randomUUID } from "node:crypto";
import type { Logger } from "pino";
import type { Deployment } from "../config/load.ts";
import type { Database } from "../db/client.ts";
import { errorMessage } from "../errors.ts";
import { type QueueEntry, parseEntry } from "../queue/entry.ts";
import { entryName } from "../queue/entry-name.ts";
import type { QueueLayout } from "../queue/layout.ts";
import { writeEntryDurably } from "../queue/write.ts";
import { ROLLOUTS_CHANNEL, checkIn, markHandedOver, pendingHandOvers, pruneRollouts, rollbacksDue, updateRolloutHost } from "./rollouts.ts";

export interface FollowerDeps {
  database: Database;
  layout: QueueLayout;
  hostName: string;
  /** The fleet deployments this host deploys. */
  deployments: readonly Deployment[];
  /** The safety net under LISTEN/NOTIFY: a look at the rollouts every so often. */
  pollIntervalMs: number;
  logger: Logger;
}

/**
 * Brings the rollouts of the fleet deployments this host serves into its own queues: on
 * each NOTIFY from a router (any host's), and every `pollIntervalMs` in case one was missed
 * (a connection that dropped, a host that was down). A rollout's entry is written durably
 * into queues/deployments/<name>/ under the router's entry name, then the hand-over row is
 * inserted; a crash in between writes the same file again, which the deployment worker drops
 * if it has had its turn already. A rollout that went back (on_failure = "rollback") on
 * which this host had switched gets a rollback entry here.
 */
export class FleetFollower {
  private readonly deps: FollowerDeps;
  private timer: NodeJS.Timeout | undefined;
  private unlisten: (() => Promise<void>) | undefined;
  private running: Promise<void> | undefined;
  private again = false;
  private closed = false;
  private failing = false;
  private prunedAt = 0;

  constructor(deps: FollowerDeps) {
    this.deps = deps;
  }

  async start(): Promise<void> {
    const names = new Set(this.deps.deployments.map((d) => d.name));
    this.unlisten = await this.deps.database.listen(ROLLOUTS_CHANNEL, (deployment) => {
      if (names.has(deployment)) void this.kick();
    });
    await this.kick();
    this.timer = setInterval(() => void this.kick(), this.deps.pollIntervalMs);
    this.timer.unref();
  }

  /** One pass (or, while one runs, one more after it). */
  kick(): Promise<void> {
    if (this.closed) return Promise.resolve();
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      do {
        this.again = false;
        await this.pass();
      } while (this.again && !this.closed);
    })().finally(() => (this.running = undefined));
    return this.running;
  }

  private async pass(): Promise<void> {
    const { database, hostName, logger } = this.deps;
    const db = database.db;
    const names = this.deps.deployments.map((d) => d.name);
    try {
      await checkIn(db, hostName, process.pid);
      for (const rollout of await pendingHandOvers(db, hostName, names)) {
        const parsed = parseEntry(rollout.body);
        if (!parsed.ok) {
          logger.error({ deployment: rollout.deployment, rollout: rollout.id, err: parsed.error }, "a rollout's entry does not parse; this host skips it");
          await updateRolloutHost(db, rollout.id, hostName, { state: "failed", error: `its entry does not parse: ${parsed.error}` });
          continue;
        }
        const entry: QueueEntry = { ...parsed.entry, rollout: rollout.id };
        await writeEntryDurably(this.deps.layout, this.deps.layout.deployment(rollout.deployment), rollout.entry, entry);
        if (await markHandedOver(db, rollout.id, hostName)) {
          logger.info({ deployment: rollout.deployment, rollout: rollout.id, sha: rollout.sha, entry: rollout.entry }, "rollout taken into this host's queue");
        }
      }
      for (const { rollout, mine } of await rollbacksDue(db, hostName, names)) {
        const id = randomUUID();
        const name = entryName(id);
        const entry: QueueEntry = {
          event: "rollback",
          delivery_id: id,
          hook_id: "",
          received_at: new Date().toISOString(),
          source: `rollout ${rollout.id}`,
          payload: mine.previousRelease ? { to: mine.previousRelease } : {},
          rollout: rollout.id,
        };
        await writeEntryDurably(this.deps.layout, this.deps.layout.deployment(rollout.deployment), name, entry);
        await updateRolloutHost(db, rollout.id, hostName, { state: "rolling-back" });
        logger.warn({ deployment: rollout.deployment, rollout: rollout.id, failedHost: rollout.failedHost, to: mine.previousRelease }, "rollout rolled back: going back to the release before it");
      }
      // Old rollouts go once a minute (any host may: the newest keep_deploys of each deployment stay).
      if (Date.now() - this.prunedAt > 60_000) {
        this.prunedAt = Date.now();
        for (const d of this.deps.deployments) {
          const removed = await pruneRollouts(db, d.name, d.keep_deploys);
          if (removed > 0) logger.debug({ deployment: d.name, removed }, "removed old rollouts");
        }
      }
      if (this.failing) logger.info("rollouts are read again");
      this.failing = false;
    } catch (err) {
      if (!this.failing) logger.warn({ err: errorMessage(err) }, "could not read the fleet's rollouts; trying again at the next look");
      this.failing = true;
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    await this.running;
    await this.unlisten?.().catch(() => {});
  }
}
