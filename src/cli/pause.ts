import { hostname, userInfo } from "node:os";
import type { Settings } from "../config/load.ts";
import { DeployqError } from "../errors.ts";
import { queueLayout } from "../queue/layout.ts";
import { type Pause, readPause, removePause, writePause } from "../queue/pause.ts";
import { isProcessAlive } from "../pid-lock.ts";
import { readRunning, writeCancel } from "../workers/cancel.ts";
import { configuredDeployment } from "./names.ts";
import { printJson } from "./output.ts";

/** "30m", "2h", "1d", "90s": how long a pause lasts. */
export function parseDuration(text: string): number {
  const m = /^(\d{1,6})(s|m|h|d)$/.exec(text.trim());
  if (!m) throw new DeployqError("BAD_REQUEST", `--for ${JSON.stringify(text)} is not a duration: write a whole number and s, m, h or d (90s, 30m, 2h, 1d)`);
  const unit = { s: 1, m: 60, h: 3600, d: 86400 }[m[2] as "s" | "m" | "h" | "d"];
  return Number(m[1]) * unit * 1000;
}

function origin(): string {
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
  configuredDeployment(settings, name);
  const reason = (options.reason ?? "").trim();
  if (reason.length > 1000) throw new DeployqError("BAD_REQUEST", "--reason is longer than 1000 characters: say it in fewer");
  const now = Date.now();
  const pause: Pause = {
    reason,
    by: origin(),
    at: new Date(now).toISOString(),
    ...(options.for !== undefined ? { until: new Date(now + parseDuration(options.for)).toISOString() } : {}),
  };
  await writePause(queueLayout(settings.queuesDir), name, pause);
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
  configuredDeployment(settings, name);
  const layout = queueLayout(settings.queuesDir);
  const before = await readPause(layout, name);
  const removed = await removePause(layout, name);
  if (options.json) printJson({ deployment: name, resumed: removed, was: before && "pause" in before ? before.pause : undefined });
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
  configuredDeployment(settings, name);
  const running = await readRunning(settings.dataDir, name);
  if (!running || !isProcessAlive(running.pid)) {
    throw new DeployqError("BAD_REQUEST", `no deploy of ${name} is running on this host (\`deployq status ${name}\` shows the last one)`);
  }
  if (!running.cancellable) {
    throw new DeployqError("BAD_REQUEST", `deploy #${running.deployId} of ${name} is past its switch (${running.step ?? "switch"}): it finishes, or rolls back by itself; \`deployq rollback ${name}\` afterwards goes back`);
  }
  await writeCancel(settings.dataDir, name, { deployId: running.deployId, by: origin(), at: new Date().toISOString() });
  if (options.json) printJson({ deployment: name, cancelling: running.deployId });
  else process.stdout.write(`asked deploy #${running.deployId} of ${name} to stop (within a second); \`deployq status ${name}\` shows how it ended\n`);
  return 0;
}
