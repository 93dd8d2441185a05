import type { LockInspector } from "../../lock/inspect.ts";
import { type LockState, lockStates } from "./locks.ts";
import { type Running, readRunning } from "../../workers/cancel.ts";
import { isProcessAlive } from "../../pid-lock.ts";
import { open } from "node:fs/promises";
import { type Deployment, type Settings, isFleet } from "../../config/load.ts";
import type { Db } from "../../db/client.ts";
import { recentAdminActions } from "../../db/queries/admin-actions.ts";
import { deployById } from "../../db/queries/deploy-by-id.ts";
import { deployStepsOf } from "../../db/queries/deploy-steps.ts";
import { recentDeploys } from "../../db/queries/deploys.ts";
import { type EntryDeploy, deliveryOfEntry, latestDeploysOfEntries } from "../../db/queries/entry-history.ts";
import { type DeliverySummary, recentDeliveries } from "../../db/queries/recent-deliveries.ts";
import type { AdminAction, Delivery, Deploy, DeployStep } from "../../db/schema.ts";
import { type EntryInfo, allQueues, listQueue, resolveQueue } from "../../queue/admin.ts";
import { queueLayout } from "../../queue/layout.ts";
import { type DeploymentStatus, type StatusReport, collectStatus } from "../../status.ts";
import { type Release, deploymentPaths, listReleases } from "../../steps/release.ts";
import { type RolloutDetail, type RolloutHostReport, type RolloutSummary, newestRollout, rolloutSummaries } from "../../fleet/rollout-report.ts";
import { seenHosts } from "../../fleet/rollouts.ts";

/** What the dashboard's pages show, read from the same places as `deployq status`, `releases`, `queue ls` and `deliveries`. */

/** The most of a deploy log a page shows: its end (a build that prints megabytes is read in a terminal). */
export const LOG_SHOWN_BYTES = 512 * 1024;
const DELIVERIES_SHOWN = 25;
const ENTRIES_SHOWN = 100;
/** The rollouts a fleet deployment's page lists (`deployq rollout ls` lists more). */
export const ROLLOUTS_SHOWN = 10;

export interface LogText {
  text: string;
  /** Bytes of the file not shown (its beginning). */
  skipped: number;
  /** The file's size when read: where a live follower goes on from. */
  size: number;
  missing: boolean;
}

/** The end of a deploy's log file (at most `max` bytes, from a line start). */
export async function readLogTail(file: string | null | undefined, max = LOG_SHOWN_BYTES): Promise<LogText> {
  if (!file) return { text: "", skipped: 0, size: 0, missing: true };
  let handle;
  try {
    handle = await open(file, "r");
  } catch {
    return { text: "", skipped: 0, size: 0, missing: true };
  }
  try {
    const { size } = await handle.stat();
    const start = Math.max(0, size - max);
    const buffer = Buffer.alloc(size - start);
    const { bytesRead } = await handle.read(buffer, 0, buffer.length, start);
    let bytes = buffer.subarray(0, bytesRead);
    let skipped = start;
    if (start > 0) {
      const nl = bytes.indexOf(0x0a);
      if (nl >= 0) {
        bytes = bytes.subarray(nl + 1);
        skipped += nl + 1;
      }
    }
    return { text: bytes.toString("utf8"), skipped, size: start + bytesRead, missing: false };
  } finally {
    await handle.close();
  }
}

/** The step a running deploy is in: the last `== <title>` heading of its log. */
export async function currentStepOf(logPath: string | null | undefined): Promise<string | undefined> {
  const { text } = await readLogTail(logPath, 64 * 1024);
  const headings = text.split("\n").filter((l) => l.startsWith("== "));
  return headings.at(-1)?.slice(3).replace(/ \(\d{4}-\d\d-\d\dT[^)]*\)$/, "");
}

/** When a release was built, from its name (`20261123T065514.123Z-<sha7>`). */
export function releaseTime(name: string | undefined): Date | undefined {
  const m = name ? /^(\d{4})(\d\d)(\d\d)T(\d\d)(\d\d)(\d\d)\.(\d{3})Z/.exec(name) : null;
  if (!m) return undefined;
  return new Date(`${m[1]}-${m[2]}-${m[3]}T${m[4]}:${m[5]}:${m[6]}.${m[7]}Z`);
}

/** Deploys that ran and ended (not superseded, not skipped as already deployed, not still running). */
const FINISHED_RUN = new Set(["succeeded", "failed", "retrying", "interrupted"]);

export interface DeliveryRow extends DeliverySummary {
  /** What became of it in each deployment it reached (newest deploy row each). */
  deploys: EntryDeploy[];
}

export interface OverviewDeployment extends DeploymentStatus {
  releasedAt: Date | undefined;
  lock: LockState | undefined;
  running: { id: number; step: string | undefined; startedAt: Date } | undefined;
}

export interface OverviewData {
  router: StatusReport["router"];
  deployments: OverviewDeployment[];
  deliveries: DeliveryRow[];
  /** The GitHub commit status outbox (GITHUB_TOKEN set). */
  github?: StatusReport["github"];
}

async function withDeploys(db: Db, rows: DeliverySummary[]): Promise<DeliveryRow[]> {
  const byEntry = await latestDeploysOfEntries(db, rows.map((r) => r.entry).filter((e): e is string => e !== null));
  return rows.map((r) => ({ ...r, deploys: (r.entry && byEntry.get(r.entry)) || [] }));
}

export async function overviewData(settings: Settings, db: Db, inspector?: LockInspector): Promise<OverviewData> {
  const [status, locks] = await Promise.all([collectStatus(settings, db), lockStates(settings, db, inspector, [...settings.deployments.keys()])]);
  const deployments = await Promise.all(
    status.deployments.map(async (d): Promise<OverviewDeployment> => {
      const last = d.last;
      const running = last?.status === "running" ? { id: last.id, step: await currentStepOf(last.logPath), startedAt: last.startedAt } : undefined;
      // "Last deploy" is the last one that ran to its end: the running one is shown as what runs now.
      const lastRun = d.lastRun?.status === "running" ? (await recentDeploys(db, d.deployment, 50)).find((r) => FINISHED_RUN.has(r.status)) : d.lastRun;
      return { ...d, lastRun, releasedAt: releaseTime(d.current.release), running, lock: locks.get(d.deployment) };
    }),
  );
  return { router: status.router, deployments, deliveries: await withDeploys(db, await recentDeliveries(db, DELIVERIES_SHOWN)), ...(status.github ? { github: status.github } : {}) };
}

export interface DeploymentData {
  status: DeploymentStatus;
  strategy: string;
  releases: Release[];
  history: Deploy[];
  queued: EntryInfo[];
  deadLetters: EntryInfo[];
  /** What admins did to it from the dashboard, newest first. */
  actions: AdminAction[];
  /** The deploy running on this host now, and whether it may still be cancelled. */
  running: Running | undefined;
  /** A fleet deployment's (hosts) newest rollout, its hosts and its last rollouts; absent for any other. */
  fleet?: FleetData;
}

export interface FleetHost {
  host: string;
  /** Its part in the newest rollout (state pending: listed, no row yet); undefined before the first rollout, or for a host the rollout does not list (configured since). */
  part: RolloutHostReport | undefined;
  /** When its workers last checked in (fleet_hosts); undefined: never. */
  lastSeen: Date | undefined;
}

export interface FleetData {
  /** This host's name (host_name): the one whose releases, queue and history the rest of the page shows. */
  hostName: string;
  /** The newest rollout; undefined before the first. */
  newest: Omit<RolloutDetail, "hostDetails" | "hostStates"> | undefined;
  /** The newest rollout's hosts in its order, then the configured hosts it does not list; before the first rollout, the configured ones. */
  hosts: FleetHost[];
  /** The last ROLLOUTS_SHOWN rollouts, newest first, each with its hosts' states. */
  recent: RolloutSummary[];
}

function withoutHosts(detail: RolloutDetail): NonNullable<FleetData["newest"]> {
  const { hostDetails: _details, hostStates: _states, ...rollout } = detail;
  return rollout;
}

async function fleetData(settings: Settings, db: Db, d: Deployment): Promise<FleetData | undefined> {
  if (!isFleet(d)) return undefined;
  const [newest, recent, seen] = await Promise.all([newestRollout(db, d.name), rolloutSummaries(db, { deployment: d.name, limit: ROLLOUTS_SHOWN }), seenHosts(db)]);
  const lastSeen = new Map(seen.map((h) => [h.host, h.lastSeen]));
  const parts = newest?.hostDetails ?? [];
  const names = [...parts.map((p) => p.host), ...d.hosts.filter((h) => !parts.some((p) => p.host === h))];
  return {
    hostName: settings.hostName,
    newest: newest && withoutHosts(newest),
    hosts: names.map((host) => ({ host, part: parts.find((p) => p.host === host), lastSeen: lastSeen.get(host) })),
    recent,
  };
}

export async function deploymentData(settings: Settings, db: Db, name: string): Promise<DeploymentData | undefined> {
  const d = settings.deployments.get(name);
  if (!d) return undefined;
  const layout = queueLayout(settings.queuesDir);
  const [report, history, queued, deadLetters, releases, actions, fleet] = await Promise.all([
    collectStatus(settings, db, name),
    recentDeploys(db, name, 50),
    listQueue(resolveQueue(layout, name)),
    listQueue(resolveQueue(layout, `dead-letter/${name}`)),
    d.strategy === "releases" ? listReleases(deploymentPaths(d.path)) : Promise.resolve([]),
    recentAdminActions(db, name, 10),
    fleetData(settings, db, d),
  ]);
  const running = await readRunning(settings.dataDir, name);
  return {
    status: report.deployments[0]!,
    strategy: d.strategy,
    releases: releases.reverse(),
    history,
    queued: queued.slice(0, ENTRIES_SHOWN),
    deadLetters: deadLetters.slice(0, ENTRIES_SHOWN),
    actions,
    running: running && isProcessAlive(running.pid) ? running : undefined,
    ...(fleet ? { fleet } : {}),
  };
}

export interface DeployData {
  deploy: Deploy;
  steps: DeployStep[];
  delivery: Delivery | undefined;
  log: LogText;
}

export async function deployData(db: Db, id: number): Promise<DeployData | undefined> {
  const deploy = await deployById(db, id);
  if (!deploy) return undefined;
  const [steps, delivery, log] = await Promise.all([deployStepsOf(db, id), deliveryOfEntry(db, deploy.entry), readLogTail(deploy.logPath)]);
  return { deploy, steps, delivery, log };
}

export interface QueueData {
  label: string;
  dir: string;
  deadLetter: boolean;
  /** For a dead-letter queue: router or the deployment its entries go back to. */
  owner: string | undefined;
  total: number;
  entries: EntryInfo[];
}

export async function queuesData(settings: Settings): Promise<QueueData[]> {
  const layout = queueLayout(settings.queuesDir);
  const queues = await allQueues(layout, settings.deployments.keys());
  return Promise.all(
    queues.map(async (q) => {
      const entries = await listQueue(q);
      const dead = q.label.startsWith("dead-letter/");
      return { label: q.label, dir: q.dir, deadLetter: dead, owner: dead ? q.label.slice("dead-letter/".length) : undefined, total: entries.length, entries: entries.slice(0, ENTRIES_SHOWN) };
    }),
  );
}
