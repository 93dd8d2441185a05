import { mkdir, readFile, readdir, rm } from "node:fs/promises";
import path from "node:path";
import { DEPLOYMENT_NAME, SITE_NAME } from "../../config/schema.ts";
import { DeployqError, errorMessage } from "../../errors.ts";
import { fsyncDir, writeFileDurably } from "../../queue/fsync.ts";
import type { CommandContext } from "../command-context.ts";

/*
 * Which nginx site files each deployment owns.
 *
 * Ownership. `<stateDir>/<deployment>.json` (the manifest) lists, by absolute path, every
 * `<site>.conf` this deployment wrote and the sha256 it wrote. A file in conf_dir is
 * only ever written or removed when it is in that manifest or does not exist (and no other
 * deployment's manifest claims it). A file that exists and is not ours (the operator's own,
 * or another deployment's) refuses the whole deploy before anything changes. An owned file
 * whose content no longer matches the manifest was edited by hand: it is replaced (or
 * removed) all the same, with a warning in the deploy log, and put back if the deploy fails.
 */

export const SUFFIX = ".conf";

export interface ManifestEntry {
  site: string;
  /** What deployq wrote; null while a deploy that writes it has not finished. */
  sha256: string | null;
}

export interface Manifest {
  version: 1;
  deployment: string;
  /** Absolute path of each owned `<site>.conf`. */
  files: Record<string, ManifestEntry>;
}

/** Where the manifests live: `<data_dir>/nginx/<deployment>.json`. */
export function nginxStateDir(dataDir: string): string {
  return path.join(dataDir, "nginx");
}

function manifestPath(stateDir: string, deployment: string): string {
  return path.join(stateDir, `${deployment}.json`);
}

function isOwnablePath(file: string): boolean {
  const base = path.basename(file);
  return path.isAbsolute(file) && path.normalize(file) === file && base.endsWith(SUFFIX) && SITE_NAME.test(base.slice(0, -SUFFIX.length));
}

function parseManifest(text: string, file: string): Manifest {
  const data = JSON.parse(text) as Partial<Manifest>;
  if (data.version !== 1 || typeof data.files !== "object" || data.files === null) throw new Error(`${file} is not a deployq nginx manifest (version 1)`);
  const files: Record<string, ManifestEntry> = {};
  for (const [p, entry] of Object.entries(data.files)) {
    if (!isOwnablePath(p) || typeof entry?.site !== "string" || !(entry.sha256 === null || typeof entry.sha256 === "string")) {
      throw new Error(`${file} lists ${JSON.stringify(p)}, which is not an absolute path to a <site>.conf`);
    }
    files[p] = { site: entry.site, sha256: entry.sha256 };
  }
  return { version: 1, deployment: String(data.deployment), files };
}

export async function readManifest(stateDir: string, deployment: string): Promise<Manifest> {
  const file = manifestPath(stateDir, deployment);
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return { version: 1, deployment, files: {} };
    throw new DeployqError("DEPLOY", `cannot read ${file} (which nginx site files deployment ${deployment} owns): ${errorMessage(err)}`);
  }
  try {
    return parseManifest(text, file);
  } catch (err) {
    throw new DeployqError(
      "DEPLOY",
      `${file} (which nginx site files deployment ${deployment} owns) is damaged: ${errorMessage(err)}. ` +
        `Fix it by hand, or remove it and the files it listed from conf_dir, then deploy again.`,
    );
  }
}

/** Every other deployment's claims: absolute path → deployment name. Unreadable manifests are logged and skipped. */
export async function otherOwners(stateDir: string, deployment: string, log: CommandContext["log"]): Promise<Map<string, string>> {
  const owners = new Map<string, string>();
  let names: string[];
  try {
    names = await readdir(stateDir);
  } catch {
    return owners;
  }
  for (const name of names.sort()) {
    if (!name.endsWith(".json") || name.startsWith(".")) continue;
    const other = name.slice(0, -".json".length);
    if (other === deployment) continue;
    const file = path.join(stateDir, name);
    try {
      const manifest = parseManifest(await readFile(file, "utf8"), file);
      for (const p of Object.keys(manifest.files)) owners.set(p, other);
    } catch (err) {
      log.write(`nginx: warning: skipping ${file}: ${errorMessage(err)}\n`);
    }
  }
  return owners;
}

export async function writeManifest(stateDir: string, manifest: Manifest): Promise<void> {
  await mkdir(stateDir, { recursive: true });
  const sorted: Record<string, ManifestEntry> = {};
  for (const key of Object.keys(manifest.files).sort()) sorted[key] = manifest.files[key]!;
  const target = manifestPath(stateDir, manifest.deployment);
  if (Object.keys(sorted).length === 0) {
    await rm(target, { force: true });
  } else {
    await writeFileDurably(target, Buffer.from(`${JSON.stringify({ ...manifest, files: sorted }, null, 2)}\n`), 0o644, `.${manifest.deployment}.json`);
  }
  await fsyncDir(stateDir);
}

/** The site files a deployment owns (from its manifest), by site name. */
export async function ownedSiteFiles(stateDir: string, deployment: string): Promise<Array<{ site: string; file: string }>> {
  const manifest = await readManifest(stateDir, deployment);
  return Object.entries(manifest.files)
    .map(([file, e]) => ({ site: e.site, file }))
    .sort((a, b) => (a.site < b.site ? -1 : a.site > b.site ? 1 : 0));
}

/** Every deployment with a manifest in stateDir (one that owns, or owned, site files). */
export async function manifestDeployments(stateDir: string): Promise<string[]> {
  const names = await readdir(stateDir).catch((err: NodeJS.ErrnoException) => {
    if (err.code === "ENOENT") return [] as string[];
    throw err;
  });
  return names
    .filter((n) => n.endsWith(".json") && DEPLOYMENT_NAME.test(n.slice(0, -".json".length)))
    .map((n) => n.slice(0, -".json".length))
    .sort();
}

/** The site names a deployment owns. */
export async function ownedSites(stateDir: string, deployment: string): Promise<string[]> {
  return (await ownedSiteFiles(stateDir, deployment)).map((s) => s.site);
}
