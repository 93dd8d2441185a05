import path from "node:path";
import type { Logger } from "pino";
import type { Settings } from "../config/load.ts";
import type { Db } from "../db/client.ts";
import { type DeliveryRow, recordOutcomes } from "../db/queries/record-delivery.ts";
import { parseEntry, summarizePayload } from "../queue/entry.ts";
import { mayBeUnfinished, readEntryFile, SETTLE_MS } from "../queue/read.ts";
import { parseEntryName } from "../queue/entry-name.ts";
import type { QueueLayout } from "../queue/layout.ts";
import { Unmovable, deadLetterEntry } from "../queue/dead-letter.ts";
import { handOverInto, removeEntries } from "../queue/move.ts";
import { QueueWorker } from "../queue/watch.ts";
import { type LockService, ROUTER_LOCK } from "../lock/lock.ts";
import { type RouteDecision, routeEvent } from "../queue/route.ts";
import { type Events, noEvents } from "../events/bus.ts";
import { errorMessage } from "../errors.ts";
import { enqueueGithubWrites } from "../github/outbox.ts";
import type { GithubReports } from "../github/reports.ts";
import type { DeploymentNotifier } from "../notify/notify.ts";
import { deploysHere, isFleet } from "../config/load.ts";
import { type NewRollout, recordRollouts } from "../fleet/rollouts.ts";

export interface RouterDeps {
  settings: Pick<Settings, "deployments" | "rescanIntervalMs" | "hostName">;
  layout: QueueLayout;
  db: Db;
  /** Several workers processes (with REDIS_URL) route one entry at a time between them. */
  locks: LockService;
  logger: Logger;
  watch: boolean;
  /** Where routed, voided and dead-lettered deliveries are told (none by default). */
  events?: Events;
  /** What each deployment tells GitHub (GITHUB_TOKEN set): a routed push is "queued" on its commit (and its GitHub deployment). */
  statuses?: ReadonlyMap<string, GithubReports>;
  /** [[notify]] without a deployments list: told of the entries router/ moves to dead-letter/. */
  notify?: DeploymentNotifier;
  /** Called once rollouts are recorded: this host's follower takes them without waiting for NOTIFY (PGlite has none). */
  onRollouts?: () => void;
}

/** Entries routed together: one database statement, one fsync per directory. */
const BATCH = 200;

/**
 * Takes the entries of router/, oldest first, in batches: decides for each which
 * deployments follow its repository and branch (or voids it, with the reason), records
 * the outcomes, hands the entries over (hard link, or copy), then removes them from router/.
 * Each step is idempotent, so a crash anywhere repeats work and never loses an event.
 */
export function createRouter(deps: RouterDeps): QueueWorker {
  const { layout, db, logger } = deps;
  const deployments = [...deps.settings.deployments.values()];
  const { hostName } = deps.settings;
  const unmovable = new Unmovable(logger, "router");

  async function handle(names: string[], stopping: () => boolean): Promise<void> {
    for (let i = 0; i < names.length && !stopping(); i += BATCH) {
      // Under the router lock, and re-read inside it: another process may have routed an
      // entry meanwhile, and handing it over a second time would deploy it twice.
      await deps.locks.using(ROUTER_LOCK, () => routeBatch(names.slice(i, i + BATCH)));
    }
  }

  async function routeBatch(names: string[]): Promise<void> {
    const routed: Array<{ name: string; file: string; row: DeliveryRow; decision: RouteDecision; text: string }> = [];
    // An entry that may still be being written is looked at again once it has settled.
    let unsettled = false;
    for (const name of names) {
      const file = path.join(layout.router, name);
      const read = await readEntryFile(file);
      if (!read.ok) {
        if ("gone" in read) continue; // routed by another pass or process
        await unmovable.attempt(file, read.problem, () => deadLetter(file, name, read.problem, undefined));
        continue;
      }
      const parsed = parseEntry(read.text);
      if (!parsed.ok) {
        if (mayBeUnfinished(read)) {
          unsettled = true;
          continue;
        }
        await unmovable.attempt(file, parsed.error, () => deadLetter(file, name, parsed.error, parsed.json));
        continue;
      }
      const { entry } = parsed;
      const summary = summarizePayload(entry.payload);
      const decision = routeEvent(entry, deployments);
      const row: DeliveryRow = {
        hookId: entry.hook_id,
        deliveryId: entry.delivery_id,
        event: entry.event,
        repository: summary.repository,
        ref: summary.ref,
        afterSha: summary.after,
        receivedAt: validDate(entry.received_at),
        entry: name,
        ...(decision.kind === "void" ? { outcome: "voided", reason: decision.reason } : { outcome: "routed", routedTo: decision.deployments }),
      };
      routed.push({ name, file, row, decision, text: read.text });
    }
    if (unsettled) setTimeout(() => void worker.kick(), SETTLE_MS).unref();
    if (routed.length === 0) return;
    // A push to a fleet deployment becomes a rollout, which every host of the fleet takes
    // into its own queue (src/fleet/follower.ts): recorded with the delivery's outcome.
    const newRollouts: NewRollout[] = routed.flatMap((r) =>
      r.decision.kind === "deliver"
        ? r.decision.deployments.flatMap((d) => {
            const deployment = deps.settings.deployments.get(d)!;
            if (!isFleet(deployment)) return [];
            const after = r.decision.kind === "deliver" ? r.decision.after : undefined;
            const { parallel, canary, on_failure } = deployment.rollout!;
            return [{ deployment: d, entry: r.name, deliveryId: r.row.deliveryId, ref: r.row.ref, sha: after, hosts: deployment.hosts, parallel, canary, onFailure: on_failure, body: r.text }];
          })
        : [],
    );
    // Record first: if the database is down nothing has moved yet, and the pass is retried.
    if (newRollouts.length === 0) await recordOutcomes(db, routed.map((r) => r.row));
    else {
      await db.transaction(async (tx) => {
        await recordOutcomes(tx as unknown as Db, routed.map((r) => r.row));
        await recordRollouts(tx as unknown as Db, newRollouts);
      });
      deps.onRollouts?.();
    }
    // Before the hand-over: the "queued" status is older than anything the deployment's worker writes.
    if (deps.statuses) {
      const statuses = deps.statuses;
      const writes = routed.flatMap((r) =>
        r.decision.kind === "deliver" && r.row.event === "push"
          ? r.decision.deployments.flatMap((d) => {
              const after = r.decision.kind === "deliver" ? r.decision.after : undefined;
              const reports = statuses.get(d);
              // A fleet deployment: the commit status only (no GitHub Deployment is written for a rollout yet: one left "queued" would stay so).
              if (reports && isFleet(deps.settings.deployments.get(d)!)) return reports.statuses.queued(after).map((status) => ({ kind: "status" as const, status }));
              return reports?.queued(r.name, after) ?? [];
            })
          : [],
      );
      if (writes.length > 0) await db.transaction((tx) => enqueueGithubWrites(tx as unknown as typeof db, writes));
    }
    const byDeployment = new Map<string, string[]>();
    for (const r of routed) {
      if (r.decision.kind === "void") continue;
      for (const d of r.decision.deployments) {
        const deployment = deps.settings.deployments.get(d)!;
        // A fleet deployment's push reaches this host's queue as a rollout; a check event only where it deploys.
        if (isFleet(deployment) && (r.decision.kind === "deliver" || !deploysHere(deployment, hostName))) continue;
        byDeployment.set(d, [...(byDeployment.get(d) ?? []), r.file]);
      }
    }
    for (const [deployment, files] of byDeployment) await handOverInto(layout, files, layout.deployment(deployment));
    await removeEntries(routed.map((r) => r.file));
    const events = deps.events ?? noEvents;
    for (const { name, row, decision } of routed) {
      const about = { kind: "delivery", deliveryId: row.deliveryId, hookId: row.hookId, event: row.event, repository: row.repository, ref: row.ref, entry: name } as const;
      if (decision.kind === "void") {
        events.emit({ ...about, name: "voided", reason: decision.reason });
        logger.info({ entry: name, event: row.event, repository: row.repository, ref: row.ref, reason: decision.reason }, "event voided");
      } else if (decision.kind === "wake") {
        events.emit({ ...about, name: "routed", deployments: decision.deployments });
        logger.info({ entry: name, event: row.event, repository: decision.repository, sha: decision.sha, deployments: decision.deployments }, "check event routed to the deployments that wait for checks");
      } else {
        events.emit({ ...about, name: "routed", deployments: decision.deployments });
        for (const deployment of decision.deployments) events.emit({ kind: "deploy", name: "queued", deployment, entry: name, sha: decision.after });
        logger.info({ entry: name, repository: decision.repository, ref: decision.ref, sha: decision.after, deployments: decision.deployments }, "event routed");
      }
    }
  }

  /** A malformed entry is moved aside with its error, never deleted: an admin can fix and requeue it. */
  async function deadLetter(file: string, name: string, error: string, json: Record<string, unknown> | undefined): Promise<void> {
    const deliveryId = parseEntryName(name)?.deliveryId ?? name;
    await recordOutcomes(db, [
      {
        hookId: typeof json?.hook_id === "string" ? json.hook_id : "",
        deliveryId: typeof json?.delivery_id === "string" ? json.delivery_id : deliveryId,
        event: typeof json?.event === "string" ? json.event : "(malformed)",
        repository: undefined,
        ref: undefined,
        afterSha: undefined,
        receivedAt: new Date(),
        entry: name,
        outcome: "dead-letter",
        reason: error,
      },
    ]);
    await deadLetterEntry(layout, file, "router", json, error);
    const writes = deps.notify?.write(name, null, { what: "dead-lettered", sha: undefined, error }) ?? [];
    // After the move: a crash between the two loses this notification, never sends it twice.
    if (writes.length > 0) await db.transaction((tx) => enqueueGithubWrites(tx as unknown as typeof db, writes)).catch((err: unknown) => logger.warn({ entry: name, err: errorMessage(err) }, "could not write the dead-letter notification"));
    (deps.events ?? noEvents).emit({ kind: "delivery", name: "dead-lettered", deliveryId: typeof json?.delivery_id === "string" ? json.delivery_id : deliveryId, entry: name, reason: error });
    logger.error({ entry: name, err: error }, `malformed entry moved to dead-letter/router/; fix it, then \`deployq queue requeue router --entry ${name}\``);
  }

  const worker = new QueueWorker({
    name: "router",
    dir: layout.router,
    handle,
    rescanIntervalMs: deps.settings.rescanIntervalMs,
    watch: deps.watch,
    logger,
  });
  return worker;
}

function validDate(value: string): Date {
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? new Date() : d;
}
