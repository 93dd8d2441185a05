import { type Deployment, isFleet } from "../config/load.ts";
import type { Db } from "../db/client.ts";
import { HOST_OUTCOMES, type HostOutcome, countHostStates, newestRollout } from "../fleet/rollout-report.ts";

/** A host's state as a label value (Prometheus label values by convention use underscores: rolled_back). */
export const rolloutStateLabel = (state: HostOutcome): string => state.replace("-", "_");
export const ROLLOUT_HOST_STATE_LABELS = HOST_OUTCOMES.map(rolloutStateLabel);

export interface RolloutHostGauge {
  deployment: string;
  /** Every state (pending: a listed host not handed over yet), 0 included; all 0 before the deployment's first rollout. */
  states: Array<{ state: string; hosts: number }>;
}

/**
 * For each fleet deployment (one with hosts), how many hosts of its newest rollout are in
 * each state, from the shared database (two small queries per fleet deployment).
 */
export async function readRolloutGauges(db: Db, deployments: readonly Deployment[]): Promise<RolloutHostGauge[]> {
  return Promise.all(
    deployments.filter(isFleet).map(async (d) => {
      const newest = await newestRollout(db, d.name);
      const counts = newest ? countHostStates(newest) : new Map<HostOutcome, number>();
      return { deployment: d.name, states: HOST_OUTCOMES.map((s) => ({ state: rolloutStateLabel(s), hosts: counts.get(s) ?? 0 })) };
    }),
  );
}
