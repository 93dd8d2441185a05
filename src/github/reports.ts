import type { Deployment, Settings } from "../config/load.ts";
import type { StepKind } from "../events/types.ts";
import type { DeploymentState, DeploymentStatusWrite, DeploymentTarget, GithubWrite } from "./outbox.ts";
import { StatusTexts, clampDescription, dashboardLink, isCommitSha, short } from "./statuses.ts";

/** Whether a deployment reports GitHub Deployments: its own [deployments.x.github] deployments, else [github] deployments. */
export function reportsDeployments(settings: Pick<Settings, "github">, deployment: Pick<Deployment, "github">): boolean {
  return deployment.github?.deployments ?? settings.github.deployments;
}

/**
 * Everything one deployment tells GitHub at each turn of a deploy, as outbox writes: its
 * commit status (StatusTexts) and, with deployments on, the GitHub Deployment of the entry
 * and commit, with its status. One GitHub deployment per queue entry and commit: "queued"
 * when the router hands the entry over, "in_progress" when its deploy starts (again at
 * each attempt), then a final state. Every path out of a deploy ends in one, so that
 * nothing stays queued or in progress on the Environments page:
 *
 * - live: `success`; the environment's previous live deployment is marked `inactive`
 *   explicitly (GitHub's auto_inactive skips production environments);
 * - superseded (a newer push went live in its place, or the branch had moved on): `inactive`,
 *   naming the commit deployed instead. Not `error`: nothing failed, and a burst of pushes is
 *   the normal case; a red mark per skipped commit would hide the real failures. `inactive` is
 *   GitHub's word for "not the live one", which it is;
 * - a push whose branch moved on deploys the head: a second deployment, for the head;
 * - failed: `failure` (the build, the app) or `error` (deployq could not run it, cancelled,
 *   the branch deleted); the previous live deployment stays live;
 * - rollback: a new deployment for the commit put back, `success`, and the one it replaced
 *   `inactive` ("Rolled back …").
 */
export class GithubReports {
  readonly statuses: StatusTexts;
  private readonly deployments: boolean;

  constructor(
    private readonly settings: Pick<Settings, "publicUrl" | "dashboard" | "github">,
    private readonly deployment: Pick<Deployment, "name" | "repository" | "github">,
  ) {
    this.statuses = new StatusTexts(settings, deployment);
    this.deployments = reportsDeployments(settings, deployment);
  }

  private target(entry: string, sha: string): DeploymentTarget {
    const { name, repository, github } = this.deployment;
    return { deployment: name, entry, sha, repository, context: `deployq/${name}`, environment: github?.environment ?? name, productionEnvironment: github?.production_environment };
  }

  private dep(entry: string, sha: string | undefined, state: DeploymentState, description: string, deployId: number | undefined, replaces?: string): GithubWrite[] {
    if (!this.deployments || !isCommitSha(sha)) return [];
    const write: DeploymentStatusWrite = {
      kind: "deployment_status",
      target: this.target(entry, sha),
      state,
      description: clampDescription(description),
      logUrl: dashboardLink(this.settings, this.deployment.name, deployId),
      environmentUrl: this.deployment.github?.environment_url ?? null,
      deployId: deployId ?? null,
      ...(replaces ? { replaces: { description: clampDescription(replaces) } } : {}),
    };
    return [write];
  }

  private status(rows: ReturnType<StatusTexts["queued"]>): GithubWrite[] {
    return rows.map((status) => ({ kind: "status", status }));
  }

  private get env(): string {
    return this.deployment.name;
  }

  queued(entry: string, sha: string | undefined): GithubWrite[] {
    return [...this.status(this.statuses.queued(sha)), ...this.dep(entry, sha, "queued", `Queued for ${this.env}`, undefined)];
  }

  started(entry: string, sha: string | undefined, deployId: number, attempt: number): GithubWrite[] {
    return [...this.status(this.statuses.started(sha, deployId, attempt)), ...this.dep(entry, sha, "in_progress", `Deploying to ${this.env}${attempt > 1 ? ` (attempt ${attempt})` : ""}`, deployId)];
  }

  /** Live: `requestedSha`, a push's own commit whose branch had moved on, was superseded by the head `sha`. */
  succeeded(entry: string, sha: string, deployId: number, requestedSha: string | undefined): GithubWrite[] {
    return [
      ...this.status(this.statuses.succeeded(sha, deployId, requestedSha)),
      ...this.dep(entry, sha, "success", `Live on ${this.env}`, deployId, `Replaced by ${short(sha)} on ${this.env}`),
      ...(requestedSha && requestedSha !== sha ? this.dep(entry, requestedSha, "inactive", `Superseded: ${short(sha)} was deployed to ${this.env} instead`, deployId) : []),
    ];
  }

  alreadyLive(entry: string, sha: string, deployId: number): GithubWrite[] {
    return [...this.status(this.statuses.alreadyLive(sha, deployId)), ...this.dep(entry, sha, "success", `Already live on ${this.env}`, deployId, `Replaced by ${short(sha)} on ${this.env} (deployed again)`)];
  }

  superseded(entry: string, sha: string | undefined, by: string | undefined, deployId: number | undefined): GithubWrite[] {
    const instead = by && isCommitSha(by) ? `Superseded: ${short(by)} was deployed to ${this.env} instead` : `Superseded by a newer entry for ${this.env}, deployed instead`;
    return [...this.status(this.statuses.superseded(sha, by, deployId)), ...this.dep(entry, sha, "inactive", instead, deployId)];
  }

  branchDeleted(entry: string, sha: string | undefined, deployId: number): GithubWrite[] {
    return [...this.status(this.statuses.branchDeleted(sha, deployId)), ...this.dep(entry, sha, "error", `Not deployed to ${this.env}: its branch no longer exists`, deployId)];
  }

  /** A push held until its required checks pass (require_checks): its deployment stays queued. */
  waitingForChecks(entry: string, sha: string | undefined, pending: readonly string[]): GithubWrite[] {
    const rows = this.statuses.waitingForChecks(sha, pending);
    return [...this.status(rows), ...rows.flatMap((r) => this.dep(entry, sha, "queued", r.description, undefined))];
  }

  /** A push whose required check failed or did not pass in time: nothing was deployed. */
  checksFailed(entry: string, sha: string | undefined, deployId: number, why: string): GithubWrite[] {
    const rows = this.statuses.checksFailed(sha, deployId, why);
    return [...this.status(rows), ...rows.flatMap((r) => this.dep(entry, sha, "failure", r.description, deployId))];
  }

  retrying(entry: string, sha: string | undefined, deployId: number, attempt: number): GithubWrite[] {
    return [...this.status(this.statuses.retrying(sha, deployId, attempt)), ...this.dep(entry, sha, "queued", `Attempt ${attempt} failed on a transient error; retrying`, deployId)];
  }

  failed(entry: string, sha: string | undefined, deployId: number, failedStep: StepKind | undefined, liveSha: string | undefined): GithubWrite[] {
    const rows = this.statuses.failed(sha, deployId, failedStep, liveSha);
    // The same words as the commit status; its state (failure: the commit's step, error: deployq's) too.
    return [...this.status(rows), ...rows.flatMap((r) => this.dep(entry, sha, r.state === "failure" ? "failure" : "error", r.description, deployId))];
  }

  cancelled(entry: string, sha: string | undefined, deployId: number, by: string): GithubWrite[] {
    return [...this.status(this.statuses.cancelled(sha, deployId, by)), ...this.dep(entry, sha, "error", `Cancelled by ${by}; the previous release is still serving`, deployId)];
  }

  /** `deployq rollback`: a new deployment of the commit put back, live; the one it replaced inactive. */
  rolledBack(entry: string, to: string, from: string | undefined, deployId: number): GithubWrite[] {
    return [
      ...this.status(this.statuses.rolledBack(to, from, deployId)),
      ...this.dep(entry, to, "success", `Live again on ${this.env}: rolled back from ${short(from)}`, deployId, `Rolled back on ${this.env}: ${short(to)} is live instead`),
    ];
  }
}
