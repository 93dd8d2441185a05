import type { Settings } from "../config/load.ts";
import { DeployqError } from "../errors.ts";
import { pingLockService } from "../lock/ping.ts";
import { type DeploymentStatus, collectStatus } from "../status.ts";
import { getJson, withDatabase } from "./database-access.ts";
import { formatAge, printJson } from "./output.ts";

export async function statusCommand(settings: Settings, name: string | undefined, json: boolean): Promise<void> {
  if (name !== undefined && !settings.deployments.has(name)) throw new DeployqError("CONFIG", `no deployment "${name}" in ${settings.configPath}`);
  const status = await withDatabase(
    settings,
    (db) => collectStatus(settings, db, name),
    (base) => getJson<DeploymentStatus[]>(`${base}/status${name ? `?deployment=${encodeURIComponent(name)}` : ""}`),
  );
  if (json) return printJson(status);
  if (settings.secrets.redisUrls.length > 0) {
    const ping = await pingLockService(settings.secrets.redisUrls);
    process.stdout.write(`lock service: ${ping.ok ? ping.detail : `UNREACHABLE: deploys wait in their queues until it is back (${ping.detail})`}\n\n`);
  }
  for (const s of status) {
    const last = s.last;
    const ago = (t: Date | string | null | undefined) => (t ? `${formatAge(Math.round((Date.now() - new Date(t).getTime()) / 1000))} ago` : "");
    process.stdout.write(
      [
        `${s.deployment}  (${s.repository} ${s.branch}, ${s.strategy}${s.enabled ? "" : ", DISABLED"})`,
        `  current:      ${s.current.release ?? (s.strategy === "in-place" ? "(work tree)" : "none")}  ${s.current.sha ?? ""}`.trimEnd(),
        `  last deploy:  ${last ? `#${last.id} ${last.status} ${last.sha?.slice(0, 7) ?? ""} ${ago(last.finishedAt ?? last.startedAt)}${last.durationMs != null ? ` in ${(last.durationMs / 1000).toFixed(1)}s` : ""}` : "none"}`,
        ...(last?.error ? [`  error:        ${last.error.split("\n")[0]}`] : []),
        ...(s.lastRun?.logPath ? [`  log:          ${s.lastRun.logPath}`] : []),
        `  queued:       ${s.queued}   dead letters: ${s.deadLetters}${s.deadLetters > 0 ? `  (deployq queue ls dead-letter/${s.deployment})` : ""}`,
        "",
      ].join("\n"),
    );
  }
}
