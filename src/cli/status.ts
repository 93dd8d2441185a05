import type { Settings } from "../config/load.ts";
import { DeployqError, errorMessage } from "../errors.ts";
import { pingLockService } from "../lock/ping.ts";
import { type DeploymentStatus, collectStatus } from "../status.ts";
import { manifestDeployments, nginxStateDir, ownedSiteFiles } from "../steps/nginx.ts";
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
        ...siteLines(s, settings.deployments.get(s.deployment)?.nginx !== undefined, ago),
        "", // a blank line after each deployment
        "",
      ].join("\n"),
    );
  }
  if (name === undefined) {
    // Site files of deployments gone from the configuration stay live until removed.
    const stateDir = nginxStateDir(settings.dataDir);
    for (const gone of (await manifestDeployments(stateDir)).filter((d) => !settings.deployments.has(d))) {
      const files = await ownedSiteFiles(stateDir, gone).catch((err: unknown) => errorMessage(err));
      const list = typeof files === "string" ? `cannot tell: ${files}` : files.map((f) => f.file).join(" ");
      process.stdout.write(`${gone}  (no longer configured) still owns nginx site files: ${list}\n  \`deployq sites remove ${gone}\` takes them out\n\n`);
    }
  }
}

/** One line per owned nginx site: its file in conf_dir and its certificate's names. */
function siteLines(s: DeploymentStatus, configured: boolean, ago: (t: string) => string): string[] {
  if ("error" in s.sites) return [`  sites:        cannot tell: ${s.sites.error}`];
  if (s.sites.length === 0) return configured ? ["  sites:        none deployed yet"] : [];
  const lines = s.sites.map(({ site, file, certificate }) => {
    const cert = certificate ? `certificate: ${certificate.domains.join(" ")}${certificate.obtainedAt ? ` (${ago(certificate.obtainedAt)})` : ""}` : "no certificate";
    return `${site}  ${file}  ${cert}`;
  });
  if (!configured) lines.push(`(no nginx key any more: these files stay live; \`deployq sites remove ${s.deployment}\` takes them out)`);
  return lines.map((line, i) => `  ${i === 0 ? "sites:        " : "              "}${line}`);
}
