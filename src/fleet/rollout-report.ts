import type { Db } from "../db/client.ts";
import type { Rollout, RolloutHost, RolloutHostState, RolloutState } from "../db/schema.ts";
import { listRollouts, readRollout, rolloutHostRows } from "./rollouts.ts";

export const DEFAULT_ROLLOUTS_LIMIT = 20;
/** A listing reads each rollout's host rows too: it is for reading, not for export. */
export const MAX_ROLLOUTS_LIMIT = 200;

export function parseRolloutsLimit(raw: string): number | undefined {
  if (!/^\d+$/.test(raw)) return undefined;
  const n = Number(raw);
  return n >= 1 && n <= MAX_ROLLOUTS_LIMIT ? n : undefined;
}

/** A listed host that has no row of its own: its follower has not written the entry into its queue yet. */
export const PENDING = "pending";
export type HostOutcome = RolloutHostState | typeof PENDING;
export const HOST_OUTCOMES: readonly HostOutcome[] = ["pending", "queued", "deploying", "succeeded", "failed", "halted", "superseded", "rolling-back", "rolled-back"];

/** One host's part in a rollout, as `deployq rollout show` (and GET /rollouts/:id) shows it: plain JSON, the same either way. */
export interface RolloutHostReport {
  host: string;
  state: HostOutcome;
  deployId: number | null;
  release: string | null;
  previousRelease: string | null;
  step: string | null;
  error: string | null;
  handedAt: string | null;
  switchStartedAt: string | null;
  switchEndedAt: string | null;
  /** switchEndedAt - switchStartedAt, once both are known. */
  switchSeconds: number | null;
}

/** A rollout as `deployq rollout ls` (and GET /rollouts) shows it. */
export interface RolloutSummary {
  id: number;
  deployment: string;
  entry: string;
  deliveryId: string | null;
  ref: string | null;
  sha: string | null;
  hosts: string[];
  parallel: number;
  canary: string | null;
  onFailure: string;
  state: RolloutState;
  supersededBy: number | null;
  failedHost: string | null;
  failedStep: string | null;
  reason: string | null;
  createdAt: string;
  finishedAt: string | null;
  /** Each listed host's state (pending: not handed over yet), in the order of `hosts`; then any host with a row that is not listed. */
  hostStates: Array<{ host: string; state: HostOutcome }>;
}

export interface RolloutDetail extends RolloutSummary {
  /** One per host of hostStates, in that order. */
  hostDetails: RolloutHostReport[];
}

const iso = (t: Date | null | undefined): string | null => (t ? t.toISOString() : null);

/** The listed hosts in their order, then any other host that has a row (an older deployq's, or one removed from the list). */
function hostOrder(rollout: Rollout, rows: readonly RolloutHost[]): string[] {
  const listed = [...rollout.hosts];
  const extra = rows.map((r) => r.host).filter((h) => !listed.includes(h));
  return [...listed, ...extra];
}

function hostReport(host: string, row: RolloutHost | undefined): RolloutHostReport {
  const started = row?.switchStartedAt ?? null;
  const ended = row?.switchEndedAt ?? null;
  return {
    host,
    state: row ? (row.state as RolloutHostState) : PENDING,
    deployId: row?.deployId ?? null,
    release: row?.release ?? null,
    previousRelease: row?.previousRelease ?? null,
    step: row?.step ?? null,
    error: row?.error ?? null,
    handedAt: iso(row?.handedAt),
    switchStartedAt: iso(started),
    switchEndedAt: iso(ended),
    switchSeconds: started && ended ? Math.max(0, ended.getTime() - started.getTime()) / 1000 : null,
  };
}

export function rolloutDetail(rollout: Rollout, rows: readonly RolloutHost[]): RolloutDetail {
  const byHost = new Map(rows.map((r) => [r.host, r]));
  const hostDetails = hostOrder(rollout, rows).map((h) => hostReport(h, byHost.get(h)));
  return {
    id: rollout.id,
    deployment: rollout.deployment,
    entry: rollout.entry,
    deliveryId: rollout.deliveryId,
    ref: rollout.ref,
    sha: rollout.sha,
    hosts: [...rollout.hosts],
    parallel: rollout.parallel,
    canary: rollout.canary,
    onFailure: rollout.onFailure,
    state: rollout.state as RolloutState,
    supersededBy: rollout.supersededBy,
    failedHost: rollout.failedHost,
    failedStep: rollout.failedStep,
    reason: rollout.reason,
    createdAt: rollout.createdAt.toISOString(),
    finishedAt: iso(rollout.finishedAt),
    hostStates: hostDetails.map((h) => ({ host: h.host, state: h.state })),
    hostDetails,
  };
}

/** How many of a rollout's hosts are in each state (every state, 0 included). */
export function countHostStates(detail: Pick<RolloutSummary, "hostStates">): Map<HostOutcome, number> {
  const counts = new Map<HostOutcome, number>(HOST_OUTCOMES.map((s) => [s, 0]));
  for (const { state } of detail.hostStates) counts.set(state, (counts.get(state) ?? 0) + 1);
  return counts;
}

/** The newest rollouts (of one deployment, or all), newest first, each with its hosts' states. */
export async function rolloutSummaries(db: Db, options: { deployment?: string | undefined; limit: number }): Promise<RolloutSummary[]> {
  const list = await listRollouts(db, options);
  return Promise.all(
    list.map(async (r) => {
      const { hostDetails: _, ...summary } = rolloutDetail(r, await rolloutHostRows(db, r.id));
      return summary;
    }),
  );
}

export async function rolloutDetailById(db: Db, id: number): Promise<RolloutDetail | undefined> {
  const rollout = await readRollout(db, id);
  return rollout ? rolloutDetail(rollout, await rolloutHostRows(db, id)) : undefined;
}

/** The newest rollout of a deployment, with its hosts; undefined before its first. */
export async function newestRollout(db: Db, deployment: string): Promise<RolloutDetail | undefined> {
  const [rollout] = await listRollouts(db, { deployment, limit: 1 });
  return rollout ? rolloutDetail(rollout, await rolloutHostRows(db, rollout.id)) : undefined;
}
