import { randomBytes } from "node:crypto";
import { lstat, mkdir, readFile, readdir, readlink, rename, rm, symlink } from "node:fs/promises";
import path from "node:path";
import { DeployqError } from "../errors.ts";
import { fsyncDir, writeFileDurably } from "../queue/fsync.ts";

/**
 * A deployment on disk (releases strategy):
 *   <path>/repo.git                      bare mirror of the configured remote
 *   <path>/releases/<utc-time>-<sha7>/   one checked-out commit each
 *   <path>/shared/                       files and folders linked into every release
 *   <path>/current -> releases/…         switched atomically
 */
export interface DeploymentPaths {
  root: string;
  mirror: string;
  releases: string;
  shared: string;
  current: string;
}

export function deploymentPaths(root: string): DeploymentPaths {
  return {
    root,
    mirror: path.join(root, "repo.git"),
    releases: path.join(root, "releases"),
    shared: path.join(root, "shared"),
    current: path.join(root, "current"),
  };
}

/** Written into a release once it is built: a release without it is half-made. */
export const RELEASE_META = ".deployq-release.json";
const RELEASE_NAME = /^\d{8}T\d{6}\.\d{3}Z-[0-9a-f]{7}(?:-\d+)?$/;

export interface ReleaseMeta {
  sha: string;
  ref: string | undefined;
  entry: string;
  built_at: string;
  /** Set when the release failed after the switch (its restart or health check): never chosen by a rollback. */
  bad?: { reason: string; at: string };
}

export interface Release {
  name: string;
  dir: string;
  meta: ReleaseMeta | undefined;
  current: boolean;
}

export function releaseName(sha: string, now = new Date()): string {
  const stamp = now.toISOString().replace(/[-:]/g, ""); // 20261123T065514.123Z
  return `${stamp}-${sha.slice(0, 7)}`;
}

export async function createReleaseDir(paths: DeploymentPaths, sha: string): Promise<{ name: string; dir: string }> {
  await mkdir(paths.releases, { recursive: true });
  const base = releaseName(sha);
  for (let n = 1; ; n++) {
    const name = n === 1 ? base : `${base}-${n}`;
    const dir = path.join(paths.releases, name);
    try {
      await mkdir(dir);
      return { name, dir };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
    }
  }
}

export async function readReleaseMeta(dir: string): Promise<ReleaseMeta | undefined> {
  try {
    return JSON.parse(await readFile(path.join(dir, RELEASE_META), "utf8")) as ReleaseMeta;
  } catch {
    return undefined;
  }
}

/** Durably (fsync'd before the switch that relies on it, or a crash could leave `current` at a release without it). */
export async function writeReleaseMeta(dir: string, meta: ReleaseMeta): Promise<void> {
  await writeFileDurably(path.join(dir, RELEASE_META), Buffer.from(`${JSON.stringify(meta, null, 2)}\n`), 0o644, RELEASE_META);
  await fsyncDir(dir);
}

/**
 * A switch of `current` is done only once the release it switched to has been restarted,
 * found healthy and had its sites deployed (or has been switched back from). This record,
 * written durably before the switch and removed after, is how a deploy interrupted in
 * between (kill -9 during the restart) is told apart from one that finished: the entry is
 * redone, finds its commit current, and resumes from the restart instead of calling it
 * already deployed.
 */
export interface PendingSwitch {
  release: string;
  /** What was current before: where a failure of the resumed restart goes back to. */
  previous: string | undefined;
  entry: string;
  at: string;
}
const PENDING_SWITCH = ".deployq-switch.json";

export async function readPendingSwitch(paths: DeploymentPaths): Promise<PendingSwitch | undefined> {
  try {
    const json = JSON.parse(await readFile(path.join(paths.root, PENDING_SWITCH), "utf8")) as Partial<PendingSwitch>;
    if (typeof json.release !== "string" || !RELEASE_NAME.test(json.release)) return undefined;
    const previous = typeof json.previous === "string" && RELEASE_NAME.test(json.previous) ? json.previous : undefined;
    return { release: json.release, previous, entry: String(json.entry ?? ""), at: String(json.at ?? "") };
  } catch {
    return undefined;
  }
}

/** Records the switch as pending, then switches `current` to `pending.release`. */
export async function beginSwitch(paths: DeploymentPaths, pending: PendingSwitch): Promise<void> {
  await writeFileDurably(path.join(paths.root, PENDING_SWITCH), Buffer.from(`${JSON.stringify(pending, null, 2)}\n`), 0o644, PENDING_SWITCH);
  await switchCurrent(paths, pending.release); // fsyncs the directory for both
}

/** The switch is done (its release is live and healthy) or undone. */
export async function endSwitch(paths: DeploymentPaths): Promise<void> {
  await rm(path.join(paths.root, PENDING_SWITCH), { force: true });
  await fsyncDir(paths.root);
}

/** The release `current` points at, if any. */
export async function currentRelease(paths: DeploymentPaths): Promise<string | undefined> {
  try {
    return path.basename(await readlink(paths.current));
  } catch {
    return undefined;
  }
}

export async function listReleases(paths: DeploymentPaths): Promise<Release[]> {
  let names: string[];
  try {
    names = (await readdir(paths.releases)).filter((n) => RELEASE_NAME.test(n)).sort();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw err;
  }
  const current = await currentRelease(paths);
  return Promise.all(
    names.map(async (name) => {
      const dir = path.join(paths.releases, name);
      return { name, dir, meta: await readReleaseMeta(dir), current: name === current };
    }),
  );
}

/**
 * Links each configured shared path into the release, replacing whatever the repository
 * has there. "dir/" entries are created in shared/ when missing; files must exist.
 */
export async function linkShared(paths: DeploymentPaths, releaseDir: string, entries: readonly string[]): Promise<void> {
  for (const entry of entries) {
    const isDir = entry.endsWith("/");
    const rel = entry.replace(/\/+$/, "");
    const target = path.join(paths.shared, rel);
    const link = path.join(releaseDir, rel);
    if (!target.startsWith(`${paths.shared}${path.sep}`) || !link.startsWith(`${releaseDir}${path.sep}`)) {
      throw new DeployqError("DEPLOY", `shared path ${JSON.stringify(entry)} leaves the deployment`);
    }
    if (isDir) await mkdir(target, { recursive: true });
    try {
      await lstat(target);
    } catch {
      throw new DeployqError("DEPLOY", `shared file ${target} does not exist: create it (or list "${rel}/" to share a directory)`);
    }
    await rm(link, { recursive: true, force: true });
    await mkdir(path.dirname(link), { recursive: true });
    await symlink(target, link);
  }
}

/** Points `current` at a release atomically: a new symlink under a temporary name, renamed over the old one. */
export async function switchCurrent(paths: DeploymentPaths, release: string): Promise<void> {
  const tmp = `${paths.current}.tmp-${randomBytes(4).toString("hex")}`;
  await symlink(path.join("releases", release), tmp);
  try {
    await rename(tmp, paths.current);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  await fsyncDir(paths.root);
}

/**
 * Removes what a crash left behind: releases never finished (no metadata, not current)
 * and temporary `current` links. Returns what it removed.
 */
export async function removeIncomplete(paths: DeploymentPaths): Promise<string[]> {
  const removed: string[] = [];
  for (const release of await listReleases(paths)) {
    if (!release.meta && !release.current) {
      await rm(release.dir, { recursive: true, force: true });
      removed.push(release.name);
    }
  }
  try {
    for (const name of await readdir(paths.root)) {
      if (name.startsWith("current.tmp-") || name.startsWith(".index-")) {
        await rm(path.join(paths.root, name), { force: true, recursive: true });
        removed.push(name);
      }
    }
  } catch {
    // no deployment directory yet
  }
  return removed;
}

/** Keeps the newest `keep` releases, and never deletes the current or the previous one. */
export async function pruneReleases(paths: DeploymentPaths, keep: number, protect: Array<string | undefined>): Promise<string[]> {
  const releases = await listReleases(paths);
  const complete = releases.filter((r) => r.meta);
  const removable = complete.slice(0, Math.max(0, complete.length - keep)).filter((r) => !r.current && !protect.includes(r.name));
  for (const r of removable) await rm(r.dir, { recursive: true, force: true });
  return removable.map((r) => r.name);
}
