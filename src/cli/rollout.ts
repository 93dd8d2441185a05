import type { Settings } from "../config/load.ts";
import { DeployqError } from "../errors.ts";
import { type RolloutDetail, type RolloutHostReport, type RolloutSummary, PENDING, rolloutDetailById, rolloutSummaries } from "../fleet/rollout-report.ts";
import { getJson, withDatabase } from "./database-access.ts";
import { formatAge, printJson, table } from "./output.ts";

const ago = (t: string) => `${formatAge(Math.max(0, Math.round((Date.now() - new Date(t).getTime()) / 1000)))} ago`;
const short = (sha: string | null) => (sha ? sha.slice(0, 7) : "-");
const branch = (ref: string | null) => (ref ? ref.replace(/^refs\/heads\//, "") : "-");
// eslint-disable-next-line no-control-regex -- control characters are what it removes
const oneLine = (text: string) => text.replace(/[\u0000-\u001f\u007f-\u009f]+/g, " ").replace(/\s+/g, " ").trim();
/** A time to the second, in UTC. */
const stamp = (t: string) => `${t.slice(0, 19).replace("T", " ")}Z`;

/** "web1 succeeded, web2 halted, web3 -": a listed host with no row (not handed over yet) is "-". */
export function hostOutcomes(r: Pick<RolloutSummary, "hostStates">): string {
  return r.hostStates.map((h) => `${h.host} ${h.state === PENDING ? "-" : h.state}`).join(", ");
}

/** `deployq rollout ls [<deployment>]`: the newest rollouts, newest first, and where each host is in it. */
export async function rolloutLsCommand(settings: Settings, deployment: string | undefined, limit: number, json: boolean): Promise<void> {
  const rows = await withDatabase(
    settings,
    (db) => rolloutSummaries(db, { deployment, limit }),
    (base) => getJson<RolloutSummary[]>(`${base}/rollouts?limit=${limit}${deployment ? `&deployment=${encodeURIComponent(deployment)}` : ""}`),
  );
  if (json) return printJson(rows);
  if (rows.length === 0) {
    const fleets = [...settings.deployments.values()].filter((d) => d.hosts).map((d) => d.name);
    const what = deployment ? `no rollouts of ${deployment} recorded` : "no rollouts recorded";
    const why =
      deployment && !settings.deployments.has(deployment)
        ? `: ${deployment} is not configured in ${settings.configPath}`
        : deployment && !settings.deployments.get(deployment)?.hosts
          ? `: ${deployment} has no hosts (only a fleet deployment's pushes become rollouts)`
          : fleets.length === 0
            ? ": a push to a deployment with hosts = [...] becomes one, and none has hosts"
            : " yet: a push to a fleet deployment becomes one";
    process.stdout.write(`${what}${why}\n`);
    return;
  }
  process.stdout.write(
    `${table(
      ["ID", "DEPLOYMENT", "SHA", "STATE", "CREATED", "HOSTS"],
      rows.map((r) => [String(r.id), r.deployment, short(r.sha), r.state, ago(r.createdAt), hostOutcomes(r)]),
    )}\n`,
  );
}

/** The time a host held its rollout slot: "start → end (3.2s)", "start → (switching)", or "-". */
export function switchInterval(h: Pick<RolloutHostReport, "switchStartedAt" | "switchEndedAt" | "switchSeconds">): string {
  if (!h.switchStartedAt) return "-";
  if (!h.switchEndedAt) return `${stamp(h.switchStartedAt)} → (switching)`;
  const sameDay = h.switchStartedAt.slice(0, 10) === h.switchEndedAt.slice(0, 10);
  const end = sameDay ? `${h.switchEndedAt.slice(11, 19)}Z` : stamp(h.switchEndedAt);
  return `${stamp(h.switchStartedAt)} → ${end} (${(h.switchSeconds ?? 0).toFixed(1)}s)`;
}

function field(label: string, value: string): string {
  return `${`${label}:`.padEnd(12)}${value}`;
}

export function describeRollout(r: RolloutDetail): string {
  const failed = r.failedHost ? `${r.failedHost}${r.failedStep ? ` at ${r.failedStep}` : ""}${r.reason ? `: ${oneLine(r.reason)}` : ""}` : undefined;
  const lines = [
    `rollout ${r.id}`,
    field("deployment", r.deployment),
    field("sha", r.sha ?? "-"),
    field("ref", branch(r.ref)),
    field("entry", r.entry),
    field("hosts", r.hosts.join(", ")),
    field("parallel", String(r.parallel)),
    field("canary", r.canary ?? "-"),
    field("on_failure", r.onFailure),
    field("state", `${r.state}${r.state === "superseded" && r.supersededBy ? ` by rollout ${r.supersededBy}` : ""}`),
    ...(failed ? [field("failed", failed)] : []),
    field("created", `${stamp(r.createdAt)} (${ago(r.createdAt)})`),
    field("finished", r.finishedAt ? `${stamp(r.finishedAt)} (${ago(r.finishedAt)})` : "-"),
    "",
    table(
      ["HOST", "STATE", "RELEASE", "SWITCH", "ERROR"],
      r.hostDetails.map((h) => [
        h.host,
        h.state === PENDING ? "- (not handed over yet)" : h.state,
        h.release ?? "-",
        switchInterval(h),
        h.error ? `${h.step ? `${h.step}: ` : ""}${oneLine(h.error)}` : "",
      ]),
    ),
  ];
  return `${lines.join("\n")}\n`;
}

/** `deployq rollout show <id>`: one rollout, and each host's part in it. */
export async function rolloutShowCommand(settings: Settings, idText: string, json: boolean): Promise<void> {
  const id = /^\d{1,15}$/.test(idText) ? Number(idText) : undefined;
  if (id === undefined) throw new DeployqError("BAD_REQUEST", `a rollout id is a number, got ${JSON.stringify(idText)}: \`deployq rollout ls\` lists them`);
  const detail = await withDatabase(
    settings,
    (db) => rolloutDetailById(db, id),
    async (base) => (await getJson<RolloutDetail | null>(`${base}/rollouts/${id}`)) ?? undefined,
  );
  if (!detail) throw new DeployqError("BAD_REQUEST", `there is no rollout ${id}: \`deployq rollout ls\` lists them`);
  if (json) return printJson(detail);
  process.stdout.write(describeRollout(detail));
}
