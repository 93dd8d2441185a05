import type { StepKind } from "../events/types.ts";
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import type { Writable } from "node:stream";
import type { Deployment } from "../config/load.ts";
import type { CertbotHost, NginxHost } from "../config/schema.ts";
import { DeployqError, errorMessage } from "../errors.ts";
import { runCommand } from "../exec/run-command.ts";
import { certificateStateDir, ensureCertificate, serverNames } from "../steps/certbot.ts";
import type { CommandContext } from "../steps/command-context.ts";
import { waitHealthy } from "../steps/health.ts";
import { nginxStateDir } from "../steps/nginx/manifest.ts";
import { deploySites } from "../steps/nginx/sites.ts";
import { listProcesses, pm2Restart } from "../steps/pm2.ts";
import { type GitContext, SHA, checkoutInPlace, checkoutRelease, ensureCommit, ensureMirror, fetchMirror, fetchedBranchHead, resolveRef } from "../steps/git.ts";
import {
  type DeploymentPaths,
  type PendingSwitch,
  type ReleaseMeta,
  beginSwitch,
  createReleaseDir,
  currentRelease,
  deploymentPaths,
  linkShared,
  listReleases,
  endSwitch,
  pruneReleases,
  readPendingSwitch,
  readReleaseMeta,
  switchCurrent,
  writeReleaseMeta,
} from "../steps/release.ts";

/** What one queue entry asks for. */
export type DeployRequest =
  /** `checked`: its commit passed the checks the deployment requires, so only that commit may go live. */
  | { kind: "push"; entry: string; ref: string | undefined; sha: string; checked?: boolean }
  | { kind: "deploy"; entry: string; ref: string; force: boolean }
  | { kind: "rollback"; entry: string; to: string | undefined };

/** What this host offers the deploy steps (from the top level of the configuration). */
export interface HostSteps {
  pm2Home: string;
  nginx: NginxHost;
  certbot: CertbotHost | undefined;
  /** Runs `fn` under the global deployq:nginx lock, waiting while another deploy holds it; its signal aborts if the lock is lost. */
  withNginxLock: <T>(fn: (signal: AbortSignal) => Promise<T>) => Promise<T>;
}

export interface DeployContext {
  deployment: Deployment;
  dataDir: string;
  host: HostSteps;
  /** The deploy's log file. */
  log: Writable;
  /** Aborted on shutdown (after the grace period) or when the lock is lost. */
  signal: AbortSignal;
  /** Called as each step starts (progress for logs, events and the terminal); a step ends when the next starts, or the deploy ends. */
  onStep?: (kind: StepKind, title: string) => void;
  /** Where the running command's pid is kept (killed at the next start if deployq dies). */
  pidFile?: string;
  /** Called right before `current` (or the in-place work tree) changes: throws if this worker may no longer act. */
  fence?: () => Promise<void>;
  /**
   * A fleet rollout's entry: runs the part that changes what is live (the switch through the
   * health check and the sites) when the rollout lets this host (src/fleet/rolling.ts).
   */
  rolling?: <T>(fn: () => Promise<T>) => Promise<T>;
}

/** What changes what is live runs through the rollout's gate, if the entry came from one. */
async function live<T>(ctx: DeployContext, fn: () => Promise<T>): Promise<T> {
  if (!ctx.rolling) return fn();
  step(ctx, "rollout", "wait for the rollout's turn (canary, slot)");
  return ctx.rolling(fn);
}

export type DeployOutcome =
  | { status: "succeeded"; sha: string; release: string | undefined; previousRelease: string | undefined; requestedSha: string | undefined }
  | { status: "already-deployed"; sha: string; release: string | undefined }
  /** A push whose branch had moved on to a commit that is already live (`supersededBy`), or was deleted: nothing to do. */
  | { status: "superseded"; sha: string; supersededBy: string | undefined; note: string };

/** Runs one request to its end. Throws TransientError (retry), ExecError or DeployqError (permanent). */
export async function performDeploy(request: DeployRequest, ctx: DeployContext): Promise<DeployOutcome> {
  if (request.kind === "rollback") return rollback(request.to, request.entry, ctx);
  if (ctx.deployment.strategy === "in-place") return deployInPlace(request, ctx);
  return deployRelease(request, ctx);
}

function step(ctx: DeployContext, kind: StepKind, title: string): void {
  ctx.log.write(`\n== ${title} (${new Date().toISOString()})\n`);
  ctx.onStep?.(kind, title);
}

function checkAborted(ctx: DeployContext): void {
  if (ctx.signal.aborted) throw new DeployqError("DEPLOY", "the deploy was cancelled (shutdown or lost lock); the entry stays queued");
}

function gitContext(ctx: DeployContext): GitContext {
  return { log: ctx.log, signal: ctx.signal, timeoutMs: ctx.deployment.command_timeout_s * 1000, ...(ctx.pidFile ? { pidFile: ctx.pidFile } : {}) };
}

/** What a deploy goes on to check out: the commit, and the push's own when the branch's head replaced it. */
interface Target {
  sha: string;
  requestedSha: string | undefined;
}

/**
 * Fetches the remote and decides which commit to deploy. A push deploys the head of its
 * branch as it is now, never something older: if the branch has moved on since the push
 * (a redelivery, a requeued dead letter, a push that waited), its commit is superseded by
 * the head; a force push that reset the branch to an older commit is the head, so it
 * deploys. A branch that no longer exists leaves nothing to deploy. Only `deployq deploy
 * --ref <sha>` and `rollback` deploy something other than a branch's head, and say so.
 */
/** Why a push deploys nothing: its branch is gone, or (its checks required) the branch moved on to a commit not checked yet. */
type NoTarget = { deleted: string } | { movedOn: string; note: string };

async function fetchTarget(gitDir: string, request: Exclude<DeployRequest, { kind: "rollback" }>, ctx: DeployContext): Promise<Target | NoTarget> {
  const { remote, branch } = ctx.deployment;
  step(ctx, "fetch", `fetch ${remote}`);
  checkAborted(ctx);
  await ensureMirror(gitDir, gitContext(ctx));
  await fetchMirror(gitDir, remote, gitContext(ctx));
  if (request.kind === "push") {
    const pushed = request.ref?.startsWith("refs/heads/") ? request.ref.slice("refs/heads/".length) : undefined;
    if (pushed === undefined) {
      // Not a branch push (a planted file without ref): its commit is all there is to go by.
      ctx.log.write(`the entry names no branch (ref ${JSON.stringify(request.ref ?? null)}): deploying its commit ${request.sha}\n`);
      await ensureCommit(gitDir, remote, request.sha, gitContext(ctx));
      return { sha: request.sha, requestedSha: undefined };
    }
    const head = await fetchedBranchHead(gitDir, pushed, gitContext(ctx));
    if (head === undefined) return { deleted: `${pushed} no longer exists on ${remote}: the push of ${request.sha} has nothing left to deploy` };
    if (head === request.sha) return { sha: head, requestedSha: undefined };
    if (request.checked) {
      // The head's checks were not looked at: its own push deploys it once they pass.
      return { movedOn: head, note: `${pushed} has moved on to ${head}, whose own push deploys it once its required checks pass; ${request.sha} is not deployed` };
    }
    ctx.log.write(`${pushed} has moved on since this push: it is at ${head} now, not ${request.sha}; the push is superseded by the branch's head\n`);
    return { sha: head, requestedSha: request.sha };
  }
  const sha = await resolveRef(gitDir, remote, request.ref, gitContext(ctx));
  ctx.log.write(`${request.ref} is ${sha}\n`);
  if (SHA.test(request.ref) && !/[*?[]/.test(branch)) {
    const head = await fetchedBranchHead(gitDir, branch, gitContext(ctx));
    if (head !== sha) ctx.log.write(`deploying ${sha} as asked (--ref): it is not the head of ${branch}${head ? ` (${head})` : ""}; the next push to ${branch} deploys its head again\n`);
  }
  return { sha, requestedSha: undefined };
}

/** A push whose branch was deleted, or moved on to the commit that is live already: recorded as superseded, nothing deployed. */
function superseded(request: Exclude<DeployRequest, { kind: "rollback" }>, target: Target | NoTarget, ctx: DeployContext): DeployOutcome | undefined {
  if (request.kind !== "push") return undefined;
  if ("deleted" in target) {
    ctx.log.write(`${target.deleted}\n`);
    return { status: "superseded", sha: request.sha, supersededBy: undefined, note: target.deleted };
  }
  if ("movedOn" in target) {
    ctx.log.write(`${target.note}\n`);
    return { status: "superseded", sha: request.sha, supersededBy: target.movedOn, note: target.note };
  }
  if (target.requestedSha === undefined) return undefined;
  const note = `superseded by the head of its branch, ${target.sha}, which is live already`;
  ctx.log.write(`${target.sha} is already live: nothing to do\n`);
  return { status: "superseded", sha: target.requestedSha, supersededBy: target.sha, note };
}

function commandEnv(ctx: DeployContext, sha: string, dir: string, ref: string | undefined): Record<string, string> {
  return deployEnv(ctx.deployment, ctx.host.pm2Home, sha, dir, ref);
}

/** The environment of a deploy's commands, restart script and pm2 apps (on top of the base one). */
function deployEnv(deployment: Deployment, pm2Home: string, sha: string, dir: string, ref: string | undefined): Record<string, string> {
  return {
    ...deployment.env,
    // A restart script that calls pm2 reaches the same pm2 daemon as `restart = { pm2 = ... }`.
    PM2_HOME: pm2Home,
    DEPLOYQ_DEPLOYMENT: deployment.name,
    DEPLOYQ_SHA: sha,
    DEPLOYQ_RELEASE_DIR: dir,
    ...(ref ? { DEPLOYQ_REF: ref } : {}),
  };
}

/** A deployment's bare mirror: <path>/repo.git for releases; in place, data_dir/mirrors/<name>.git (outside the served tree). */
export function deploymentMirror(deployment: Deployment, dataDir: string): string {
  return deployment.strategy === "releases" ? deploymentPaths(deployment.path).mirror : path.join(dataDir, "mirrors", `${deployment.name}.git`);
}

/** The in-place strategy's record of the commit its work tree holds (it keeps no releases). */
export const inPlaceStateFile = (dataDir: string, name: string) => path.join(dataDir, "mirrors", `${name}.deployed`);

/**
 * At start, for `restart = { pm2 = ... }`: when pm2 runs none of the deployment's apps
 * although a release is deployed (the host rebooted, or pm2 itself restarted: pm2-runtime
 * does not resurrect apps), start them from that release, as its deploy did.
 * The caller holds the deployment's lock.
 */
export async function resumePm2Apps(
  deployment: Deployment,
  dataDir: string,
  pm2Home: string,
  ctx: CommandContext,
): Promise<"not-pm2" | "nothing-deployed" | "running" | "started"> {
  const restart = deployment.restart;
  if (!restart || !("pm2" in restart)) return "not-pm2";
  let dir: string;
  let appDir: string;
  let sha: string;
  let ref: string | undefined;
  if (deployment.strategy === "releases") {
    const paths = deploymentPaths(deployment.path);
    const current = await currentRelease(paths);
    const meta = current ? await readReleaseMeta(path.join(paths.releases, current)) : undefined;
    if (!current || !meta) return "nothing-deployed";
    [dir, appDir, sha, ref] = [path.join(paths.releases, current), paths.current, meta.sha, meta.ref];
  } else {
    const deployed = (await readFile(inPlaceStateFile(dataDir, deployment.name), "utf8").catch(() => "")).trim();
    if (!deployed) return "nothing-deployed";
    [dir, appDir, sha, ref] = [deployment.path, deployment.path, deployed, undefined];
  }
  const apps = await listProcesses(pm2Home, ctx);
  if (apps.some((a) => a.deployment === deployment.name && a.status === "online")) return "running";
  await pm2Restart({ pm2Home, deployment: deployment.name, appDir, restart, env: deployEnv(deployment, pm2Home, sha, dir, ref) }, ctx);
  return "started";
}

/** `leaveRunning`: the restart script, whose job is to leave the app running (what a build command leaves is stopped). */
async function runAll(commands: readonly string[][], dir: string, env: Record<string, string>, ctx: DeployContext, signal: AbortSignal | undefined, leaveRunning = false): Promise<void> {
  for (const argv of commands) {
    if (signal) checkAborted(ctx);
    await runCommand(argv, {
      cwd: dir,
      env,
      timeoutMs: ctx.deployment.command_timeout_s * 1000,
      log: ctx.log,
      leaveRunning,
      ...(signal ? { signal } : {}),
      ...(ctx.pidFile ? { pidFile: ctx.pidFile } : {}),
    });
  }
}

function commandContext(ctx: DeployContext, signal: AbortSignal | undefined): CommandContext {
  return { log: ctx.log, signal, timeoutMs: ctx.deployment.command_timeout_s * 1000, pidFile: ctx.pidFile };
}

/**
 * Everything after the code changed: restart the app (its script, or pm2 through `appDir`),
 * wait until it is healthy, then deploy the release's nginx sites (certificates first) under
 * the global nginx lock. Throws at the first failure; the caller puts the previous code back.
 * `signal` undefined: putting a previous release back, which must run to its end.
 */
async function activate(dir: string, appDir: string, env: Record<string, string>, ctx: DeployContext, signal: AbortSignal | undefined): Promise<void> {
  const d = ctx.deployment;
  if (d.restart) {
    step(ctx, "restart", "restart");
    if ("script" in d.restart) await runAll([d.restart.script], dir, env, ctx, signal, true);
    else await pm2Restart({ pm2Home: ctx.host.pm2Home, deployment: d.name, appDir, restart: d.restart, env }, commandContext(ctx, signal));
  }
  if (d.health) {
    step(ctx, "health-check", "health check");
    await waitHealthy(d.health, ctx.log, signal);
  }
}

/** The release's nginx sites, after the app is healthy (a site may proxy to it). Restores the previous files itself when it fails. */
async function deployNginxSites(dir: string, ctx: DeployContext): Promise<void> {
  const sites = ctx.deployment.nginx;
  if (!sites) return;
  step(ctx, "nginx", `nginx sites from ${sites.sites_dir} → ${sites.conf_dir}`);
  const certbot = sites.certificates ? ctx.host.certbot : undefined;
  await ctx.host.withNginxLock(async (lockSignal) => {
    const signal = AbortSignal.any([ctx.signal, lockSignal]);
    const cmd = commandContext(ctx, signal);
    const stateDir = certificateStateDir(ctx.dataDir);
    const certified = new Map<string, string[]>();
    const result = await deploySites(
      {
        deployment: ctx.deployment.name,
        sourceDir: dir,
        sites,
        host: ctx.host.nginx,
        stateDir: nginxStateDir(ctx.dataDir),
        ...(certbot
          ? {
              // Before a changed site file is active, its certificate must hold its names, and
              // keep those of the file it replaces, which nginx serves again if this one fails.
              beforeActivate: async (changed) => {
                for (const site of changed) {
                  let names: string[];
                  try {
                    names = serverNames(site.text);
                  } catch (err) {
                    throw new DeployqError("DEPLOY", `${path.join(sites.sites_dir, `${site.name}.conf`)}: ${errorMessage(err)}`, { cause: err });
                  }
                  certified.set(site.name, names);
                  const outcome = await ensureCertificate({ site: site.name, names, certbot, stateDir, mode: "cover" }, cmd);
                  ctx.log.write(`certificate ${site.name}: ${outcome}\n`);
                }
              },
            }
          : {}),
      },
      cmd,
    );
    ctx.log.write(
      result.changed.length + result.removed.length === 0
        ? "nginx sites unchanged\n"
        : `nginx reloaded: ${[...result.changed.map((s) => `+${s}`), ...result.removed.map((s) => `-${s}`)].join(" ")}\n`,
    );
    // The new files are live: a certificate may now drop names no site file has any more.
    // The deploy has succeeded; a failure here only leaves extra names on a certificate.
    for (const [site, names] of certified) {
      try {
        await ensureCertificate({ site, names, certbot: certbot!, stateDir, mode: "exact" }, cmd);
      } catch (err) {
        ctx.log.write(`warning: certificate ${site} keeps names no site file has any more: ${errorMessage(err)}\n`);
      }
    }
  });
}

async function deployRelease(request: Exclude<DeployRequest, { kind: "rollback" }>, ctx: DeployContext): Promise<DeployOutcome> {
  const paths = deploymentPaths(ctx.deployment.path);
  await mkdir(paths.root, { recursive: true });
  const target = await fetchTarget(paths.mirror, request, ctx);
  const previous = await currentRelease(paths);
  const previousMeta = previous ? await readReleaseMeta(path.join(paths.releases, previous)) : undefined;
  if ("deleted" in target || "movedOn" in target) return superseded(request, target, ctx)!;
  const { sha } = target;
  const pending = await readPendingSwitch(paths);
  if (pending && previous && pending.release === previous && previousMeta?.sha === sha) {
    return { ...(await resumeSwitch(paths, pending, previousMeta, ctx)), requestedSha: target.requestedSha };
  }
  if (previousMeta?.sha === sha && !(request.kind === "deploy" && request.force)) {
    const moot = superseded(request, target, ctx);
    if (moot) return moot;
    ctx.log.write(`${sha} is already the current release (${previous}): nothing to do\n`);
    return { status: "already-deployed", sha, release: previous };
  }
  if (previousMeta?.sha === sha) ctx.log.write(`${sha} is the current release (${previous}): deploying it again (--force)\n`);
  step(ctx, "checkout", `check out ${sha}`);
  checkAborted(ctx);
  const release = await createReleaseDir(paths, sha);
  const env = commandEnv(ctx, sha, release.dir, request.ref);
  try {
    await checkoutRelease(paths.mirror, release.dir, sha, gitContext(ctx));
    await linkShared(paths, release.dir, ctx.deployment.shared);
    if (ctx.deployment.commands.length > 0) step(ctx, "build", "build");
    await runAll(ctx.deployment.commands, release.dir, env, ctx, ctx.signal);
    await writeReleaseMeta(release.dir, { sha, ref: request.ref, entry: request.entry, built_at: new Date().toISOString() });
    checkAborted(ctx);
    await ctx.fence?.();
  } catch (err) {
    // Never switched to: the half-made release goes, and `current` was never touched.
    await rm(release.dir, { recursive: true, force: true });
    throw err;
  }

  // Set once `current` may point at the new release: from then on it is never removed here.
  let switched = false;
  try {
    await live(ctx, async () => {
      step(ctx, "switch", `switch current → releases/${release.name}`);
      // The last moment a cancel (or a shutdown) stops it with the previous release untouched.
      checkAborted(ctx);
      // After a wait for the rollout's turn, this worker may no longer be the deployment's.
      if (ctx.rolling) await ctx.fence?.();
      switched = true;
      await beginSwitch(paths, { release: release.name, previous, entry: request.entry, at: new Date().toISOString() });
      try {
        await activate(release.dir, paths.current, env, ctx, ctx.signal);
        await deployNginxSites(release.dir, ctx);
      } catch (err) {
        await restoreAfterFailedRestart(paths, release.name, previous, err, ctx);
        throw err;
      }
      await endSwitch(paths);
    });
  } catch (err) {
    // Stopped before the switch (the rollout's gate, a cancel): the release was never live.
    if (!switched) await rm(release.dir, { recursive: true, force: true });
    throw err;
  }
  step(ctx, "prune", "prune old releases");
  const pruned = await pruneReleases(paths, ctx.deployment.keep_releases, [release.name, previous]);
  if (pruned.length > 0) ctx.log.write(`removed ${pruned.join(", ")}\n`);
  return { status: "succeeded", sha, release: release.name, previousRelease: previous, requestedSha: target.requestedSha };
}

/** A new release failed after the switch (restart, health check, nginx): mark it bad, point `current` back, and restart the previous release. */
async function restoreAfterFailedRestart(paths: DeploymentPaths, failed: string, previous: string | undefined, err: unknown, ctx: DeployContext): Promise<void> {
  const dir = path.join(paths.releases, failed);
  const meta = await readReleaseMeta(dir);
  if (meta) await writeReleaseMeta(dir, { ...meta, bad: { reason: errorMessage(err).slice(0, 2000), at: new Date().toISOString() } });
  if (!previous) {
    ctx.log.write(`\n== restart failed and there is no previous release: removing current\n`);
    await rm(paths.current, { force: true });
    await endSwitch(paths);
    return;
  }
  step(ctx, "rollback", `releases/${failed} failed: switch current back → releases/${previous} and restart it`);
  await switchCurrent(paths, previous);
  // Back where it was: a crash from here on leaves the previous release current, which the
  // next deploy restarts when it switches.
  await endSwitch(paths);
  const prevDir = path.join(paths.releases, previous);
  const prevMeta = await readReleaseMeta(prevDir);
  try {
    // No cancellation signal here: putting the previous release back must finish.
    await activate(prevDir, paths.current, commandEnv(ctx, prevMeta?.sha ?? "", prevDir, prevMeta?.ref), ctx, undefined);
  } catch (restoreErr) {
    ctx.log.write(`the previous release did not come back cleanly either: ${errorMessage(restoreErr)}\n`);
  }
}

/**
 * The deploy that switched `current` to `pending.release` stopped before the release was
 * restarted, healthy and had its sites (deployq was killed): finish that now, or, if it
 * fails, switch back to what was current before, as the interrupted deploy would have.
 */
async function resumeSwitch(paths: DeploymentPaths, pending: PendingSwitch, meta: ReleaseMeta, ctx: DeployContext) {
  const dir = path.join(paths.releases, pending.release);
  ctx.log.write(
    `current was switched to releases/${pending.release} at ${pending.at} (entry ${pending.entry}), but that deploy stopped before its restart, ` +
      "health check and sites were done: resuming from the restart\n",
  );
  step(ctx, "resume", `resume the switch to releases/${pending.release}: restart, health check, sites`);
  checkAborted(ctx);
  await ctx.fence?.();
  // Switched already: what is live is finished (or put back) whatever the rollout says.
  try {
    await activate(dir, paths.current, commandEnv(ctx, meta.sha, dir, meta.ref), ctx, ctx.signal);
    await deployNginxSites(dir, ctx);
  } catch (err) {
    await restoreAfterFailedRestart(paths, pending.release, pending.previous, err, ctx);
    throw err;
  }
  await endSwitch(paths);
  return { status: "succeeded" as const, sha: meta.sha, release: pending.release, previousRelease: pending.previous, requestedSha: undefined };
}

async function rollback(to: string | undefined, entry: string, ctx: DeployContext): Promise<DeployOutcome> {
  if (ctx.deployment.strategy === "in-place") {
    throw new DeployqError(
      "DEPLOY",
      `${ctx.deployment.name} uses the in-place strategy, which keeps no releases: deploy an older commit with \`deployq deploy ${ctx.deployment.name} --ref <sha>\``,
    );
  }
  const paths = deploymentPaths(ctx.deployment.path);
  const releases = await listReleases(paths);
  const currentIndex = releases.findIndex((r) => r.current);
  const current = releases[currentIndex];
  let target;
  if (to !== undefined) {
    target = releases.find((r) => r.name === to);
    if (!target || !target.meta) throw new DeployqError("DEPLOY", `no complete release ${JSON.stringify(to)}: \`deployq releases ${ctx.deployment.name}\` lists them`);
    if (target.meta.bad) throw new DeployqError("DEPLOY", `release ${to} is marked bad (${target.meta.bad.reason.split("\n")[0]}): choose another`);
  } else {
    const older = (currentIndex >= 0 ? releases.slice(0, currentIndex) : releases).filter((r) => r.meta && !r.meta.bad && !r.current);
    target = older[older.length - 1];
    if (!target) throw new DeployqError("DEPLOY", `no earlier good release of ${ctx.deployment.name} to roll back to`);
  }
  const pending = await readPendingSwitch(paths);
  if (target.current && pending?.release === target.name) return resumeSwitch(paths, pending, target.meta!, ctx);
  if (target.current) {
    ctx.log.write(`${target.name} is already current\n`);
    return { status: "already-deployed", sha: target.meta!.sha, release: target.name };
  }
  ctx.log.write(`rolling back to releases/${target.name} (${target.meta!.sha}) as asked; the next push deploys its branch's head again\n`);
  step(ctx, "switch", `switch current → releases/${target.name} (rollback)`);
  checkAborted(ctx);
  await ctx.fence?.();
  await beginSwitch(paths, { release: target.name, previous: current?.name, entry, at: new Date().toISOString() });
  try {
    await activate(target.dir, paths.current, commandEnv(ctx, target.meta!.sha, target.dir, target.meta!.ref), ctx, ctx.signal);
    await deployNginxSites(target.dir, ctx);
  } catch (err) {
    await restoreAfterFailedRestart(paths, target.name, current?.name, err, ctx);
    throw err;
  }
  await endSwitch(paths);
  return { status: "succeeded", sha: target.meta!.sha, release: target.name, previousRelease: current?.name, requestedSha: undefined };
}

/** The classic post-receive deploy: one work tree, checked out in place, then the commands and the deploy script. */
async function deployInPlace(request: Exclude<DeployRequest, { kind: "rollback" }>, ctx: DeployContext): Promise<DeployOutcome> {
  const d = ctx.deployment;
  const gitDir = deploymentMirror(d, ctx.dataDir);
  await mkdir(path.dirname(gitDir), { recursive: true });
  const stateFile = inPlaceStateFile(ctx.dataDir, d.name);
  const target = await fetchTarget(gitDir, request, ctx);
  const previous = (await readFile(stateFile, "utf8").catch(() => "")).trim() || undefined;
  if ("deleted" in target || "movedOn" in target) return superseded(request, target, ctx)!;
  const { sha } = target;
  if (previous === sha && !(request.kind === "deploy" && request.force)) {
    const moot = superseded(request, target, ctx);
    if (moot) return moot;
    ctx.log.write(`${sha} is already deployed in ${d.path}: nothing to do\n`);
    return { status: "already-deployed", sha, release: undefined };
  }
  if (previous === sha) ctx.log.write(`${sha} is deployed in ${d.path}: deploying it again (--force)\n`);
  // In place, the checkout is what changes what is live: all of it waits for the rollout's turn.
  return live(ctx, () => switchInPlace(request, ctx, gitDir, stateFile, sha, previous, target.requestedSha));
}

async function switchInPlace(
  request: Exclude<DeployRequest, { kind: "rollback" }>,
  ctx: DeployContext,
  gitDir: string,
  stateFile: string,
  sha: string,
  previous: string | undefined,
  requestedSha: string | undefined,
): Promise<DeployOutcome> {
  const d = ctx.deployment;
  step(ctx, "checkout", `check out ${sha} into ${d.path}`);
  checkAborted(ctx);
  await ctx.fence?.();
  await mkdir(d.path, { recursive: true });
  await checkoutInPlace(gitDir, d.path, sha, gitContext(ctx));
  const env = commandEnv(ctx, sha, d.path, request.ref);
  let activating = false;
  try {
    if (d.commands.length > 0) step(ctx, "build", "build");
    await runAll(d.commands, d.path, env, ctx, ctx.signal);
    activating = true;
    await activate(d.path, d.path, env, ctx, ctx.signal);
    await deployNginxSites(d.path, ctx);
  } catch (err) {
    if (previous) {
      step(ctx, "rollback", `failed: putting the files of ${previous} back${activating ? " and restarting it" : ""}`);
      try {
        await checkoutInPlace(gitDir, d.path, previous, { log: ctx.log, timeoutMs: d.command_timeout_s * 1000 });
        // The app was restarted on the failed commit: restart it on the previous one (no cancellation: it must finish).
        if (activating) await activate(d.path, d.path, commandEnv(ctx, previous, d.path, undefined), ctx, undefined);
      } catch (e) {
        ctx.log.write(`could not put ${previous} back: ${errorMessage(e)}\n`);
      }
    }
    throw err;
  }
  await writeFile(stateFile, `${sha}\n`);
  return { status: "succeeded", sha, release: undefined, previousRelease: undefined, requestedSha };
}
