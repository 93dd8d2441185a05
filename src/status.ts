import { type Pause, readPause } from "./queue/pause.ts";
import type { QueueLayout } from "./queue/layout.ts";
import { readFile } from "node:fs/promises";
import path from "node:path";
import type { Deployment, Settings } from "./config/load.ts";
import type { Db } from "./db/client.ts";
import { recentDeploys } from "./db/queries/deploys.ts";
import type { Deploy } from "./db/schema.ts";
import { parseEntryName } from "./queue/entry-name.ts";
import { queueLayout } from "./queue/layout.ts";
import { scanQueue } from "./queue/scan.ts";
import { certificateStateDir, readCertificateState } from "./steps/certbot.ts";
import { nginxStateDir, ownedSiteFiles } from "./steps/nginx/manifest.ts";
import { currentRelease, deploymentPaths, readReleaseMeta } from "./steps/release.ts";
import { inPlaceStateFile } from "./workers/deploy.ts";
import { errorMessage } from "./errors.ts";
import { type OutboxStatus, outboxStatus } from "./github/outbox.ts";

/** What `deployq status` and GET /status show. */
export interface StatusReport {
  /** Events accepted but not yet handed to a deployment: queues/router/. */
  router: { entries: number; oldestAgeSeconds: number | null };
  deployments: DeploymentStatus[];
  /** The GitHub commit status outbox (GITHUB_TOKEN set): what waits to be sent, and the last error. */
  github?: OutboxStatus;
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
  /** The newest deploy row (it may be superseded or already-deployed). */
  last: DeployStatusRow | undefined;
  /** The last deploy that ran (not superseded or skipped); the same as `last` when that one ran. */
  lastRun: DeployStatusRow | undefined;
  /**
   * The nginx site files the deployment owns now (from data_dir/nginx/), with the domain
   * list of each one's certificate (from data_dir/certificates/), or why they cannot be read.
   */
  sites: SiteStatus[] | { error: string };
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
async function currentOf(d: Deployment, dataDir: string, history: Deploy[]): Promise<DeploymentStatus["current"]> {
  if (d.strategy === "in-place") {
    const sha = (await readFile(inPlaceStateFile(dataDir, d.name), "utf8").catch(() => "")).trim() || undefined;
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
  const names = await scanQueue(dir);
  const oldest = names[0] ? parseEntryName(names[0])?.epochMs : undefined;
  return { entries: names.length, oldestAgeSeconds: oldest === undefined ? null : Math.max(0, Math.round((Date.now() - oldest) / 1000)) };
}

/** What `deployq status` and GET /status show: disk for the release and queues, the database for history. */
async function pauseOf(layout: QueueLayout, name: string): Promise<Pause | { invalid: string } | undefined> {
  const found = await readPause(layout, name);
  if (!found) return undefined;
  if ("invalid" in found) return found;
  return found.expired ? undefined : found.pause;
}

export async function collectStatus(settings: Settings, db: Db, only?: string): Promise<StatusReport> {
  const layout = queueLayout(settings.queuesDir);
  const deployments: DeploymentStatus[] = [];
  for (const d of settings.deployments.values()) {
    if (only !== undefined && d.name !== only) continue;
    const history = await recentDeploys(db, d.name, 50);
    const ran = history.find((r) => r.status !== "superseded" && r.status !== "already-deployed");
    deployments.push({
      deployment: d.name,
      repository: d.repository,
      branch: d.branch,
      strategy: d.strategy,
      enabled: d.enabled,
      current: await currentOf(d, settings.dataDir, history),
      queued: (await scanQueue(layout.deployment(d.name))).length,
      deadLetters: (await scanQueue(layout.deadLetter(d.name))).length,
      paused: await pauseOf(layout, d.name),
      last: pick(history[0]),
      lastRun: pick(ran),
      sites: await sitesOf(d, settings.dataDir),
    });
  }
  return { router: await routerBacklog(layout.router), deployments, ...(settings.secrets.githubToken ? { github: await outboxStatus(db) } : {}) };
}
