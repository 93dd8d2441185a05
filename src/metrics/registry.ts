import { emitterEventNames } from "@octokit/webhooks";
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import type { EventListener } from "../events/bus.ts";
import type { DeployOutcomeName, StampedEvent } from "../events/types.ts";
import { parseEntryName } from "../queue/entry-name.ts";
import type { QueueLayout } from "../queue/layout.ts";
import { LOCK_WAIT_BUCKETS, LONG_WORK_BUCKETS, PICKUP_BUCKETS, REQUEST_BUCKETS } from "./buckets.ts";
import { readQueueGauges } from "./queue-gauges.ts";
import { readRolloutGauges } from "./rollout-gauges.ts";
import { type Deployment, isFleet } from "../config/load.ts";
import type { Db } from "../db/client.ts";

/** How a deploy ended, as a label value (Prometheus label values by convention use underscores). */
export const DEPLOY_OUTCOMES = ["succeeded", "failed", "superseded", "rolled_back", "already_deployed", "interrupted", "cancelled"] as const;
export type DeployOutcomeLabel = (typeof DEPLOY_OUTCOMES)[number];

/** A `retrying` attempt is not a deploy's end: it is counted apart (deployq_deploy_retries_total). */
export function outcomeLabel(outcome: DeployOutcomeName): DeployOutcomeLabel | undefined {
  return outcome === "retrying" ? undefined : (outcome.replace("-", "_") as DeployOutcomeLabel);
}

/**
 * X-GitHub-Event comes from the request, signed or not: only GitHub's own event names may
 * become a label value, so that no one can grow the series without bound.
 */
const GITHUB_EVENTS = new Set<string>(emitterEventNames.filter((name) => !name.includes(".")));
export function eventLabel(header: string | undefined): string {
  if (header === undefined || header === "") return "none";
  return GITHUB_EVENTS.has(header) ? header : "other";
}

/**
 * prom-client's default gauges named `*_total` break the naming convention that promtool
 * checks (only counters end in _total); their per-type twins (nodejs_active_handles{type}
 * and the like) stay and sum to the same figure.
 */
const NONCONFORMING_DEFAULTS = ["nodejs_active_handles_total", "nodejs_active_requests_total", "nodejs_active_resources_total"];

export interface MetricsOptions {
  layout: QueueLayout;
  deployments: readonly Deployment[];
  /**
   * This process runs the deployment workers: its deploy counters start at 0 for every
   * configured deployment and outcome, so that increase() sees the first failure.
   */
  deploys: boolean;
  /** This process sends commit statuses to GitHub: deployq_github_sends_total starts at 0 for each result. */
  github?: boolean;
  /** This process may ask GitHub to redeliver lost deliveries: deployq_github_redeliveries_total starts at 0 for each result. */
  redeliveries?: boolean;
  /** The notifiers this process sends to ([[notify]] url_env): deployq_notifications_total starts at 0 for each and each result. */
  notifiers?: readonly string[];
}

/** What one commit status send to GitHub came to (src/github/sender.ts). */
export const GITHUB_SEND_RESULTS = ["success", "transient", "rate_limited", "permanent"] as const;

/** What one request to GitHub for a redelivery came to (src/github/redeliver.ts). */
export const GITHUB_REDELIVERY_RESULTS = ["requested", "failed"] as const;

export interface Metrics {
  registry: Registry;
  /** Counts what this process's events tell; add it with `events.on(metrics.listener)`. */
  listener: EventListener;
  /** One POST /github-webhook answered (the status code it got), and how long it took. */
  observeWebhookRequest(event: string | undefined, status: number, seconds: number): void;
  /** One commit status send to GitHub, by its result. */
  countGithubSend(result: (typeof GITHUB_SEND_RESULTS)[number]): void;
  /** One notification sent (or not) to a notifier, by its result. */
  countNotification(notifier: string, result: (typeof GITHUB_SEND_RESULTS)[number]): void;
  /** One redelivery deployq asked GitHub for: requested (GitHub took the request) or failed. */
  countGithubRedelivery(result: (typeof GITHUB_REDELIVERY_RESULTS)[number]): void;
  /**
   * From now on (the database is reached), each scrape also reads deployq_rollout_hosts from
   * `db`, for the fleet deployments (none: nothing is read).
   */
  readRolloutsFrom(db: Db): void;
  /** The text exposition format, with the queue and release gauges read from disk now (and the rollout gauge from the database). */
  scrape(): Promise<string>;
  contentType: string;
}

/**
 * The metrics of one daemon, in a registry of its own (not prom-client's global one: tests
 * run several daemons in one process). Counters and histograms follow the event stream;
 * queue depths and the current releases are read from disk at each scrape, because the
 * directories are the truth (another process, or an admin with mv, changes them too).
 */
export function createMetrics(options: MetricsOptions): Metrics {
  const registry = new Registry();
  const registers = [registry];
  collectDefaultMetrics({ register: registry });
  for (const name of NONCONFORMING_DEFAULTS) registry.removeSingleMetric(name);

  const webhookRequests = new Counter({ name: "deployq_webhook_requests_total", help: "POST /github-webhook requests answered, by X-GitHub-Event and HTTP status", labelNames: ["event", "status"], registers });
  const webhookDuration = new Histogram({ name: "deployq_webhook_request_duration_seconds", help: "Time to answer a POST /github-webhook", buckets: [...REQUEST_BUCKETS], registers });
  const pickup = new Histogram({ name: "deployq_router_pickup_seconds", help: "Time from an entry's arrival in router/ to the router handling it (routed, voided or dead-lettered)", buckets: [...PICKUP_BUCKETS], registers });
  const deploys = new Counter({ name: "deployq_deploys_total", help: "Deploys ended, by deployment and outcome", labelNames: ["deployment", "outcome"], registers });
  const retries = new Counter({ name: "deployq_deploy_retries_total", help: "Deploy attempts that failed and were put back for a retry", labelNames: ["deployment"], registers });
  const deployDuration = new Histogram({ name: "deployq_deploy_duration_seconds", help: "Duration of a deploy, from its start to its outcome", labelNames: ["deployment", "outcome"], buckets: [...LONG_WORK_BUCKETS], registers });
  const stepDuration = new Histogram({ name: "deployq_deploy_step_duration_seconds", help: "Duration of one step of a deploy, by kind", labelNames: ["deployment", "step"], buckets: [...LONG_WORK_BUCKETS], registers });
  const inProgress = new Gauge({ name: "deployq_deploys_in_progress", help: "Deploys running now", labelNames: ["deployment"], registers });
  const lockWait = new Histogram({ name: "deployq_lock_wait_seconds", help: "Time waited for a lock before it was acquired", labelNames: ["lock"], buckets: [...LOCK_WAIT_BUCKETS], registers });
  const lastDeploy = new Gauge({ name: "deployq_last_deploy_timestamp_seconds", help: "When a deploy last ended, by deployment and outcome (Unix time)", labelNames: ["deployment", "outcome"], registers });
  const queueEntries = new Gauge({ name: "deployq_queue_entries", help: "Entries waiting in a queue directory (router, or a deployment's)", labelNames: ["queue"], registers });
  const oldestAge = new Gauge({ name: "deployq_queue_oldest_entry_age_seconds", help: "Age of the oldest entry waiting in a queue directory, from its name (0 when empty)", labelNames: ["queue"], registers });
  const deadLetters = new Gauge({ name: "deployq_dead_letter_entries", help: "Entries in a dead-letter directory, waiting for an admin", labelNames: ["queue"], registers });
  const rolloutHosts = new Gauge({
    name: "deployq_rollout_hosts",
    help: "Hosts of a fleet deployment's newest rollout in each state (pending: not handed over yet), read from the database at each scrape",
    labelNames: ["deployment", "state"],
    registers,
  });
  const fleet = options.deployments.filter(isFleet);
  let rolloutDb: Db | undefined;
  const releaseInfo = new Gauge({ name: "deployq_release_info", help: "The release `current` points at, per deployment (releases strategy); always 1", labelNames: ["deployment", "release"], registers });

  const githubSends = new Counter({ name: "deployq_github_sends_total", help: "Commit status sends to GitHub, by result (success, transient, rate_limited, permanent)", labelNames: ["result"], registers });
  if (options.github) for (const result of GITHUB_SEND_RESULTS) githubSends.inc({ result }, 0);
  const githubRedeliveries = new Counter({ name: "deployq_github_redeliveries_total", help: "Redeliveries of lost webhook deliveries asked of GitHub, by result (requested, failed)", labelNames: ["result"], registers });
  if (options.redeliveries) for (const result of GITHUB_REDELIVERY_RESULTS) githubRedeliveries.inc({ result }, 0);

  const notifications = new Counter({ name: "deployq_notifications_total", help: "Notification sends to each [[notify]] notifier (by its url_env), by result (success, transient, rate_limited, permanent)", labelNames: ["notifier", "result"], registers });
  for (const notifier of options.notifiers ?? []) for (const result of GITHUB_SEND_RESULTS) notifications.inc({ notifier, result }, 0);

  const names = options.deployments.map((d) => d.name);
  for (const deployment of names) inProgress.set({ deployment }, 0);
  if (options.deploys) {
    for (const deployment of names) {
      retries.inc({ deployment }, 0);
      for (const outcome of DEPLOY_OUTCOMES) deploys.inc({ deployment, outcome }, 0);
    }
  }

  // Deploys started and not yet ended, per deployment (by deploy ID).
  const running = new Map<string, Set<number>>();

  const listener: EventListener = (e: StampedEvent) => {
    const at = Date.parse(e.at);
    if (e.kind === "delivery") {
      // Only the router's events name an entry of router/: the receiver's voided delivery never had one.
      if ((e.name === "routed" || e.name === "voided" || e.name === "dead-lettered") && e.entry) {
        const arrived = parseEntryName(e.entry)?.epochMs;
        if (arrived !== undefined) pickup.observe(Math.max(0, at - arrived) / 1000);
      }
    } else if (e.kind === "lock") {
      if (e.name === "acquired") lockWait.observe({ lock: e.lock }, e.waitedMs / 1000);
    } else if (e.name === "started") {
      if (e.deployId === undefined) return;
      const set = running.get(e.deployment) ?? new Set<number>();
      running.set(e.deployment, set.add(e.deployId));
      inProgress.set({ deployment: e.deployment }, set.size);
    } else if (e.name === "step-finished") {
      stepDuration.observe({ deployment: e.deployment, step: e.step }, e.durationMs / 1000);
    } else if (e.name === "finished") {
      const set = running.get(e.deployment);
      if (e.deployId !== undefined && set?.delete(e.deployId)) inProgress.set({ deployment: e.deployment }, set.size);
      const outcome = outcomeLabel(e.outcome);
      if (!outcome) {
        retries.inc({ deployment: e.deployment });
        return;
      }
      deploys.inc({ deployment: e.deployment, outcome });
      lastDeploy.set({ deployment: e.deployment, outcome }, at / 1000);
      // An entry superseded while it waited never started: it has no duration to tell.
      if (e.deployId !== undefined) deployDuration.observe({ deployment: e.deployment, outcome }, e.durationMs / 1000);
    }
  };

  return {
    registry,
    listener,
    contentType: registry.contentType,
    observeWebhookRequest(event, status, seconds) {
      webhookRequests.inc({ event: eventLabel(event), status: String(status) });
      webhookDuration.observe(seconds);
    },
    countGithubSend(result) {
      githubSends.inc({ result });
    },
    countNotification(notifier, result) {
      notifications.inc({ notifier, result });
    },
    countGithubRedelivery(result) {
      githubRedeliveries.inc({ result });
    },
    readRolloutsFrom(db) {
      rolloutDb = db;
    },
    async scrape() {
      if (rolloutDb && fleet.length > 0) await scrapeRollouts(rolloutDb, fleet, rolloutHosts);
      const read = await readQueueGauges(options.layout, options.deployments);
      for (const q of read.queues) {
        queueEntries.set({ queue: q.queue }, q.entries);
        oldestAge.set({ queue: q.queue }, q.oldestAgeSeconds);
      }
      for (const q of read.deadLetters) deadLetters.set({ queue: q.queue }, q.entries);
      // Only the current release: the one it replaced must disappear, not stay at 1.
      releaseInfo.reset();
      for (const r of read.releases) releaseInfo.set({ deployment: r.deployment, release: r.release }, 1);
      return registry.metrics();
    },
  };
}

/** A scrape does not wait longer than this for the database (Prometheus's own timeout is 10 s by default). */
const ROLLOUT_SCRAPE_TIMEOUT_MS = 2000;

/**
 * Sets deployq_rollout_hosts from the database. When it does not answer in time (or fails),
 * the series are left out of this scrape rather than shown stale or failing the whole scrape.
 */
async function scrapeRollouts(db: Db, fleet: readonly Deployment[], gauge: Gauge): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<undefined>((resolve) => {
    timer = setTimeout(() => resolve(undefined), ROLLOUT_SCRAPE_TIMEOUT_MS);
  });
  try {
    const query = readRolloutGauges(db, fleet);
    // One that fails after the timeout won: its rejection is no one's to handle.
    query.catch(() => {});
    const read = await Promise.race([query, timeout]);
    gauge.reset();
    for (const d of read ?? []) for (const s of d.states) gauge.set({ deployment: d.deployment, state: s.state }, s.hosts);
  } catch {
    gauge.reset();
  } finally {
    clearTimeout(timer);
  }
}
