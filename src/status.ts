import { readFile } from "node:fs/promises";
import path from "node:path";
import type { Deployment, Settings } from "./config/load.ts";
import type { Db } from "./db/client.ts";
import { recentDeploys } from "./db/queries/deploys.ts";
import type { Deploy } from "./db/schema.ts";
import { queueLayout } from "./queue/layout.ts";
import { scanQueue } from "./queue/scan.ts";
import { certificateStateDir, readCertificateState } from "./steps/certbot.ts";
import { nginxStateDir, ownedSiteFiles } from "./steps/nginx.ts";
import { currentRelease, deploymentPaths, readReleaseMeta } from "./steps/release.ts";
import { inPlaceStateFile } from "./workers/deploy.ts";
import { errorMessage } from "./errors.ts";

export interface DeploymentStatus {
  deployment: string;
  repository: string;
  branch: string;
  strategy: string;
  enabled: boolean;
  current: { release: string | undefined; sha: string | undefined };
  queued: number;
  deadLetters: number;
  last: Pick<Deploy, "id" | "status" | "sha" | "event" | "attempt" | "startedAt" | "finishedAt" | "durationMs" | "release" | "logPath" | "error"> | undefined;
  /** The last deploy that ran (not superseded or skipped). */
  lastRun: Pick<Deploy, "id" | "status" | "sha" | "finishedAt" | "durationMs" | "logPath"> | undefined;
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

async function currentOf(d: Deployment, dataDir: string): Promise<{ release: string | undefined; sha: string | undefined }> {
  if (d.strategy === "in-place") {
    const sha = (await readFile(inPlaceStateFile(dataDir, d.name), "utf8").catch(() => "")).trim();
    return { release: undefined, sha: sha || undefined };
  }
  const paths = deploymentPaths(d.path);
  const release = await currentRelease(paths);
  const meta = release ? await readReleaseMeta(path.join(paths.releases, release)) : undefined;
  return { release, sha: meta?.sha };
}

function pick<T extends object, K extends keyof T>(row: T | undefined, keys: K[]): Pick<T, K> | undefined {
  if (!row) return undefined;
  return Object.fromEntries(keys.map((k) => [k, row[k]])) as Pick<T, K>;
}

/** What `deployq status` and GET /status show: disk for the release and queues, the database for history. */
export async function collectStatus(settings: Settings, db: Db, only?: string): Promise<DeploymentStatus[]> {
  const layout = queueLayout(settings.queuesDir);
  const result: DeploymentStatus[] = [];
  for (const d of settings.deployments.values()) {
    if (only !== undefined && d.name !== only) continue;
    const history = await recentDeploys(db, d.name, 50);
    const ran = history.find((r) => r.status !== "superseded" && r.status !== "already-deployed");
    result.push({
      deployment: d.name,
      repository: d.repository,
      branch: d.branch,
      strategy: d.strategy,
      enabled: d.enabled,
      current: await currentOf(d, settings.dataDir),
      queued: (await scanQueue(layout.deployment(d.name))).length,
      deadLetters: (await scanQueue(layout.deadLetter(d.name))).length,
      last: pick(history[0], ["id", "status", "sha", "event", "attempt", "startedAt", "finishedAt", "durationMs", "release", "logPath", "error"]),
      lastRun: pick(ran, ["id", "status", "sha", "finishedAt", "durationMs", "logPath"]),
      sites: await sitesOf(d, settings.dataDir),
    });
  }
  return result;
}
