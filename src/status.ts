import { type Pause, readPause } from "./queue/pause.ts";
import type { QueueLayout } from "./queue/layout.ts";
import { readFile, readdir } from "node:fs/promises";
import path from "node:path";
import { type Deployment, type Settings, isFleet } from "./config/load.ts";
import type { Db } from "./db/client.ts";
import { recentDeploys } from "./db/queries/deploys.ts";
import { RAN_WITHIN, latestDeploys } from "./db/queries/latest-deploys.ts";
import type { Deploy } from "./db/schema.ts";
import { parseEntryName } from "./queue/entry-name.ts";
import { queueLayout } from "./queue/layout.ts";
import { queueSummary, scanQueue } from "./queue/scan.ts";
import { parseEntry, summarizePayload } from "./queue/entry.ts";
import { certificateStateDir, readCertificateState } from "./steps/certbot.ts";
import { nginxStateDir, ownedSiteFiles } from "./steps/nginx/manifest.ts";
import { currentRelease, deploymentPaths, readReleaseMeta } from "./steps/release.ts";
import { inPlaceStateFile } from "./workers/deploy.ts";
import { errorMessage } from "./errors.ts";
import { type OutboxStatus, outboxStatus } from "./github/outbox.ts";
import { type HostOutcome, type RolloutSummary, newestRollout } from "./fleet/rollout-report.ts";
import { seenHosts } from "./fleet/rollouts.ts";

/** What `deployq status` and GET /status show. */
export interface StatusReport {
  /** Events accepted but not yet handed to a deployment: queues/router/. */
  router: { entries: number; oldestAgeSeconds: number | null };
  deployments: DeploymentStatus[];
  /** The GitHub commit status outbox (GITHUB_TOKEN set): what waits to be sent, and the last error. */
  github?: OutboxStatus;
  /** The notifiers' part of the outbox ([[notify]] configured). */
  notifications?: OutboxStatus;
}

/** A deploy as status shows it: with its whole error and its own log file. */
export type DeployStatusRow = Pick<
  Deploy,
  | "id"
  | "entry"
  | "status"
  | "ref"
  | "sha"
  | "requestedSha"
  | "supersededBy"
  | "event"
  | "attempt"
  | "startedAt"
  | "finishedAt"
  | "durationMs"
  | "release"
  | "logPath"
  | "error"
  | "exitCode"
  | "signal"
>;
const DEPLOY_FIELDS = [
  "id",
  "entry",
  "status",
  "ref",
  "sha",
  "requestedSha",
  "supersededBy",
  "event",
  "attempt",
  "startedAt",
  "finishedAt",
  "durationMs",
  "release",
  "logPath",
  "error",
  "exitCode",
  "signal",
] as const;

export interface DeploymentStatus {
  deployment: string;
  repository: string;
  branch: string;
  strategy: string;
  enabled: boolean;
  /** What is live: the release (releases strategy), its commit, and the branch (or sha) it was deployed from, when known. */
  current: { release: string | undefined; sha: string | undefined; ref: string | undefined };
  queued: number;
  deadLetters: number;
  /** A deploy freeze (queues/paused/<name>.json): who, why, until when; or what is wrong with the file (it still holds the queue). */
  paused: Pause | { invalid: string } | undefined;
  /** The push held until its required checks pass (require_checks), if one is: its commit, since when, what is pending, the next look. */
  waitingForChecks: { entry: string; sha: string; since: string; pending: string[]; nextLookAt: string | undefined } | undefined;
  /** The newest deploy row (it may be superseded or already-deployed). */
  last: DeployStatusRow | undefined;
  /** The last deploy that ran (not superseded or skipped); the same as `last` when that one ran. */
  lastRun: DeployStatusRow | undefined;
  /**
   * The nginx site files the deployment owns now (from data_dir/nginx/), with the domain
   * list of each one's certificate (from data_dir/certificates/), or why they cannot be read.
   */
  sites: SiteStatus[] | { error: string };
  /** A fleet deployment (hosts): its newest rollout and where each of its hosts is in it; absent for any other. */
  fleet?: FleetStatus;
}

export interface FleetStatus {
  /** The newest rollout (null before the first), as `deployq rollout ls` shows it, without its host states (see hosts). */
  rollout: Omit<RolloutSummary, "hostStates"> | null;
  /** The newest rollout's hosts (before the first: the configured ones), each with its part in it and its workers' last check-in. */
  hosts: FleetHostStatus[];
}

export interface FleetHostStatus {
  host: string;
  /** pending: listed, not handed over yet; null: no rollout yet. */
  state: HostOutcome | null;
  release: string | null;
  error: string | null;
  /** When its workers last checked in (fleet_hosts), null if never. */
  lastSeen: string | null;
}

async function fleetOf(db: Db, d: Deployment, seen: ReadonlyMap<string, Date>): Promise<FleetStatus> {
  const newest = await newestRollout(db, d.name);
  const lastSeen = (host: string) => seen.get(host)?.toISOString() ?? null;
  if (!newest) return { rollout: null, hosts: (d.hosts ?? []).map((host) => ({ host, state: null, release: null, error: null, lastSeen: lastSeen(host) })) };
  const { hostStates: _states, hostDetails, ...rollout } = newest;
  return { rollout, hosts: hostDetails.map((h) => ({ host: h.host, state: h.state, release: h.release, error: h.error, lastSeen: lastSeen(h.host) })) };
}

export interface SiteStatus {
  site: string;
  file: string;
  certificate: { domains: string[]; obtainedAt: string } | undefined;
}

async function sitesOf(d: Deployment, dataDir: string): Promise<SiteStatus[] | { error: string }> {
  try {
    const owned = await ownedSiteFiles(nginxStateDir(dataDir), d.name);
    return await Promise.all(
      owned.map(async ({ site, file }) => {
        const state = await readCertificateState(certificateStateDir(dataDir), site);
        return { site, file, certificate: state && { domains: state.domains, obtainedAt: state.obtainedAt } };
      }),
    );
  } catch (err) {
    return { error: errorMessage(err) };
  }
}

const branchOf = (ref: string | null | undefined): string | undefined => ref?.replace(/^refs\/heads\//, "") || undefined;

/**
 * The live commit and where it came from: the release's metadata (releases strategy), or the
 * in-place state file for the sha and the newest succeeded deploy of that sha for its branch.
 */
async function currentOf(d: Deployment, dataDir: string, db: Db): Promise<DeploymentStatus["current"]> {
  if (d.strategy === "in-place") {
    const sha = (await readFile(inPlaceStateFile(dataDir, d.name), "utf8").catch(() => "")).trim() || undefined;
    const history = sha ? await recentDeploys(db, d.name, RAN_WITHIN) : [];
    const row = sha ? history.find((r) => r.status === "succeeded" && r.sha === sha) : undefined;
    return { release: undefined, sha, ref: branchOf(row?.ref) };
  }
  const paths = deploymentPaths(d.path);
  const release = await currentRelease(paths);
  const meta = release ? await readReleaseMeta(path.join(paths.releases, release)) : undefined;
  return { release, sha: meta?.sha, ref: branchOf(meta?.ref) };
}

function pick(row: Deploy | undefined): DeployStatusRow | undefined {
  if (!row) return undefined;
  return Object.fromEntries(DEPLOY_FIELDS.map((k) => [k, row[k]])) as DeployStatusRow;
}

/** How many events wait in router/, and for how long the oldest has (from its name: no file is read). */
async function routerBacklog(dir: string): Promise<StatusReport["router"]> {
  const summary = await queueSummary(dir);
  const oldest = summary.oldest ? parseEntryName(summary.oldest)?.epochMs : undefined;
  return { entries: summary.entries, oldestAgeSeconds: oldest === undefined ? null : Math.max(0, Math.round((Date.now() - oldest) / 1000)) };
}

/** What `deployq status` and GET /status show: disk for the release and queues, the database for history. */
/** The newest entry of a deployment's queue, when it is a push waiting for its required checks. */
async function waitingForChecksOf(layout: QueueLayout, d: Deployment, queued: number): Promise<DeploymentStatus["waitingForChecks"]> {
  if (d.require_checks.length === 0 || queued === 0) return undefined;
  const dir = layout.deployment(d.name);
  const newest = (await scanQueue(dir)).at(-1);
  if (!newest) return undefined;
  try {
    const parsed = parseEntry(await readFile(path.join(dir, newest), "utf8"));
    const waiting = parsed.ok ? parsed.entry.checks_waiting : undefined;
    if (!parsed.ok || !waiting) return undefined;
    return { entry: newest, sha: summarizePayload(parsed.entry.payload).after ?? "?", since: waiting.since, pending: waiting.pending, nextLookAt: parsed.entry.retry_at };
  } catch {
    return undefined; // taken meanwhile
  }
}

async function pauseOf(layout: QueueLayout, name: string): Promise<Pause | { invalid: string } | undefined> {
  const found = await readPause(layout, name);
  if (!found) return undefined;
  if ("invalid" in found) return found;
  return found.expired ? undefined : found.pause;
}

/**
 * The names of the files in a directory, to look only for those that exist: with many
 * deployments, a failed open per deployment (its pause file, its nginx manifest: usually
 * none) costs more than the rest of its status. Undefined when the directory cannot be
 * listed for another reason than its absence: then each file is tried, as before.
 */
async function filesIn(dir: string): Promise<Set<string> | undefined> {
  try {
    return new Set(await readdir(dir));
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "ENOENT" ? new Set() : undefined;
  }
}

export async function collectStatus(settings: Settings, db: Db, only?: string): Promise<StatusReport> {
  const layout = queueLayout(settings.queuesDir);
  const chosen = [...settings.deployments.values()].filter((d) => only === undefined || d.name === only);
  const anyName = chosen[0]?.name ?? "none";
  const [pauseFiles, manifests] = await Promise.all([filesIn(path.dirname(layout.pause(anyName))), filesIn(nginxStateDir(settings.dataDir))]);
  const has = (files: Set<string> | undefined, name: string) => files === undefined || files.has(`${name}.json`);
  // One query for every deployment's latest rows; the directories of all of them read at once.
  const fleets = chosen.filter(isFleet);
  const [latest, router, fleet, deployments] = await Promise.all([
    latestDeploys(
      db,
      chosen.map((d) => d.name),
    ),
    routerBacklog(layout.router),
    fleets.length === 0
      ? new Map<string, FleetStatus>()
      : seenHosts(db).then(async (hosts) => {
          const seen = new Map(hosts.map((h) => [h.host, h.lastSeen]));
          return new Map(await Promise.all(fleets.map(async (d) => [d.name, await fleetOf(db, d, seen)] as const)));
        }),
    Promise.all(
      chosen.map(async (d) => {
        const [current, queued, deadLetters, paused, sites] = await Promise.all([
          currentOf(d, settings.dataDir, db),
          queueSummary(layout.deployment(d.name)),
          queueSummary(layout.deadLetter(d.name)),
          has(pauseFiles, d.name) ? pauseOf(layout, d.name) : undefined,
          has(manifests, d.name) ? sitesOf(d, settings.dataDir) : [],
        ]);
        return { d, current, queued: queued.entries, deadLetters: deadLetters.entries, paused, sites, waitingForChecks: await waitingForChecksOf(layout, d, queued.entries) };
      }),
    ),
  ]);
  return {
    router,
    ...(settings.secrets.githubToken ? { github: await outboxStatus(db) } : {}),
    ...(settings.notify.length > 0 ? { notifications: await outboxStatus(db, "notifications") } : {}),
    deployments: deployments.map(({ d, current, queued, deadLetters, paused, sites, waitingForChecks }): DeploymentStatus => {
      const rows = latest.get(d.name);
      return {
        deployment: d.name,
        repository: d.repository,
        branch: d.branch,
        strategy: d.strategy,
        enabled: d.enabled,
        current,
        queued,
        deadLetters,
        paused,
        waitingForChecks,
        last: pick(rows?.last),
        lastRun: pick(rows?.lastRun),
        sites,
        ...(fleet.has(d.name) ? { fleet: fleet.get(d.name) } : {}),
      };
    }),
  };
}
