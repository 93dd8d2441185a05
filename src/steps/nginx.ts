import { createHash } from "node:crypto";
import { constants as fsConstants } from "node:fs";
import { access, lstat, mkdir, open, readFile, readdir, readlink, rm, stat, unlink } from "node:fs/promises";
import http from "node:http";
import https from "node:https";
import path from "node:path";
import type { NginxHost, NginxSites } from "../config/schema.ts";
import { DEPLOYMENT_NAME, SITE_NAME } from "../config/schema.ts";
import { DeployqError, errorMessage } from "../errors.ts";
import { ExecError } from "../exec/exec-error.ts";
import { readProcStat } from "../exec/proc.ts";
import { formatArgv, runCommand } from "../exec/run-command.ts";
import { DURABLE_TEMP_SUFFIX, fsyncDir, writeFileDurably } from "../queue/fsync.ts";
import { branchGlobToRegExp } from "../config/branch.ts";
import { type CheckResult, checkCommand } from "./check-command.ts";
import { type CommandContext, runOptions } from "./command-context.ts";

/*
 * nginx site files from a deployment's repository.
 *
 * Ownership. `<stateDir>/<deployment>.json` (the manifest) lists, by absolute path, every
 * `<site>.conf` this deployment wrote and the sha256 it wrote. A file in conf_dir is
 * only ever written or removed when it is in that manifest or does not exist (and no other
 * deployment's manifest claims it). A file that exists and is not ours (the operator's own,
 * or another deployment's) refuses the whole deploy before anything changes. An owned file
 * whose content no longer matches the manifest was edited by hand: it is replaced (or
 * removed) all the same, with a warning in the deploy log, and put back if the deploy fails.
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
const SUFFIX = ".conf";
/** Temp files in conf_dir: hidden and not ending in .conf, so no `include *.conf` ever sees one. */
const TEMP_PREFIX = ".deployq-";
const TEMP_SUFFIX = DURABLE_TEMP_SUFFIX;
const POLL_MS = 50;

// ---------------------------------------------------------------------------------------
// Manifest

interface ManifestEntry {
  site: string;
  /** What deployq wrote; null while a deploy that writes it has not finished. */
  sha256: string | null;
}

interface Manifest {
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

async function readManifest(stateDir: string, deployment: string): Promise<Manifest> {
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
async function otherOwners(stateDir: string, deployment: string, log: CommandContext["log"]): Promise<Map<string, string>> {
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

async function writeManifest(stateDir: string, manifest: Manifest): Promise<void> {
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

class VerifyFailure extends Error {}

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
// Processes: did the master apply a configuration?

/** The nginx master's pid from the pid file; fails if it cannot be read or names no running nginx. */
async function readMaster(pidFile: string): Promise<number> {
  let text: string;
  try {
    text = await readFile(pidFile, "utf8");
  } catch (err) {
    throw new DeployqError("DEPLOY", `cannot read nginx's pid file ${pidFile} (${errorMessage(err)}): is nginx running? (set [nginx] pid_file if it writes another one)`);
  }
  const pid = Number.parseInt(text.trim(), 10);
  if (!Number.isInteger(pid) || pid <= 1 || String(pid) !== text.trim()) throw new DeployqError("DEPLOY", `nginx's pid file ${pidFile} holds ${JSON.stringify(text.trim())}, not a pid`);
  const st = await readProcStat(pid);
  if (!st || st.state === "Z") throw new DeployqError("DEPLOY", `nginx's pid file ${pidFile} names pid ${pid}, which is not running: is nginx running?`);
  const cmdline = await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => undefined);
  if (cmdline !== undefined && cmdline !== "" && !cmdline.includes("nginx")) {
    throw new DeployqError("DEPLOY", `nginx's pid file ${pidFile} names pid ${pid}, which is not nginx (${cmdline.replaceAll("\0", " ").trim()}): a stale pid file?`);
  }
  return pid;
}

/** `pid:starttime` of each live child of `pid`. */
async function childrenOf(pid: number): Promise<Set<string>> {
  const found = new Set<string>();
  let pids: string[] | undefined;
  try {
    const tasks = await readdir(`/proc/${pid}/task`);
    const lists = await Promise.all(tasks.map((t) => readFile(`/proc/${pid}/task/${t}/children`, "utf8")));
    pids = lists.join(" ").split(/\s+/).filter(Boolean);
  } catch {
    pids = undefined; // no CONFIG_PROC_CHILDREN: scan every process's parent
  }
  if (pids) {
    for (const child of pids) {
      const st = await readProcStat(child);
      if (st && st.ppid === pid && st.state !== "Z") found.add(`${child}:${st.starttime}`);
    }
    return found;
  }
  for (const name of await readdir("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    const st = await readProcStat(name);
    if (st && st.ppid === pid && st.state !== "Z") found.add(`${name}:${st.starttime}`);
  }
  return found;
}

interface Snapshot {
  master: number;
  children: Set<string>;
  at: number;
}

async function snapshot(pidFile: string): Promise<Snapshot> {
  const master = await readMaster(pidFile);
  return { master, children: await childrenOf(master), at: Date.now() };
}

/**
 * Waits until nginx applied a configuration after `before`: its master runs a child that
 * was not there (nginx starts new workers only once it has read a configuration and opened
 * its sockets; a failed reload keeps the old workers and logs why), or the pid file names
 * another running master. Old workers finishing their connections do not matter. Then each
 * verify URL must answer below 500. One deadline, verify_timeout_s after the reload.
 */
async function verifyReload(host: NginxHost, before: Snapshot, urls: Array<[string, string]>, ctx: CommandContext): Promise<void> {
  const timeoutMs = host.verify_timeout_s * 1000;
  const deadline = Date.now() + timeoutMs;
  let lastProblem = "";
  for (;;) {
    if (ctx.signal?.aborted) throw new VerifyFailure("the deploy was cancelled while nginx's reload was being verified");
    try {
      const master = await readMaster(host.pid_file);
      const children = await childrenOf(master);
      if (master !== before.master ? children.size > 0 : [...children].some((c) => !before.children.has(c))) break;
      lastProblem = "";
    } catch (err) {
      lastProblem = ` (${errorMessage(err)})`;
    }
    if (Date.now() >= deadline) {
      const logLines = await errorLogLines(before.master, before.at);
      throw new VerifyFailure(
        `the reload did not take effect: nginx's master (pid ${before.master}) started no new worker within ${host.verify_timeout_s} s${lastProblem}, ` +
          `so it still runs its previous configuration (nginx -t passes, but the configuration could not be applied, e.g. a listen port already in use). ` +
          (logLines.length > 0 ? `nginx's error log says:\n${logLines.join("\n")}` : "See nginx's error log for its reason."),
      );
    }
    await sleep(POLL_MS);
  }
  ctx.log.write(`nginx: the reload took effect (new workers)\n`);
  // Also without verify URLs: once the deploy says done, requests reach the new configuration.
  await oldWorkersStopAccepting(before, deadline, ctx);
  for (const [site, url] of urls) {
    let last = "";
    for (;;) {
      if (ctx.signal?.aborted) throw new VerifyFailure("the deploy was cancelled while the verify URLs were polled");
      const remaining = deadline - Date.now();
      const answer = await probe(url, Math.max(250, Math.min(5000, remaining)));
      if (typeof answer === "number" && answer < 500) {
        ctx.log.write(`nginx: verify ${site}: ${url} answered ${answer}\n`);
        break;
      }
      last = typeof answer === "number" ? `status ${answer}` : answer;
      if (Date.now() >= deadline) {
        throw new VerifyFailure(`site ${site}'s verify URL ${url} did not answer with a status below 500 within ${host.verify_timeout_s} s of the reload (last: ${last})`);
      }
      await sleep(Math.min(200, Math.max(0, deadline - Date.now())));
    }
  }
}

/**
 * For a few milliseconds after the new workers start, the old ones still accept connections
 * (with the old configuration) until they get the master's QUIT: a verify URL could be
 * answered by them. An old worker retitles itself "worker process is shutting down" just
 * before it closes its listening sockets; it may then take long to finish its connections,
 * which does not matter. Waits until each old child is gone or says so (at most until the
 * deadline; then the URLs are polled anyway, with a note in the log).
 */
async function oldWorkersStopAccepting(before: Snapshot, deadline: number, ctx: CommandContext): Promise<void> {
  for (;;) {
    let accepting = 0;
    for (const key of before.children) {
      const [pid, starttime] = key.split(":");
      const st = await readProcStat(pid!);
      if (!st || st.state === "Z" || st.starttime !== starttime) continue;
      const title = await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => undefined);
      if (title === undefined) return; // not ours to read: nothing to wait for
      if (title !== "" && !title.includes("shutting down")) accepting++;
    }
    if (accepting === 0) return;
    if (Date.now() >= deadline || ctx.signal?.aborted) {
      ctx.log.write(`nginx: note: ${accepting} old worker(s) of nginx did not start shutting down; the verify URLs may be answered by the previous configuration\n`);
      return;
    }
    await sleep(10);
  }
}

/** GET on a fresh connection (a pooled one could reach an old worker); the status, or why there was none. TLS is not verified: only whether nginx answers. */
function probe(url: string, timeoutMs: number): Promise<number | string> {
  return new Promise((resolve) => {
    let done = false;
    const finish = (value: number | string) => {
      if (done) return;
      done = true;
      resolve(value);
    };
    let req: http.ClientRequest;
    try {
      const u = new URL(url);
      const options = { method: "GET", agent: false as const, timeout: timeoutMs, headers: { "user-agent": "deployq-verify", connection: "close" } };
      req = u.protocol === "https:" ? https.request(u, { ...options, rejectUnauthorized: false }) : http.request(u, options);
    } catch (err) {
      finish(errorMessage(err));
      return;
    }
    req.on("response", (res) => {
      finish(res.statusCode ?? 0);
      res.resume();
      req.destroy();
    });
    req.on("timeout", () => {
      finish(`no answer within ${timeoutMs} ms`);
      req.destroy();
    });
    req.on("error", (err) => finish(errorMessage(err)));
    req.end();
  });
}

const LOG_LINE = /^(\d{4})\/(\d{2})\/(\d{2}) (\d{2}):(\d{2}):(\d{2}) \[(emerg|alert|crit|error)\] /;

/**
 * nginx's own reason for a failed reload, best effort: [emerg]/[alert]/[crit] lines logged
 * since `since` in the error logs the master has open (readable when deployq may look at
 * the master's file descriptors), else in /var/log/nginx/error.log if readable.
 */
async function errorLogLines(master: number, since: number): Promise<string[]> {
  const candidates = new Set<string>();
  try {
    for (const fd of await readdir(`/proc/${master}/fd`)) {
      const target = await readlink(`/proc/${master}/fd/${fd}`).catch(() => "");
      if (target.startsWith("/") && /error[^/]*$/.test(path.basename(target))) candidates.add(target);
    }
  } catch {
    // not ours to look at
  }
  if (candidates.size === 0) candidates.add("/var/log/nginx/error.log");
  const lines: string[] = [];
  for (const file of candidates) {
    try {
      const fh = await open(file, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK);
      try {
        const { size } = await fh.stat();
        const length = Math.min(size, 64 * 1024);
        const buffer = Buffer.alloc(length);
        await fh.read(buffer, 0, length, size - length);
        for (const line of buffer.toString("utf8").split("\n")) {
          const m = LOG_LINE.exec(line);
          if (!m || m[7] === "error") continue;
          const at = new Date(Number(m[1]), Number(m[2]) - 1, Number(m[3]), Number(m[4]), Number(m[5]), Number(m[6])).getTime();
          if (at >= since - 1000) lines.push(line.trim());
        }
      } finally {
        await fh.close();
      }
    } catch {
      // unreadable: the generic message stands
    }
  }
  // nginx tries bind() five times: one line per distinct message (time and pid aside), with a count.
  const counts = new Map<string, { line: string; count: number }>();
  for (const line of lines) {
    const key = line.replace(/^\S+ \S+ \[(\w+)\] \d+#\d+: /, "$1 ");
    const seen = counts.get(key);
    if (seen) seen.count++;
    else counts.set(key, { line, count: 1 });
  }
  return [...counts.values()].slice(-10).map(({ line, count }) => (count > 1 ? `${line} (${count} times)` : line));
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
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

type Check = CheckResult;

const SUDOERS_FIX = "install sudoers/deployq (visudo -cf sudoers/deployq && install -m 0440 sudoers/deployq /etc/sudoers.d/deployq)";
const fixFor = (key: string) => ({ missing: `install it or change [nginx] ${key}`, sudo: `${SUDOERS_FIX} or change [nginx] ${key}` });

/** For `deployq check`, changing nothing. */
export async function checkNginx(host: NginxHost, confDirs: string[]): Promise<Array<{ name: string; ok: boolean; detail: string }>> {
  const checks: Check[] = [];
  checks.push(await checkCommand("nginx test_command", host.test_command, fixFor("test_command")));
  checks.push(await checkCommand("nginx reload_command", host.reload_command, fixFor("reload_command")));
  for (const dir of [...new Set(confDirs)].sort()) {
    const name = `nginx conf_dir ${dir}`;
    try {
      const st = await stat(dir);
      if (!st.isDirectory()) {
        checks.push({ name, ok: false, detail: `${dir} is not a folder` });
        continue;
      }
      await access(dir, fsConstants.W_OK | fsConstants.X_OK);
      checks.push({ name, ok: true, detail: `writable; nginx must include it (include ${dir}/*.conf;)` });
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      checks.push({
        name,
        ok: false,
        detail:
          code === "ENOENT"
            ? `${dir} does not exist: create it, owned by deployq's user, and include it from nginx's http block (include ${dir}/*.conf;)`
            : `${dir} is not writable by deployq's user (${errorMessage(err)}): chown it to that user`,
      });
    }
  }
  try {
    const master = await readMaster(host.pid_file);
    checks.push({ name: "nginx pid_file", ok: true, detail: `${host.pid_file}: nginx master pid ${master}` });
  } catch (err) {
    checks.push({ name: "nginx pid_file", ok: false, detail: errorMessage(err) });
  }
  return checks;
}
