import { createHash } from "node:crypto";
import { constants as fsConstants } from "node:fs";
import { lstat, open, readdir, rm, stat, unlink } from "node:fs/promises";
import path from "node:path";
import { branchGlobToRegExp } from "../../config/branch.ts";
import type { NginxHost, NginxSites } from "../../config/schema.ts";
import { DEPLOYMENT_NAME, SITE_NAME } from "../../config/schema.ts";
import { DeployqError, errorMessage } from "../../errors.ts";
import { ExecError } from "../../exec/exec-error.ts";
import { formatArgv, runCommand } from "../../exec/run-command.ts";
import { DURABLE_TEMP_SUFFIX, fsyncDir, writeFileDurably } from "../../queue/fsync.ts";
import { type CommandContext, runOptions } from "../command-context.ts";
import { type Manifest, type ManifestEntry, SUFFIX, otherOwners, readManifest, writeManifest } from "./manifest.ts";
import { VerifyFailure, readMaster, snapshot, verifyReload } from "./reload.ts";

/*
 * nginx site files from a deployment's repository: which files of conf_dir each deployment
 * owns is in manifest.ts, how a reload is verified in reload.ts.
 *
 * Sequence (the caller holds deployq:nginx): read and validate the release's site files,
 * plan (skip byte-identical files), refuse foreign files, check nginx runs, call
 * beforeActivate, claim the new files in the manifest, write each file (temp file in
 * conf_dir + fsync + rename; removals unlink), test, snapshot the master's workers, reload,
 * wait for a new worker (nginx starts new workers only when it applied a configuration)
 * and for the verify URLs, then record the manifest. Any failure after the first write puts
 * back the previous bytes (and mode), deletes files that were new, tests again and, if the
 * reload had been attempted, reloads again; the deploy then fails with nginx's own message.
 */

export interface SiteFile {
  /** `<site>` of `<site>.conf`. */
  name: string;
  /** The file's content, as it will be written into conf_dir. */
  text: string;
}

export interface DeploySitesOptions {
  deployment: string;
  /** The release (or in-place work tree) holding `sites.sites_dir`. */
  sourceDir: string;
  sites: NginxSites;
  host: NginxHost;
  /** `<dataDir>/nginx`: which files of conf_dir each deployment owns. */
  stateDir: string;
  /** Called with the sites that are new or changed, before any file in conf_dir changes (certbot). */
  beforeActivate?: (sites: SiteFile[]) => Promise<void>;
}

export interface DeploySitesResult {
  /** Sites written (new or changed). */
  changed: string[];
  /** Sites removed because the release no longer has them. */
  removed: string[];
}

/** A site file larger than this is refused (nginx site files are a few kB). */
export const MAX_SITE_FILE_BYTES = 1024 * 1024;
/** Temp files in conf_dir: hidden and not ending in .conf, so no `include *.conf` ever sees one. */
const TEMP_PREFIX = ".deployq-";
const TEMP_SUFFIX = DURABLE_TEMP_SUFFIX;

// ---------------------------------------------------------------------------------------
// Files

/**
 * A regular file's bytes, without following a symlink and without blocking on a FIFO;
 * null if it does not exist. `what` names the file in error messages.
 */
async function readRegularFile(file: string, limit: number, what: string): Promise<{ data: Buffer; mode: number } | null> {
  let st;
  try {
    st = await lstat(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw err;
  }
  if (st.isSymbolicLink()) throw new DeployqError("DEPLOY", `${what} ${file} is a symbolic link: deployq never follows links for nginx site files; make it a regular file`);
  if (!st.isFile()) throw new DeployqError("DEPLOY", `${what} ${file} is not a regular file`);
  const fh = await open(file, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW | fsConstants.O_NONBLOCK);
  try {
    const fst = await fh.stat();
    if (!fst.isFile()) throw new DeployqError("DEPLOY", `${what} ${file} is not a regular file`);
    if (fst.size > limit) throw new DeployqError("DEPLOY", `${what} ${file} is ${fst.size} bytes, more than the ${limit} allowed for a site file`);
    const data = await fh.readFile();
    if (data.length > limit) throw new DeployqError("DEPLOY", `${what} ${file} is more than the ${limit} bytes allowed for a site file`);
    return { data, mode: fst.mode & 0o7777 };
  } finally {
    await fh.close();
  }
}

/** Anything at all (a dangling symlink too) at `file`. */
async function exists(file: string): Promise<boolean> {
  try {
    await lstat(file);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return false;
    throw err;
  }
}

function sha256(data: Buffer): string {
  return createHash("sha256").update(data).digest("hex");
}

function globsMatch(patterns: readonly string[], name: string): boolean {
  return patterns.some((p) => p === name || branchGlobToRegExp(p).test(name));
}

interface SourceSite {
  name: string;
  data: Buffer;
}

/**
 * The release's site files that pass include/exclude. Every component of sites_dir must be
 * a real directory inside the release (no symlink out of it); a `.conf` entry with an
 * invalid site name, or an included one that is a symlink or not a regular file, refuses
 * the deploy; other entries are ignored (and logged).
 */
export async function readSiteFiles(sourceDir: string, sites: NginxSites, log: CommandContext["log"]): Promise<SourceSite[]> {
  const root = path.resolve(sourceDir);
  const parts = sites.sites_dir.split("/").filter((p) => p !== "");
  if (parts.length === 0 || parts.some((p) => p === "." || p === "..") || path.isAbsolute(sites.sites_dir)) {
    throw new DeployqError("DEPLOY", `sites_dir ${JSON.stringify(sites.sites_dir)} must be a relative path inside the release`);
  }
  let dir = root;
  for (const part of parts) {
    dir = path.join(dir, part);
    let st;
    try {
      st = await lstat(dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") {
        throw new DeployqError(
          "DEPLOY",
          `the release has no ${sites.sites_dir}/ (looked for ${dir}). Add the site files there (to remove every site, keep the folder ` +
            `with a placeholder file such as .gitkeep), or set sites_dir in [deployments.<name>.nginx].`,
        );
      }
      throw err;
    }
    if (st.isSymbolicLink()) throw new DeployqError("DEPLOY", `${dir} in the release is a symbolic link: sites_dir must be a real folder of the release`);
    if (!st.isDirectory()) throw new DeployqError("DEPLOY", `${dir} in the release is not a folder`);
  }

  const found: SourceSite[] = [];
  const entries = await readdir(dir, { withFileTypes: true });
  entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  for (const entry of entries) {
    const file = path.join(dir, entry.name);
    if (!entry.name.endsWith(SUFFIX)) {
      log.write(`nginx: ignoring ${path.join(sites.sites_dir, entry.name)} (not a <site>.conf)\n`);
      continue;
    }
    const name = entry.name.slice(0, -SUFFIX.length);
    if (!SITE_NAME.test(name)) {
      throw new DeployqError(
        "DEPLOY",
        `${path.join(sites.sites_dir, JSON.stringify(entry.name))} in the release is not a valid site file name: ` +
          `a site name is letters, digits, . _ - (starting with a letter or digit, at most 63). Rename it.`,
      );
    }
    if (!globsMatch(sites.include, name) || globsMatch(sites.exclude, name)) {
      log.write(`nginx: skipping site ${name} (not matched by include ${JSON.stringify(sites.include)}, or matched by exclude ${JSON.stringify(sites.exclude)})\n`);
      continue;
    }
    const read = await readRegularFile(file, MAX_SITE_FILE_BYTES, "the release's site file");
    if (!read) throw new DeployqError("DEPLOY", `the release's site file ${file} disappeared while it was read`);
    found.push({ name, data: read.data });
  }
  return found;
}

// ---------------------------------------------------------------------------------------
// Plan and apply

interface Change {
  site: string;
  file: string;
  /** What conf_dir held (null: nothing). */
  before: { data: Buffer; mode: number } | null;
  /** What it will hold (null: removed). */
  after: Buffer | null;
}

interface Target {
  site: string;
  file: string;
  data: Buffer;
}

async function ensureConfDir(confDir: string): Promise<void> {
  let st;
  try {
    st = await stat(confDir);
  } catch (err) {
    throw new DeployqError("DEPLOY", `nginx conf_dir ${confDir} cannot be used: ${errorMessage(err)}. Create it and include it from nginx's configuration (include ${confDir}/*.conf;).`);
  }
  if (!st.isDirectory()) throw new DeployqError("DEPLOY", `nginx conf_dir ${confDir} is not a folder`);
}

/** Removes temp files an interrupted deploy left in `dir` (only deployq's own hidden `.deployq-*.tmp`). */
async function removeStaleTemps(dir: string): Promise<void> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return;
  }
  for (const name of names) {
    if (name.startsWith(TEMP_PREFIX) && name.endsWith(TEMP_SUFFIX)) await rm(path.join(dir, name), { force: true });
  }
}

interface ApplyOptions {
  deployment: string;
  host: NginxHost;
  stateDir: string;
  targets: Target[];
  /** Absolute conf_dir paths in which targets are written (must exist). */
  confDirs: string[];
  verify: Record<string, string>;
  beforeActivate?: ((sites: SiteFile[]) => Promise<void>) | undefined;
}

async function applySites(options: ApplyOptions, ctx: CommandContext): Promise<DeploySitesResult> {
  const { deployment, host, stateDir, targets } = options;
  const log = ctx.log;
  if (!DEPLOYMENT_NAME.test(deployment)) throw new DeployqError("DEPLOY", `invalid deployment name ${JSON.stringify(deployment)}`);
  if (ctx.signal?.aborted) throw new DeployqError("DEPLOY", "nginx sites were not deployed: the deploy was cancelled");

  const manifest = await readManifest(stateDir, deployment);
  const owners = await otherOwners(stateDir, deployment, log);
  for (const dir of options.confDirs) {
    await ensureConfDir(dir);
    await removeStaleTemps(dir);
  }

  // Plan: everything is read and checked before anything is written.
  const changes: Change[] = [];
  const refusals: string[] = [];
  const wanted = new Set(targets.map((t) => t.file));
  const finalFiles: Record<string, ManifestEntry> = {};
  for (const target of targets) {
    finalFiles[target.file] = { site: target.site, sha256: sha256(target.data) };
    const owned = manifest.files[target.file];
    if (!owned) {
      const otherOwner = owners.get(target.file);
      if (otherOwner) {
        refusals.push(`${target.file} belongs to deployment ${otherOwner} (it deployed site ${target.site} first); rename the site, or exclude it from one of the two deployments`);
        continue;
      }
      if (await exists(target.file)) {
        refusals.push(
          `${target.file} already exists and was not written by deployq (the operator's own file?); it is left alone. ` +
            `Move it away if deployment ${deployment} should manage site ${target.site}, or exclude the site in [deployments.${deployment}.nginx].`,
        );
        continue;
      }
      changes.push({ site: target.site, file: target.file, before: null, after: target.data });
      continue;
    }
    let current: { data: Buffer; mode: number } | null;
    try {
      current = await readRegularFile(target.file, Number.MAX_SAFE_INTEGER, "nginx site file");
    } catch (err) {
      refusals.push(errorMessage(err));
      continue;
    }
    if (current && owned.sha256 !== null && owned.sha256 !== sha256(current.data)) {
      log.write(`nginx: warning: ${target.file} was changed by hand since deployq wrote it; it is replaced by the release's version (put changes in the repository)\n`);
    }
    if (current && current.data.equals(target.data)) continue;
    changes.push({ site: target.site, file: target.file, before: current, after: target.data });
  }
  for (const [file, entry] of Object.entries(manifest.files)) {
    if (wanted.has(file)) continue;
    let current: { data: Buffer; mode: number } | null;
    try {
      current = await readRegularFile(file, Number.MAX_SAFE_INTEGER, "nginx site file");
    } catch (err) {
      refusals.push(`cannot remove site ${entry.site}: ${errorMessage(err)}`);
      continue;
    }
    if (!current) {
      log.write(`nginx: site ${entry.site}: ${file} is already gone\n`);
      continue;
    }
    if (entry.sha256 !== null && entry.sha256 !== sha256(current.data)) {
      log.write(`nginx: warning: ${file} was changed by hand since deployq wrote it; it is removed all the same (site ${entry.site} is no longer in the release)\n`);
    }
    changes.push({ site: entry.site, file, before: current, after: null });
  }
  if (refusals.length > 0) {
    throw new DeployqError("DEPLOY", `nginx sites of ${deployment} not deployed, nothing was changed:\n- ${refusals.join("\n- ")}`);
  }

  const finalManifest: Manifest = { version: 1, deployment, files: finalFiles };
  if (changes.length === 0) {
    if (JSON.stringify(sortedKeys(manifest.files)) !== JSON.stringify(sortedKeys(finalFiles)) || Object.entries(finalFiles).some(([p, e]) => manifest.files[p]?.sha256 !== e.sha256)) {
      await writeManifest(stateDir, finalManifest);
    }
    log.write("nginx: site files unchanged; nginx is not reloaded\n");
    return { changed: [], removed: [] };
  }

  // nginx must be running for a reload to be verified: say so before changing anything.
  await readMaster(host.pid_file);

  const written = changes.filter((c) => c.after !== null);
  if (options.beforeActivate && written.length > 0) {
    await options.beforeActivate(written.map((c) => ({ name: c.site, text: c.after!.toString("utf8") })));
  }

  // Claim the new files first: a crash while they are written must not leave files in conf_dir that nobody owns.
  const claimed: Manifest = { version: 1, deployment, files: { ...manifest.files } };
  for (const c of changes) if (c.after) claimed.files[c.file] = { site: c.site, sha256: null };
  await writeManifest(stateDir, claimed);

  const summary = changes.map((c) => `${c.site} (${c.after === null ? "removed" : c.before === null ? "new" : "changed"})`).join(", ");
  log.write(`nginx: writing ${summary}\n`);
  const applied: Change[] = [];
  let reloadAttempted = false;
  let failure: string;
  let cause: unknown;
  try {
    for (const change of changes) {
      applied.push(change);
      if (change.after) await writeFileDurably(change.file, change.after, change.before?.mode ?? 0o644, `${TEMP_PREFIX}${change.site}`);
      else await unlink(change.file);
    }
    await syncDirs(changes);
    try {
      await runCommand(host.test_command, commandOptions(ctx, true));
    } catch (err) {
      throw new StepFailure("test", err);
    }
    const before = await snapshot(host.pid_file);
    reloadAttempted = true;
    try {
      await runCommand(host.reload_command, commandOptions(ctx, true));
    } catch (err) {
      throw new StepFailure("reload", err);
    }
    const verifyUrls = Object.entries(options.verify).filter(([site]) => targets.some((t) => t.site === site));
    await verifyReload(host, before, verifyUrls, ctx);
    await writeManifest(stateDir, finalManifest);
    log.write(`nginx: ${summary}: applied\n`);
    return {
      changed: changes.filter((c) => c.after !== null).map((c) => c.site),
      removed: changes.filter((c) => c.after === null).map((c) => c.site),
    };
  } catch (err) {
    cause = err;
    failure = describeFailure(err, host);
  }

  // Restore: no abort signal, it must finish.
  log.write(`nginx: ${failure}\nnginx: putting the previous site files back\n`);
  const restoreProblems = await restore(applied, manifest, stateDir);
  let restored: string;
  if (restoreProblems.length > 0) {
    restored =
      `RESTORING THE PREVIOUS SITE FILES FAILED: ${restoreProblems.join("; ")}. conf_dir may hold a mix of old and new files` +
      (reloadAttempted ? " and nginx may run either" : "") +
      `: fix the files by hand, run nginx -t and reload nginx.`;
  } else {
    restored = await retestAfterRestore(host, reloadAttempted, ctx);
  }
  log.write(`nginx: ${restored}\n`);
  throw new DeployqError("DEPLOY", `nginx sites of ${deployment} (${summary}) not deployed: ${failure}\n${restored}`, { cause });
}

function sortedKeys(record: Record<string, unknown>): string[] {
  return Object.keys(record).sort();
}

async function syncDirs(changes: readonly Change[]): Promise<void> {
  for (const dir of new Set(changes.map((c) => path.dirname(c.file)))) await fsyncDir(dir);
}

function commandOptions(ctx: CommandContext, abortable: boolean) {
  return runOptions(abortable ? ctx : { ...ctx, signal: undefined }, "/");
}

class StepFailure extends Error {
  constructor(
    readonly step: "test" | "reload",
    readonly error: unknown,
  ) {
    super(errorMessage(error));
  }
}

function describeFailure(err: unknown, host: NginxHost): string {
  if (err instanceof StepFailure) {
    const inner = err.error;
    if (err.step === "test") {
      if (inner instanceof ExecError && inner.reason === "exit") return `nginx rejected the new configuration (${formatArgv(host.test_command)}):\n${inner.stderrTail || inner.message}`;
      return `the configuration test failed: ${errorMessage(inner)}`;
    }
    return `the reload failed: ${errorMessage(inner)}`;
  }
  if (err instanceof VerifyFailure) return err.message;
  return errorMessage(err);
}

/** Puts back what `applied` changed: previous bytes and mode, new files deleted; then the manifest as it was. */
async function restore(applied: readonly Change[], manifest: Manifest, stateDir: string): Promise<string[]> {
  const problems: string[] = [];
  for (const change of [...applied].reverse()) {
    try {
      if (change.before) await writeFileDurably(change.file, change.before.data, change.before.mode, `${TEMP_PREFIX}${change.site}`);
      else await rm(change.file, { force: true });
    } catch (err) {
      problems.push(`${change.file}: ${errorMessage(err)}`);
    }
  }
  try {
    await syncDirs(applied);
  } catch (err) {
    problems.push(`fsync: ${errorMessage(err)}`);
  }
  if (problems.length === 0) {
    try {
      await writeManifest(stateDir, manifest);
    } catch (err) {
      problems.push(`the ownership manifest in ${stateDir}: ${errorMessage(err)}`);
    }
  }
  return problems;
}

async function retestAfterRestore(host: NginxHost, reloadAttempted: boolean, ctx: CommandContext): Promise<string> {
  try {
    await runCommand(host.test_command, commandOptions(ctx, false));
  } catch (err) {
    const detail = err instanceof ExecError && err.stderrTail ? err.stderrTail : errorMessage(err);
    return (
      `The previous site files were put back byte for byte, but nginx -t FAILS WITH THEM TOO (the configuration is broken outside ` +
      `these sites, or nginx cannot be tested)${reloadAttempted ? "; nginx was NOT reloaded again" : ""}:\n${detail}`
    );
  }
  if (!reloadAttempted) return "The previous site files were put back byte for byte; nginx was not reloaded and still runs its previous configuration.";
  try {
    const before = await snapshot(host.pid_file);
    await runCommand(host.reload_command, commandOptions(ctx, false));
    await verifyReload(host, before, [], { ...ctx, signal: undefined });
  } catch (err) {
    return `The previous site files were put back byte for byte, but RELOADING NGINX WITH THEM FAILED: ${describeFailure(err, host)}. Check nginx now.`;
  }
  return "The previous site files were put back byte for byte and nginx reloaded with them.";
}

// ---------------------------------------------------------------------------------------
// Entry points

/**
 * Deploys the release's sites into conf_dir, tests and reloads nginx and verifies that the
 * reload took effect; on any failure puts the previous files back byte for byte, reloads
 * again and throws with nginx's own message. The caller holds the deployq:nginx lock.
 */
export async function deploySites(options: DeploySitesOptions, ctx: CommandContext): Promise<DeploySitesResult> {
  const { sites } = options;
  if (!path.isAbsolute(sites.conf_dir)) throw new DeployqError("DEPLOY", `nginx conf_dir ${JSON.stringify(sites.conf_dir)} must be an absolute path`);
  const confDir = path.resolve(sites.conf_dir);
  const sources = await readSiteFiles(options.sourceDir, sites, ctx.log);
  return applySites(
    {
      deployment: options.deployment,
      host: options.host,
      stateDir: options.stateDir,
      targets: sources.map((s) => ({ site: s.name, file: path.join(confDir, `${s.name}${SUFFIX}`), data: s.data })),
      confDirs: [confDir],
      verify: sites.verify,
      beforeActivate: options.beforeActivate,
    },
    ctx,
  );
}

export interface RemoveSitesOptions {
  deployment: string;
  host: NginxHost;
  stateDir: string;
}

/**
 * Removes every site file the deployment owns (for a deployment that is removed, or whose
 * [nginx] table is gone), tests, reloads and verifies like deploySites, and forgets the
 * deployment's manifest. Nothing owned: nothing happens. The caller holds deployq:nginx.
 */
export async function removeSites(options: RemoveSitesOptions, ctx: CommandContext): Promise<DeploySitesResult> {
  return applySites({ ...options, targets: [], confDirs: [], verify: {} }, ctx);
}
