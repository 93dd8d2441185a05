import type { Settings } from "../config/load.ts";
import { errorMessage } from "../errors.ts";
import { pingLockService } from "../lock/ping.ts";
import { type DeployStatusRow, type DeploymentStatus, type FleetStatus, type StatusReport, collectStatus } from "../status.ts";
import { SHA } from "../steps/git.ts";
import { manifestDeployments, nginxStateDir, ownedSiteFiles } from "../steps/nginx/manifest.ts";
import { getJson, withDatabase } from "./database-access.ts";
import { configuredDeployment } from "./names.ts";
import { formatAge, printJson, table } from "./output.ts";

const ago = (t: Date | string | null | undefined) => (t ? `${formatAge(Math.round((Date.now() - new Date(t).getTime()) / 1000))} ago` : "");

/** Text from a file anyone in the group may write, on one line, without control characters (a terminal must not obey them). */
// eslint-disable-next-line no-control-regex -- control characters are what it removes
const oneLine = (text: string) => text.replace(/[\u0000-\u001f\u007f-\u009f]+/g, " ").trim();

/** `label` then `text`, its lines after the first indented under the first (a whole error, as the deploy recorded it). */
function field(label: string, text: string): string {
  const pad = " ".repeat(16);
  return text
    .trimEnd()
    .split("\n")
    .map((line, i) => (i === 0 ? `  ${`${label}:`.padEnd(14)}${line}` : `${pad}${line}`).trimEnd())
    .join("\n");
}

/** One deploy: outcome, its whole error, and its own log file. */
function deployLines(label: string, r: DeployStatusRow): string[] {
  const what = r.ref && !SHA.test(r.ref) ? ` ${r.ref.replace(/^refs\/heads\//, "")}` : "";
  return [
    field(label, `#${r.id} ${r.status}${what} ${r.sha?.slice(0, 7) ?? ""} ${ago(r.finishedAt ?? r.startedAt)}${r.durationMs != null ? ` in ${(r.durationMs / 1000).toFixed(1)}s` : ""}`.replace(/ +/g, " ")),
    // A push whose branch had moved on: the head was deployed in its place.
    ...(r.requestedSha ? [field("pushed", `${r.requestedSha.slice(0, 7)}, superseded by the head of its branch, which this deployed`)] : []),
    ...(r.status === "superseded" && r.supersededBy ? [field("by", r.supersededBy)] : []),
    ...(r.error ? [field(r.status === "superseded" ? "why" : "error", r.error)] : []),
    ...(r.logPath ? [field("log", r.logPath)] : []),
  ];
}

function currentLine(s: DeploymentStatus): string {
  const where = s.current.release ?? (s.strategy === "in-place" ? "(work tree)" : "none");
  // Which branch is live matters when the deployment follows a pattern, or was deployed by hand from another ref.
  const ref = s.current.ref;
  const from = ref && ref !== s.branch ? (SHA.test(ref) ? "  (deployed by sha, not from a branch)" : `  from branch ${ref}`) : "";
  return field("current", `${where}  ${s.current.sha ?? ""}${s.current.sha ? from : ""}`);
}

export async function statusCommand(settings: Settings, name: string | undefined, json: boolean): Promise<void> {
  if (name !== undefined) configuredDeployment(settings, name);
  const report = await withDatabase(
    settings,
    (db) => collectStatus(settings, db, name),
    (base) => getJson<StatusReport>(`${base}/status${name ? `?deployment=${encodeURIComponent(name)}` : ""}`),
  );
  if (json) return printJson(report);
  const { router } = report;
  process.stdout.write(
    `${field(
      "router",
      router.entries === 0
        ? "empty"
        : `${router.entries} event${router.entries === 1 ? "" : "s"} waiting to be routed, the oldest for ${formatAge(router.oldestAgeSeconds ?? 0)} (\`deployq queue ls router\`)`,
    ).trimStart()}\n`,
  );
  if (report.github) {
    const { backlog, oldestAgeSeconds, lastError } = report.github;
    process.stdout.write(
      `github statuses: ${backlog === 0 ? "all sent" : `${backlog} waiting to be sent, the oldest for ${formatAge(oldestAgeSeconds ?? 0)}`}` +
        `${lastError ? `; last error ${ago(lastError.at)} (${lastError.kind && lastError.kind !== "status" ? "GitHub deployment of " : ""}${lastError.context} on ${lastError.repository}@${lastError.sha.slice(0, 7)}${lastError.gaveUp ? ", given up" : ""}): ${oneLine(lastError.error)}` : ""}\n`,
    );
  }
  if (report.notifications) {
    const { backlog, oldestAgeSeconds, lastError } = report.notifications;
    process.stdout.write(
      `notifications: ${backlog === 0 ? "all sent" : `${backlog} waiting to be sent, the oldest for ${formatAge(oldestAgeSeconds ?? 0)}`}` +
        `${lastError ? `; last error ${ago(lastError.at)} (${lastError.key?.replace(/^notify:/, "") ?? "?"}, of ${lastError.context.replace(/^deployq\//, "")}${lastError.gaveUp ? ", given up" : ""}): ${oneLine(lastError.error)}` : ""}\n`,
    );
  }
  if (settings.secrets.redisUrls.length > 0) {
    const ping = await pingLockService(settings.secrets.redisUrls);
    process.stdout.write(`lock service: ${ping.ok ? ping.detail : `UNREACHABLE: deploys wait in their queues until it is back (${ping.detail})`}\n`);
  }
  process.stdout.write("\n");
  for (const s of report.deployments) {
    const { last, lastRun } = s;
    process.stdout.write(
      [
        `${s.deployment}  (${s.repository} ${s.branch}, ${s.strategy}${s.enabled ? "" : ", DISABLED"})`,
        currentLine(s),
        ...(last ? deployLines("last deploy", last) : [field("last deploy", "none")]),
        ...(lastRun && lastRun.id !== last?.id ? deployLines("last run", lastRun) : []),
        ...(s.paused ? [field("PAUSED", "invalid" in s.paused ? s.paused.invalid : `${oneLine(s.paused.reason) || "(no reason)"}, by ${oneLine(s.paused.by)} at ${s.paused.at}${s.paused.until ? `, until ${s.paused.until}` : ", until `deployq resume`"}: entries wait`)] : []),
        ...(s.waitingForChecks
          ? [field("WAITING", `for checks ${s.waitingForChecks.pending.join(", ")} on ${s.waitingForChecks.sha.slice(0, 12)} since ${s.waitingForChecks.since}${s.waitingForChecks.nextLookAt ? `; next look ${s.waitingForChecks.nextLookAt}` : ""}`)]
          : []),
        `  queued:       ${s.queued}   dead letters: ${s.deadLetters}${s.deadLetters > 0 ? `  (deployq queue ls dead-letter/${s.deployment})` : ""}`,
        ...(s.fleet ? fleetLines(s.fleet) : []),
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

/** A fleet deployment's newest rollout, then one line per host: its state in it, release, and when its workers last checked in. */
function fleetLines(fleet: FleetStatus): string[] {
  const r = fleet.rollout;
  const failed = r?.failedHost ? `, ${r.failedHost} failed${r.failedStep ? ` at ${r.failedStep}` : ""}` : "";
  const rollout = r ? `#${r.id} ${r.state} ${r.sha?.slice(0, 7) ?? ""} ${ago(r.createdAt)}${failed}  (\`deployq rollout show ${r.id}\`)`.replace(/ +/g, " ") : "none yet";
  const rows = fleet.hosts.map((h) => [
    h.host,
    h.state === null ? "-" : h.state === "pending" ? "- (not handed over yet)" : h.state,
    h.release ?? "-",
    h.lastSeen ? `seen ${ago(h.lastSeen)}` : "never seen",
    h.error ? oneLine(h.error).slice(0, 200) : "",
  ]);
  const hosts = rows.length > 0 ? table(["", "", "", "", ""], rows).split("\n").slice(1) : [];
  return [field("rollout", rollout), ...hosts.map((line, i) => `  ${i === 0 ? "hosts:        " : "              "}${line}`)];
}
