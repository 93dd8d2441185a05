/**
 * `restart = { pm2 = "<ecosystem file>" }`: make the apps of the ecosystem file run the release
 * behind `appDir` (`<path>/current`, or the in-place work tree) under the pm2 daemon at PM2_HOME.
 *
 * What pm2 7 really does (node_modules/pm2), and what follows from it:
 *
 * 1. pm2 fixes an app's paths once, when it first starts it, and never again. The CLI computes
 *    `pm_cwd` and `pm_exec_path = path.resolve(cwd, script)` in Common.prepareAppConf
 *    (lib/Common.js:105-187), where `cwd` defaults to the CLI's own `process.cwd()`
 *    (lib/API.js:69, passed as `opts.cwd` at API.js:1129). A reload of an app that already
 *    runs does not go through prepareAppConf: `_startJson` sends only the app's env plus its
 *    raw config as `current_conf` (API.js:1057-1076, Common.mergeEnvironmentVariables at
 *    Common.js:618), the daemon merges those into `pm2_env` (God/Reload.js:288-289,
 *    God/ActionMethods.js:405-406, Utility.extendExtraConfig) and respawns from the old
 *    `pm_exec_path`/`pm_cwd`: the new worker is a clone of the old `pm2_env`
 *    (Reload.js:154). So a changed `script` or `cwd` in the new ecosystem file is ignored by
 *    `reload`/`startOrReload --update-env` (checked: pm2_env.script changes, pm_exec_path not).
 * 2. pm2 never calls realpath on those paths (no realpath in lib/ but typestrip.js), but the
 *    paths it is given usually are resolved already: `getcwd()` of a CLI started in
 *    `<path>/current` returns `<path>/releases/<a>`, and `__dirname` of an ecosystem file
 *    loaded through `current` is the release too (require resolves symlinks). Then
 *    `cd current && pm2 startOrReload ecosystem.config.cjs --update-env` after a switch keeps
 *    serving release <a> in fork AND cluster mode (checked with pm2 7.0.4: both answer "a").
 * 3. The code is resolved when a process starts: ForkMode spawns with `cwd: pm_cwd`
 *    (God/ForkMode.js:104) and ProcessContainerFork `require`s/imports `pm_exec_path`
 *    (ProcessContainerFork.js:27-33); a cluster worker chdirs to `pm_cwd` and requires
 *    `pm_exec_path` (ProcessContainer.js:276-285). Node resolves the symlink right then. So
 *    paths that go THROUGH `current` make every new process run whatever `current` points
 *    at by then.
 *
 * Hence:
 * - deployq loads the ecosystem file itself, in a child `node` (pm2-helper.cjs: the file is
 *   code from the deployed repository and never runs inside deployq), and hands pm2 a
 *   generated JSON ecosystem in which every app's `cwd` and an absolute `script` go through
 *   `appDir` (`path.resolve(appDir, cwd)`; a path inside the resolved release, e.g. from
 *   `__dirname`, is rewritten to the same path through `appDir`). The pm2 CLI runs with cwd
 *   PM2_HOME, so nothing depends on its getcwd().
 * - Cluster-mode apps already running with exactly those paths get `pm2 reload`: pm2's
 *   rolling reload (hardReload, Reload.js:145-220) starts the new worker, waits for it to
 *   listen (or to send 'ready' with wait_ready), and only then stops the old one (SIGINT):
 *   no request fails, and the new worker requires `current/...`, i.e. the new release. A
 *   different instance count is applied afterwards with `pm2 scale`. The app must stop
 *   gracefully: a cluster worker that exits right after server.close() can lose a connection
 *   the daemon was handing it; `cluster.worker.disconnect()` on SIGINT does not (the test's app).
 * - Fork-mode apps, and cluster apps whose recorded paths or mode differ, are deleted and
 *   started again: fork mode has no rolling reload anyway (reloadProcessId on a fork app is
 *   restartProcessId, stop then start: Reload.js:292-297), and only a fresh start re-reads
 *   everything of the new file (paths, interpreter, exec mode, removed env variables).
 * - Afterwards every app is checked in the process list: its paths go through `appDir`,
 *   reloaded apps have new pids (`pm2 reload <json>` prints per-app errors but exits 0,
 *   API.js:1076-1085), nothing is errored or stopped. Then `pm2 save`.
 * test/integration/pm2-restart.test.ts checks all of it against the real pm2: the naive command
 * keeps serving the old release; pm2Restart serves the new one in fork and cluster mode, with
 * no failed request during the cluster reload.
 *
 * Ownership: every app started here carries `DEPLOYQ_DEPLOYMENT=<deployment>` in its env. A
 * name in the file that pm2 already runs without this tag (another deployment's app, the
 * operator's) is refused before anything changes; only tagged apps are deleted, by pm_id (a
 * name like `all` or `12` means something else to pm2; such names are refused anyway).
 *
 * Environment: runCommand gives every child only a base environment (PATH, HOME, locale,
 * exec/run-command.ts), never deployq's own (its webhook secrets, DATABASE_URL). The pm2 CLI
 * gets that plus PM2_HOME, nothing else: pm2 copies the CLI's whole environment into every
 * app it starts and, with --update-env, into every app it reloads (Common.js:158-185,
 * API.js:1361-1369), and a daemon it spawns keeps that environment for good (Client.js:253-261)
 * and passes it to every cluster worker (cluster.fork). So this deploy's variables
 * (options.env) and `restart.env` go into each app's own `env` in the generated file, where
 * they reach this deployment's apps only (and override the ecosystem file's `env`).
 */
import { constants, existsSync } from "node:fs";
import { access, mkdir, mkdtemp, readFile, realpath, rm, stat, writeFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { connect } from "node:net";
import { cpus, tmpdir, userInfo } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { SECRET_VARIABLES } from "../config/load.ts";
import { PM2_APP_NAME, type Pm2Restart } from "../config/schema.ts";
import { DeployqError, errorMessage } from "../errors.ts";
import { ExecError } from "../exec/exec-error.ts";
import { runCommand, type RunResult } from "../exec/run-command.ts";
import { type CommandContext, runOptions } from "./command-context.ts";

export interface Pm2RestartOptions {
  pm2Home: string;
  /** The deployment's name: its apps carry DEPLOYQ_DEPLOYMENT=<name>, and only those are ever deleted. */
  deployment: string;
  /** The path the apps must run through: `<path>/current` (not resolved) or the in-place work tree. */
  appDir: string;
  restart: Pm2Restart;
  /** DEPLOYQ_* variables of this deploy, passed to the apps along with restart.env. */
  env: Record<string, string>;
}

const require = createRequire(import.meta.url);
/** The project's own pm2, run by the node running deployq. */
export const PM2_BIN = require.resolve("pm2/bin/pm2");
const HELPER = fileURLToPath(new URL("./pm2-helper.cjs", import.meta.url));
const LIST_MARKER = "@@deployq-pm2-list@@";
/** The env variable that marks an app as started by deployq for a deployment. */
export const DEPLOYMENT_TAG = "DEPLOYQ_DEPLOYMENT";

/** One pm2 process, as pm2-helper.cjs lists it. */
export interface Pm2Process {
  name: string;
  pm_id: number;
  pid: number;
  status: string;
  exec_mode: string;
  pm_exec_path?: string;
  pm_cwd?: string;
  restart_time: number;
  /** Its DEPLOYQ_DEPLOYMENT, or null: not started by deployq. */
  deployment: string | null;
  module: boolean;
}

/** An app of the ecosystem file, as pm2 will get it. */
interface PlannedApp {
  name: string;
  /** The config written into the generated ecosystem file. */
  config: Record<string, unknown>;
  cwd: string;
  /** What pm2 will record as pm_exec_path, when the script is a file (not a command found in PATH). */
  execPath: string | undefined;
  cluster: boolean;
  instances: number;
}

/** Starts or reloads the ecosystem file's apps so that they run the release behind `appDir`; deletes this deployment's apps that are gone; `pm2 save`. */
export async function pm2Restart(options: Pm2RestartOptions, ctx: CommandContext): Promise<void> {
  const pm2Home = path.resolve(options.pm2Home);
  const appDir = path.resolve(options.appDir);
  const file = options.restart.pm2;
  const work = await mkdtemp(path.join(tmpdir(), "deployq-pm2-"));
  try {
    // 1. Everything that can be wrong with the file, before pm2 is touched.
    const apps = await loadEcosystem(options, appDir, work, ctx);
    const selected = selectApps(apps, options.restart.only, file);
    const realAppDir = await realpath(appDir);
    const planned = selected.map((app) => planApp(app, appDir, realAppDir, options));
    const generated = path.join(work, "ecosystem.json");
    await writeFile(generated, JSON.stringify({ apps: planned.map((p) => p.config) }, null, 2), { mode: 0o600 });
    ctx.log.write(`pm2 apps of ${file}: ${planned.map((p) => `${p.name} (${p.cluster ? `cluster ×${p.instances}` : "fork"})`).join(", ")}, run through ${appDir}\n`);

    // 2. What runs now, and what to do with each app.
    const before = await listProcesses(pm2Home, ctx);
    const names = new Set(planned.map((p) => p.name));
    for (const p of before) {
      if (names.has(p.name) && p.deployment !== options.deployment) {
        throw new DeployqError(
          "DEPLOY",
          `pm2 (PM2_HOME=${pm2Home}) already runs an app named ${p.name} that deployq did not start for ${options.deployment} ` +
            `(${p.deployment ? `it belongs to deployment ${p.deployment}` : `no ${DEPLOYMENT_TAG} in its env`}): deployq never replaces it. ` +
            `Rename the app in ${file}, or remove the other one yourself (pm2 delete ${p.name}).`,
        );
      }
    }
    const ours = before.filter((p) => p.deployment === options.deployment && !p.module);
    const gone = ours.filter((p) => !names.has(p.name));
    const toStart: PlannedApp[] = [];
    const toReload: PlannedApp[] = [];
    const toRecreate: PlannedApp[] = [];
    const toDelete: Pm2Process[] = [...gone];
    for (const app of planned) {
      const running = ours.filter((p) => p.name === app.name);
      if (running.length === 0) toStart.push(app);
      else if (app.cluster && running.every((p) => p.exec_mode === "cluster_mode" && p.pm_cwd === app.cwd && (app.execPath === undefined || p.pm_exec_path === app.execPath))) {
        toReload.push(app);
      } else {
        // Fork mode, or pm2 recorded other paths or another mode: only a fresh start applies the new file.
        toDelete.push(...running);
        toRecreate.push(app);
      }
    }
    ctx.log.write(
      `pm2 plan: ${[
        gone.length ? `delete ${unique(gone.map((p) => p.name)).join(", ")} (not in ${options.restart.only ? "restart.only" : file} any more)` : "",
        toRecreate.length ? `delete and start ${toRecreate.map((a) => a.name).join(", ")}` : "",
        toStart.length ? `start ${toStart.map((a) => a.name).join(", ")}` : "",
        toReload.length ? `rolling reload ${toReload.map((a) => a.name).join(", ")}` : "",
      ]
        .filter(Boolean)
        .join("; ")}\n`,
    );

    // 3. Act. Deleted first (a renamed app may want the same port), by pm_id only.
    if (toDelete.length > 0) await pm2(["delete", ...toDelete.map((p) => String(p.pm_id))], pm2Home, ctx);
    if (toRecreate.length + toStart.length > 0) await pm2(["start", generated, "--only", [...toRecreate, ...toStart].map((a) => a.name).join(",")], pm2Home, ctx);
    if (toReload.length > 0) {
      // --force: pm2's reload lock (PM2_HOME/reload.lock, Common.js:67) is per PM2_HOME, so without it
      // another deployment reloading at the same moment would make this reload fail.
      await pm2(["reload", generated, "--only", toReload.map((a) => a.name).join(","), "--update-env", "--force"], pm2Home, ctx);
    }
    let after = await listProcesses(pm2Home, ctx);
    // A reload keeps the number of processes: a new `instances` is applied by scaling (new ones clone the reloaded config).
    const rescale = toReload.filter((app) => after.filter((p) => p.name === app.name).length !== app.instances);
    for (const app of rescale) await pm2(["scale", app.name, String(app.instances)], pm2Home, ctx);
    if (rescale.length > 0) after = await listProcesses(pm2Home, ctx);

    // 4. Prove it: every app runs through appDir, reloaded ones in new processes.
    const oldPids = new Set(before.map((p) => p.pid).filter((pid) => pid > 0));
    for (const app of planned) {
      const procs = after.filter((p) => p.name === app.name);
      const problem =
        procs.length === 0
          ? "is not in pm2's process list after `pm2 start` (see pm2's output above)"
          : procs.some((p) => p.deployment !== options.deployment)
            ? `lost its ${DEPLOYMENT_TAG} tag`
            : procs.some((p) => p.pm_cwd !== app.cwd || (app.execPath !== undefined && p.pm_exec_path !== app.execPath))
              ? `runs ${procs.map((p) => `${p.pm_exec_path} in ${p.pm_cwd}`).join(", ")} instead of ${app.execPath ?? "its script"} in ${app.cwd}`
              : procs.some((p) => p.status === "errored" || p.status === "stopped")
                ? `is ${procs.map((p) => p.status).join(", ")} (its log: ${path.join(pm2Home, "logs", `${app.name}-error.log`)})`
                : toReload.includes(app) && procs.some((p) => oldPids.has(p.pid))
                  ? "was not reloaded: a process of the old release still runs (see pm2's output above)"
                  : app.cluster && procs.length !== app.instances
                    ? `runs ${procs.length} instances instead of ${app.instances}`
                    : undefined;
      if (problem) throw new DeployqError("DEPLOY", `pm2 app ${app.name} ${problem}`);
    }

    // 5. Resurrect this state after a reboot (`pm2 startup` + `pm2 resurrect` read the dump).
    await pm2(["save"], pm2Home, ctx);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/** Runs the project's pm2 CLI against `pm2Home` (its cwd too: nothing may depend on the caller's getcwd()). */
async function pm2(args: string[], pm2Home: string, ctx: CommandContext): Promise<RunResult> {
  return runCommand([process.execPath, PM2_BIN, ...args], runOptions(ctx, await ensurePm2Home(pm2Home), { PM2_HOME: pm2Home }));
}

/**
 * Creates PM2_HOME, and its `touch` file: the pm2 CLI prints its ASCII-art banner (and asks
 * its version server) once per PM2_HOME, when that file is missing (pm2 lib/Client.js,
 * initFileStructure); that is not for a deploy's log. Returns the directory.
 */
async function ensurePm2Home(dir: string): Promise<string> {
  await mkdir(dir, { recursive: true });
  await writeFile(path.join(dir, "touch"), `${Date.now()}`, { flag: "wx" }).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== "EEXIST") throw err;
  });
  return dir;
}

/** pm2's process list (starting its daemon if none runs, as `pm2 jlist` would), without the apps' environments. */
export async function listProcesses(pm2Home: string, ctx: CommandContext): Promise<Pm2Process[]> {
  // Its stdout is the list, for deployq only; pm2's errors (stderr) go to the log.
  const { stdout } = await runCommand([process.execPath, HELPER, "list"], { ...runOptions(ctx, await ensurePm2Home(pm2Home), { PM2_HOME: pm2Home }), logStdout: false });
  const at = stdout.lastIndexOf(LIST_MARKER);
  if (at < 0) throw new DeployqError("DEPLOY", `pm2's process list could not be read (PM2_HOME=${pm2Home}): ${stdout.slice(-500)}`);
  return JSON.parse(stdout.slice(at + LIST_MARKER.length)) as Pm2Process[];
}

/** Loads the ecosystem file in a child node (pm2-helper.cjs) and returns its apps, validated. */
async function loadEcosystem(options: Pm2RestartOptions, appDir: string, work: string, ctx: CommandContext): Promise<Array<Record<string, unknown>>> {
  const file = options.restart.pm2;
  const full = path.join(appDir, file);
  if (!existsSync(full)) {
    throw new DeployqError("DEPLOY", `the pm2 ecosystem file ${file} is not in ${appDir}: add it to the repository, or fix \`restart = { pm2 = ... }\``);
  }
  if (!/\.(?:c?js|mjs|json|ya?ml)$/.test(full)) {
    throw new DeployqError("DEPLOY", `the pm2 ecosystem file ${file} must end in .js, .cjs, .mjs, .json, .yml or .yaml (e.g. ecosystem.config.cjs)`);
  }
  const output = path.join(work, "loaded.json");
  try {
    // What the ecosystem file may read from process.env: what a pm2 CLI started by this deploy would have.
    const env = { PM2_HOME: path.resolve(options.pm2Home), ...options.env, ...options.restart.env };
    await runCommand([process.execPath, HELPER, "load", full, output], runOptions(ctx, appDir, env));
  } catch (err) {
    if (err instanceof ExecError && err.reason === "exit") {
      throw new DeployqError("DEPLOY", `the pm2 ecosystem file ${file} could not be loaded; fix it in the repository:\n${err.stderrTail.trim().split("\n").slice(-8).join("\n")}`, {
        cause: err,
      });
    }
    throw err;
  }
  const config = JSON.parse(await readFile(output, "utf8")) as unknown;
  let apps: unknown = config;
  if (isRecord(config)) apps = config.apps ?? config.pm2 ?? config;
  const list = Array.isArray(apps) ? apps : [apps];
  const usage = `it must export { apps: [{ name: "web", script: "server.js" }, ...] }`;
  if (list.length === 0) throw new DeployqError("DEPLOY", `the pm2 ecosystem file ${file} defines no apps: ${usage}`);
  const seen = new Set<string>();
  return list.map((raw, i) => {
    if (!isRecord(raw)) throw new DeployqError("DEPLOY", `app #${i + 1} of the pm2 ecosystem file ${file} is not an object: ${usage}`);
    const app: Record<string, unknown> = { ...raw };
    // pm2's aliases (Common.verifyConfs)
    if (app.script === undefined) app.script = app.cmd ?? app.command;
    delete app.cmd;
    delete app.command;
    if (typeof app.script !== "string" || app.script === "") {
      throw new DeployqError("DEPLOY", `app ${typeof app.name === "string" ? app.name : `#${i + 1}`} of the pm2 ecosystem file ${file} has no script: ${usage}`);
    }
    // pm2's default name (Common.renderApplicationName): the script's file name without its extension.
    if (app.name === undefined) {
      const base = path.basename(app.script);
      app.name = base.lastIndexOf(".") > 0 ? base.slice(0, base.lastIndexOf(".")) : base;
    }
    const name = app.name;
    if (typeof name !== "string" || !validAppName(name)) {
      throw new DeployqError(
        "DEPLOY",
        `app #${i + 1} of the pm2 ecosystem file ${file} has the name ${JSON.stringify(name)}, which deployq cannot pass to pm2: ` +
          `use letters, digits, . _ : @ - (starting with a letter or digit, at most 100), not a number and not "all" (pm2 reads those as process ids or every app)`,
      );
    }
    if (seen.has(name)) throw new DeployqError("DEPLOY", `the pm2 ecosystem file ${file} defines the app ${name} twice: give each app its own name`);
    seen.add(name);
    return app;
  });
}

/** A name pm2's command line reads as exactly this app: PM2_APP_NAME, and neither a number (an id) nor `all`. */
export function validAppName(name: string): boolean {
  return PM2_APP_NAME.test(name) && name !== "all" && Number.isNaN(Number(name));
}

function selectApps(apps: Array<Record<string, unknown>>, only: readonly string[] | undefined, file: string): Array<Record<string, unknown>> {
  if (!only) return apps;
  const names = apps.map((a) => a.name as string);
  const unknown = only.filter((o) => !names.includes(o));
  if (unknown.length > 0) {
    throw new DeployqError(
      "DEPLOY",
      `restart.only names ${unknown.join(", ")}, which the pm2 ecosystem file ${file} does not define (it defines ${names.join(", ")}): fix \`only\` in the deployment's restart, or add the app to ${file}`,
    );
  }
  return apps.filter((a) => only.includes(a.name as string));
}

function planApp(app: Record<string, unknown>, appDir: string, realAppDir: string, options: Pm2RestartOptions): PlannedApp {
  // A path inside the resolved release (from __dirname, or process.cwd() in the ecosystem file) → the same path through appDir.
  const through = (p: string) => (p === realAppDir ? appDir : p.startsWith(realAppDir + path.sep) ? appDir + p.slice(realAppDir.length) : p);
  const name = app.name as string;
  const cwd = typeof app.cwd === "string" && app.cwd !== "" ? through(path.resolve(appDir, app.cwd)) : appDir;
  const script = app.script as string;
  const scriptThrough = path.isAbsolute(script) ? through(script) : script;
  const candidate = path.resolve(cwd, scriptThrough);
  const env = {
    // A cluster worker gets the pm2 daemon's whole environment (cluster.fork), which holds
    // deployq's secrets when pm2 was started from a shell that exports them: blank them,
    // unless the app's file or the deployment sets its own (its own DATABASE_URL, say).
    ...Object.fromEntries(SECRET_VARIABLES.map((name) => [name, ""])),
    // The notifiers' URLs and keys ([[notify]] url_env, secret_env: DEPLOYQ_NOTIFY_*) are secrets too.
    ...Object.fromEntries(Object.keys(process.env).filter((name) => name.startsWith("DEPLOYQ_NOTIFY_")).map((name) => [name, ""])),
    ...(isRecord(app.env) ? app.env : {}),
    ...options.env,
    ...options.restart.env,
    [DEPLOYMENT_TAG]: options.deployment,
  };
  return {
    name,
    config: { ...app, name, script: scriptThrough, cwd, env },
    cwd,
    execPath: existsSync(candidate) ? candidate : undefined,
    cluster: isClusterMode(app),
    instances: instanceCount(app.instances),
  };
}

/** pm2's Common.sink.determineExecMode (Common.js:339), for node scripts. */
function isClusterMode(app: Record<string, unknown>): boolean {
  const mode = typeof app.exec_mode === "string" ? app.exec_mode.replace(/^(fork|cluster)$/, "$1_mode") : undefined;
  if (mode) return mode === "cluster_mode";
  if (app.instances === undefined) return false;
  const interpreter = typeof app.interpreter === "string" ? app.interpreter : typeof app.exec_interpreter === "string" ? app.exec_interpreter : "node";
  const n = normalizeInstances(app.instances);
  return (n >= 1 || n === 0 || n === -1) && /(?:node|bun)$/.test(path.basename(interpreter));
}

function normalizeInstances(value: unknown): number {
  if (value === "max") return 0;
  if (typeof value === "string") return Number.parseInt(value, 10) || 0;
  return typeof value === "number" ? value : 1;
}

/** How many processes pm2 starts (God.prepare, lib/God.js:137-146). */
function instanceCount(value: unknown): number {
  if (value === undefined) return 1;
  let n = normalizeInstances(value);
  const cpuCount = cpus().length || 1;
  if (n === 0) n = cpuCount;
  else if (n < 0) n += cpuCount;
  return n <= 0 ? 1 : n;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function unique(values: string[]): string[] {
  return [...new Set(values)];
}

/** For `deployq check`, changing nothing: is pm2 usable with this PM2_HOME? */
export async function checkPm2(pm2Home: string): Promise<{ ok: boolean; detail: string }> {
  const home = path.resolve(pm2Home);
  const user = safeUser();
  let isDir: boolean;
  try {
    isDir = (await stat(home)).isDirectory();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") return { ok: false, detail: `PM2_HOME ${home} cannot be read (${errorMessage(err)})` };
    const parent = path.dirname(home);
    try {
      await access(parent, constants.W_OK | constants.X_OK);
      return { ok: true, detail: `PM2_HOME ${home} does not exist yet; pm2 creates it at the first deploy (${parent} is writable by ${user})` };
    } catch {
      return {
        ok: false,
        detail: `PM2_HOME ${home} does not exist and ${parent} is missing or not writable by ${user}: create it (mkdir -p ${home} && chown ${user} ${home}), or set pm2_home`,
      };
    }
  }
  if (!isDir) return { ok: false, detail: `PM2_HOME ${home} is not a directory: point pm2_home at a directory` };
  try {
    await access(home, constants.W_OK | constants.X_OK);
  } catch {
    return { ok: false, detail: `PM2_HOME ${home} is not writable by ${user}: chown ${user} ${home}, or set pm2_home to a directory of ${user}` };
  }
  const socket = path.join(home, "rpc.sock");
  if (!existsSync(socket)) return { ok: true, detail: `PM2_HOME ${home} is writable; no pm2 daemon runs there yet (the first deploy starts one)` };
  // Only a daemon that listens may be pinged: `pm2 ping` would start one otherwise.
  const reach = await probeSocket(socket, 3000);
  if (reach === "ECONNREFUSED" || reach === "ENOENT") {
    return { ok: true, detail: `PM2_HOME ${home} is writable; its rpc.sock is left by a pm2 daemon that no longer runs (the first deploy starts a new one)` };
  }
  if (reach === "EACCES" || reach === "EPERM") {
    return { ok: false, detail: `the pm2 daemon at ${home} belongs to another user (${socket}: permission denied): run deployq as that user, or set pm2_home to ${user}'s own` };
  }
  if (reach !== "connected") return { ok: false, detail: `the pm2 daemon at ${home} does not accept connections on ${socket} (${reach}): see ${path.join(home, "pm2.log")}; \`pm2 update\` restarts it with its apps` };
  try {
    const { stdout } = await runCommand([process.execPath, PM2_BIN, "ping"], { cwd: home, env: { PM2_HOME: home }, timeoutMs: 20_000 });
    const outdated = /out-of-date/i.test(stdout) ? `; its pm2 is older than deployq's: \`PM2_HOME=${home} ${PM2_BIN} update\` restarts it with its apps` : "";
    return { ok: true, detail: `the pm2 daemon at ${home} answers${outdated}` };
  } catch (err) {
    return {
      ok: false,
      detail: `the pm2 daemon at ${home} does not answer \`pm2 ping\` (${errorMessage(err).split("\n")[0]}): see ${path.join(home, "pm2.log")}; \`pm2 update\` restarts it with its apps`,
    };
  }
}

function safeUser(): string {
  try {
    return userInfo().username;
  } catch {
    return `uid ${process.getuid?.() ?? "?"}`;
  }
}

/** Connects to a unix socket and closes it: "connected", or the error code. */
function probeSocket(socket: string, timeoutMs: number): Promise<string> {
  return new Promise((resolve) => {
    const conn = connect(socket);
    const timer = setTimeout(() => {
      conn.destroy();
      resolve("timeout");
    }, timeoutMs);
    conn.once("connect", () => {
      clearTimeout(timer);
      conn.destroy();
      resolve("connected");
    });
    conn.once("error", (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      resolve(err.code ?? err.message);
    });
  });
}
