import type { Settings } from "../config/load.ts";
import { DeployqError } from "../errors.ts";
import { TerminalText } from "../exec/terminal-text.ts";
import { type LiveMessage, adminToken, describeEvent, followLiveStream, liveUrl, newestLog, stopOnSignals } from "./watch.ts";

/** The deploy failed (retrying: it failed, and its entry is tried again later). */
const FAILED = new Set(["failed", "rolled-back", "interrupted", "retrying"]);

/**
 * `deployq logs <deployment>`: the newest deploy's log on this host. With `-f`, the log of
 * the deploy running now (from its start) or, when none runs, of the next one, line by
 * line as it is written, through /ws/v0; returns once that deploy finished and its log was
 * read to its end: 0, or 1 when it failed.
 */
export async function logsCommand(settings: Settings, deployment: string, options: { follow: boolean; url?: string; json: boolean }): Promise<number> {
  if (!settings.deployments.has(deployment)) {
    throw new DeployqError("CONFIG", `no deployment named ${JSON.stringify(deployment)} in ${settings.configPath} (configured: ${[...settings.deployments.keys()].join(", ") || "none"})`);
  }
  if (!options.follow) {
    const text = await newestLog(settings.dataDir, deployment);
    if (text === undefined) throw new DeployqError("UNAVAILABLE", `no deploy log of ${deployment} on this host yet (in ${settings.dataDir}/logs/${deployment}/)`);
    const clean = new TerminalText();
    process.stdout.write(clean.push(text) + clean.end());
    return 0;
  }
  const url = await liveUrl(settings, options.url);
  let following: number | undefined;
  let outcome: string | undefined;
  /** A reconnection replays the lines kept for a running deploy: each offset is printed once. */
  let printedUpTo = -1;
  const live = followLiveStream({
    url,
    token: adminToken(settings),
    deployments: [deployment],
    onMessage: (m: LiveMessage) => {
      if (m.deployment !== deployment) return;
      if (m.type === "DeployEvent" && m.name === "started" && following === undefined) following = m.deployId as number;
      if (m.type === "LogLine") {
        following ??= m.deployId as number;
        if (m.deployId !== following || (m.offset as number) <= printedUpTo) return;
        printedUpTo = m.offset as number;
        const clean = new TerminalText();
        process.stdout.write(options.json ? `${JSON.stringify(m)}\n` : `${(clean.push(String(m.line)) + clean.end()).replace(/\n/g, " ")}\n`);
      } else if (m.type === "DeployEvent" && m.name === "finished" && m.deployId === following) {
        outcome = String(m.outcome);
        if (options.json) process.stdout.write(`${JSON.stringify(m)}\n`);
      } else if (m.type === "LogEnd" && m.deployId === following) {
        if (!options.json && outcome === undefined) process.stderr.write(`deployq: deploy ${following} ended\n`);
        live.stop();
      } else if (m.type === "Error") {
        process.stderr.write(`${describeEvent(m)}\n`);
      }
    },
    onReady: () => process.stderr.write(`deployq: following the log of ${deployment}'s running (or next) deploy\n`),
    onReconnect: (reason) => process.stderr.write(`deployq: the connection to ${url} was lost (${reason}); reconnecting\n`),
  });
  stopOnSignals(live);
  await live.done;
  return outcome !== undefined && FAILED.has(outcome) ? 1 : 0;
}
