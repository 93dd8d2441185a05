import { hostname, userInfo } from "node:os";
import type { Settings } from "../config/load.ts";
import { DeployqError } from "../errors.ts";
import { queueLayout } from "../queue/layout.ts";
import { type Pause, readPause, removePause, writePause } from "../queue/pause.ts";
import { isProcessAlive } from "../pid-lock.ts";
import { type Running, readRunning, writeCancel } from "../workers/cancel.ts";
import { configuredDeployment } from "./names.ts";
import { printJson } from "./output.ts";

/** "30m", "2h", "1d", "90s": how long a pause lasts. */
export function parseDuration(text: string): number {
  const m = /^(\d{1,6})(s|m|h|d)$/.exec(text.trim());
  if (!m) throw new DeployqError("BAD_REQUEST", `--for ${JSON.stringify(text)} is not a duration: write a whole number and s, m, h or d (90s, 30m, 2h, 1d)`);
  const unit = { s: 1, m: 60, h: 3600, d: 86400 }[m[2] as "s" | "m" | "h" | "d"];
  return Number(m[1]) * unit * 1000;
}

/** Who runs this command: `cli:<user>@<host>`. */
export function cliOrigin(): string {
  let user = "unknown";
  try {
    user = userInfo().username;
  } catch {
    // no passwd entry for this uid (a container): "unknown"
  }
  return `cli:${user}@${hostname()}`;
}

/**
 * `deployq pause <deployment>`: a deploy freeze. Pushes keep being queued and the newest
 * still wins, but the worker deploys nothing until `deployq resume` or the pause's end.
 */
export async function pauseCommand(settings: Settings, name: string, options: { reason?: string | undefined; for?: string | undefined; json: boolean }): Promise<number> {
  const pause = await pauseDeployment(settings, name, { reason: options.reason, for: options.for, by: cliOrigin() });
  if (options.json) printJson({ deployment: name, paused: pause });
  else {
    process.stdout.write(
      `paused ${name}${pause.until ? ` until ${pause.until}` : ""}: its entries wait (the newest still wins); \`deployq resume ${name}\` ends it\n`,
    );
  }
  return 0;
}

/** `deployq resume <deployment>`: ends a pause; the worker takes the newest waiting entry within a second. */
export async function resumeCommand(settings: Settings, name: string, options: { json: boolean }): Promise<number> {
  const { removed, before } = await resumeDeployment(settings, name);
  if (options.json) printJson({ deployment: name, resumed: removed, was: before });
  else process.stdout.write(removed ? `resumed ${name}: its newest waiting entry deploys now\n` : `${name} was not paused\n`);
  return 0;
}

/**
 * `deployq cancel <deployment>`: stops the running deploy, if it has not reached the step
 * that changes what is live (the switch of `current`, or an in-place checkout). Its command's
 * process group is killed, the previous release stays current, and the entry is kept in
 * dead-letter/ (requeue it to deploy it after all).
 */
export async function cancelCommand(settings: Settings, name: string, options: { json: boolean }): Promise<number> {
  const running = await cancelDeploy(settings, name, cliOrigin());
  if (options.json) printJson({ deployment: name, cancelling: running.deployId });
  else process.stdout.write(`asked deploy #${running.deployId} of ${name} to stop (within a second); \`deployq status ${name}\` shows how it ended\n`);
  return 0;
}

// The actions themselves, shared by the CLI and the dashboard (`by` says which, and who).

/** Pauses a deployment (see pauseCommand); `for` as --for takes it. */
export async function pauseDeployment(settings: Settings, name: string, options: { reason?: string | undefined; for?: string | undefined; by: string }): Promise<Pause> {
  configuredDeployment(settings, name);
  const reason = (options.reason ?? "").trim();
  if (reason.length > 1000) throw new DeployqError("BAD_REQUEST", "the reason is longer than 1000 characters: say it in fewer");
  const now = Date.now();
  const pause: Pause = {
    reason,
    by: options.by,
    at: new Date(now).toISOString(),
    ...(options.for !== undefined ? { until: new Date(now + parseDuration(options.for)).toISOString() } : {}),
  };
  await writePause(queueLayout(settings.queuesDir), name, pause);
  return pause;
}

/** Ends a pause; says whether there was one, and what it was. */
export async function resumeDeployment(settings: Settings, name: string): Promise<{ removed: boolean; before: Pause | undefined }> {
  configuredDeployment(settings, name);
  const layout = queueLayout(settings.queuesDir);
  const found = await readPause(layout, name);
  const removed = await removePause(layout, name);
  return { removed, before: found && "pause" in found ? found.pause : undefined };
}

/** Asks the running deploy to stop (see cancelCommand); refuses when none runs here, or it is past its switch. */
export async function cancelDeploy(settings: Settings, name: string, by: string): Promise<Running> {
  configuredDeployment(settings, name);
  const running = await readRunning(settings.dataDir, name);
  if (!running || !isProcessAlive(running.pid)) {
    throw new DeployqError("BAD_REQUEST", `no deploy of ${name} is running on this host (\`deployq status ${name}\` shows the last one)`);
  }
  if (!running.cancellable) {
    throw new DeployqError("BAD_REQUEST", `deploy #${running.deployId} of ${name} is past its switch (${running.step ?? "switch"}): it finishes, or rolls back by itself; \`deployq rollback ${name}\` afterwards goes back`);
  }
  await writeCancel(settings.dataDir, name, { deployId: running.deployId, by, at: new Date().toISOString() });
  return running;
}
