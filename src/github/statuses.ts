import type { Deployment, Settings } from "../config/load.ts";
import type { StepKind } from "../events/types.ts";
import type { CommitStatus } from "./client.ts";

/** Only a full commit id goes into the API's URL path (GitHub's are 40 hex digits; 64 for SHA-256 repositories). */
const FULL_SHA = /^(?:[0-9a-f]{40}|[0-9a-f]{64})$/;

/** GitHub cuts commit status descriptions at 140 characters. */
export const MAX_DESCRIPTION = 140;

export type StatusRow = CommitStatus & { deployment: string; deployId: number | null };

export const short = (sha: string | undefined) => (sha ? sha.slice(0, 7) : "?");

/** A full commit id of a commit (not a deleted branch's all-zero "after"): the only thing reported on. */
export function isCommitSha(sha: string | undefined): sha is string {
  return sha !== undefined && FULL_SHA.test(sha) && !/^0+$/.test(sha);
}

/** Where a report links to: the deploy's page on the dashboard, else the deployment's (with [server] public_url). */
export function dashboardLink(settings: Pick<Settings, "publicUrl" | "dashboard">, deployment: string, deployId: number | undefined): string | null {
  const { publicUrl, dashboard } = settings;
  if (!publicUrl) return null;
  return deployId !== undefined ? `${publicUrl}${dashboard.path}/deploys/${deployId}` : `${publicUrl}${dashboard.path}/deployments/${encodeURIComponent(deployment)}`;
}

export function clampDescription(text: string): string {
  const one = text.replace(/\s+/g, " ").trim();
  return one.length <= MAX_DESCRIPTION ? one : `${one.slice(0, MAX_DESCRIPTION - 1)}…`;
}

/** The step kinds whose failure is the commit's (its build, its app), not deployq's. */
export const COMMIT_STEPS: Partial<Record<StepKind, string>> = { build: "build", restart: "restart", "health-check": "health check", nginx: "nginx step" };

/**
 * The commit statuses deployq writes for a deployment, as outbox rows. Texts stay plain:
 * GitHub shows them as they are. `off` (no GITHUB_TOKEN) writes nothing at all.
 */
export class StatusTexts {
  constructor(
    private readonly settings: Pick<Settings, "publicUrl" | "dashboard">,
    private readonly deployment: Pick<Deployment, "name" | "repository">,
  ) {}

  private row(sha: string | undefined, state: CommitStatus["state"], description: string, deployId: number | undefined): StatusRow[] {
    // The all-zero sha is a deleted branch's "after": no commit to put a status on.
    if (!isCommitSha(sha)) return [];
    return [
      {
        repository: this.deployment.repository,
        sha,
        context: `deployq/${this.deployment.name}`,
        state,
        description: clampDescription(description),
        targetUrl: dashboardLink(this.settings, this.deployment.name, deployId),
        deployment: this.deployment.name,
        deployId: deployId ?? null,
      },
    ];
  }

  queued(sha: string | undefined): StatusRow[] {
    return this.row(sha, "pending", `Queued for ${this.deployment.name}`, undefined);
  }

  started(sha: string | undefined, deployId: number, attempt: number): StatusRow[] {
    return this.row(sha, "pending", `Deploying to ${this.deployment.name}${attempt > 1 ? ` (attempt ${attempt})` : ""}`, deployId);
  }

  succeeded(sha: string, deployId: number, requestedSha: string | undefined): StatusRow[] {
    return [
      ...this.row(sha, "success", `Live on ${this.deployment.name}`, deployId),
      // The push's own commit, whose branch had moved on: the head was deployed in its place.
      ...(requestedSha && requestedSha !== sha ? this.superseded(requestedSha, sha, deployId) : []),
    ];
  }

  alreadyLive(sha: string, deployId: number): StatusRow[] {
    return this.row(sha, "success", `Already live on ${this.deployment.name}`, deployId);
  }

  /**
   * A commit that was not deployed by itself because a newer one was (or is about to be).
   * `success`: the branch went live past it, and a red cross would read as a broken commit;
   * the description says it was not deployed on its own and names the commit that was.
   */
  superseded(sha: string | undefined, by: string | undefined, deployId: number | undefined): StatusRow[] {
    if (by && FULL_SHA.test(by)) return this.row(sha, "success", `Superseded: ${short(by)} was deployed to ${this.deployment.name} instead`, deployId);
    return this.row(sha, "success", `Superseded by a newer entry for ${this.deployment.name}, deployed instead`, deployId);
  }

  /** A push whose branch was deleted before its turn: nothing left to deploy. */
  branchDeleted(sha: string | undefined, deployId: number): StatusRow[] {
    return this.row(sha, "error", `Not deployed to ${this.deployment.name}: its branch no longer exists`, deployId);
  }

  /** A push held until the checks its deployment requires have succeeded (require_checks). */
  waitingForChecks(sha: string | undefined, pending: readonly string[]): StatusRow[] {
    return this.row(sha, "pending", `Waiting for ${pending.join(", ")} to pass before deploying to ${this.deployment.name}`, undefined);
  }

  /** A push whose required check failed or never passed in time: nothing was deployed. `why`: which check, in a few words. */
  checksFailed(sha: string | undefined, deployId: number, why: string): StatusRow[] {
    return this.row(sha, "failure", `Not deployed to ${this.deployment.name}: ${why}`, deployId);
  }

  retrying(sha: string | undefined, deployId: number, attempt: number): StatusRow[] {
    return this.row(sha, "pending", `Attempt ${attempt} failed on a transient error; retrying`, deployId);
  }

  /**
   * A failed deploy: `failure` when its own step failed, `error` when deployq could not run
   * it. `liveSha`: what serves now (the previous release, put back), none on a first deploy.
   */
  failed(sha: string | undefined, deployId: number, failedStep: StepKind | undefined, liveSha: string | undefined): StatusRow[] {
    const step = failedStep ? COMMIT_STEPS[failedStep] : undefined;
    const serving = liveSha && liveSha !== sha ? `the previous release (${short(liveSha)}) is still serving` : "nothing was put live";
    if (step) return this.row(sha, "failure", `The ${step} failed on ${this.deployment.name}; ${serving}`, deployId);
    return this.row(sha, "error", `deployq could not deploy it${failedStep ? ` (${failedStep} step)` : ""}; ${serving}`, deployId);
  }

  cancelled(sha: string | undefined, deployId: number, by: string): StatusRow[] {
    return this.row(sha, "error", `Cancelled by ${by}; the previous release is still serving`, deployId);
  }

  /** A fleet rollout going on: the hosts it is live on so far (one status for the fleet, not one per host). */
  fleetProgress(sha: string | undefined, live: readonly string[], total: number, deployId: number): StatusRow[] {
    return this.row(sha, "pending", `Rolling out to ${this.deployment.name}: live on ${live.length} of ${total} hosts (${live.join(", ")})`, deployId);
  }

  /** A fleet rollout done: every host serves the commit. */
  fleetLive(sha: string | undefined, total: number, deployId: number): StatusRow[] {
    return this.row(sha, "success", `Live on ${this.deployment.name}: all ${total} host${total === 1 ? "" : "s"}`, deployId);
  }

  /** A fleet rollout a host failed: halted (the others keep what they serve), or rolled back. */
  fleetStopped(sha: string | undefined, host: string, failedStep: StepKind | undefined, rolledBack: boolean, deployId: number): StatusRow[] {
    const step = failedStep ? (COMMIT_STEPS[failedStep] ?? `${failedStep} step`) : "deploy";
    const then = rolledBack ? "rolled back: the hosts that had switched went back" : "halted: the hosts that had not switched keep the previous release";
    return this.row(sha, "failure", `The ${step} failed on ${host} (${this.deployment.name}); ${then}`, deployId);
  }

  /** `deployq rollback`: the commit put back is live again; the one it replaced is not any more. */
  rolledBack(to: string, from: string | undefined, deployId: number): StatusRow[] {
    return [
      ...this.row(to, "success", `Live again on ${this.deployment.name}: rolled back from ${short(from)}`, deployId),
      ...(from && from !== to ? this.row(from, "failure", `Rolled back on ${this.deployment.name}: ${short(to)} is live instead`, deployId) : []),
    ];
  }
}
