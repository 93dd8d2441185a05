import type { Settings } from "../config/load.ts";
import { DeployqError } from "../errors.ts";
import { deploymentPaths, listReleases } from "../steps/release.ts";
import { type DeploymentStatus, collectStatus } from "../status.ts";
import { pingLockService } from "../lock/ping.ts";
import { getJson, withDatabase } from "./database-access.ts";
import { formatAge, printJson, table } from "./output.ts";

export async function releasesCommand(settings: Settings, name: string, json: boolean): Promise<void> {
  const d = settings.deployments.get(name);
  if (!d) throw new DeployqError("CONFIG", `no deployment "${name}" in ${settings.configPath}`);
  if (d.strategy === "in-place") {
    process.stdout.write(`${name} uses the in-place strategy: it keeps no releases (\`deployq status ${name}\` shows the deployed sha)\n`);
    return;
  }
  const releases = await listReleases(deploymentPaths(d.path));
  if (json) return printJson(releases.map((r) => ({ name: r.name, dir: r.dir, current: r.current, complete: r.meta !== undefined, ...r.meta })));
  if (releases.length === 0) {
    process.stdout.write(`${name} has no releases yet (${deploymentPaths(d.path).releases})\n`);
    return;
  }
  const rows = releases.map((r) => [
    r.current ? "*" : "",
    r.name,
    r.meta?.sha.slice(0, 7) ?? "-",
    r.meta?.ref?.replace(/^refs\/heads\//, "") ?? "-",
    r.meta ? "" : "incomplete",
    r.meta?.bad ? `bad: ${r.meta.bad.reason.split("\n")[0]!.slice(0, 60)}` : "",
  ]);
  process.stdout.write(`${table(["", "RELEASE", "SHA", "REF", "", "NOTE"], rows)}\n`);
}

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
