import { retry } from "@octokit/plugin-retry";
import { throttling } from "@octokit/plugin-throttling";
import { Octokit } from "@octokit/rest";
import Bottleneck from "bottleneck";
import type { Logger } from "pino";
import { errorMessage } from "../errors.ts";

/** One commit status, as POST /repos/{owner}/{repo}/statuses/{sha} takes it. */
export interface CommitStatus {
  repository: string;
  sha: string;
  context: string;
  state: "pending" | "success" | "failure" | "error";
  description: string;
  targetUrl: string | null;
}

/** A GitHub Deployment to create (POST /repos/{owner}/{repo}/deployments). */
export interface NewDeployment {
  repository: string;
  /** The exact commit: a branch name would deploy whatever it points at when GitHub reads it. */
  sha: string;
  environment: string;
  productionEnvironment: boolean | undefined;
  description: string;
  /** Stored in the deployment's payload as `deployq`: how deployq finds it again if GitHub's answer was lost. */
  marker: string;
}

/** A status of a GitHub Deployment (POST /repos/{owner}/{repo}/deployments/{id}/statuses). */
export interface DeploymentStatus {
  repository: string;
  deploymentId: number;
  state: "queued" | "in_progress" | "success" | "failure" | "error" | "inactive";
  description: string;
  logUrl: string | null;
  environmentUrl: string | null;
}

/**
 * What became of one send. `transient`: try again later (a 5xx, a timeout, the network,
 * an unexpected 403); `rate-limited`: not before `retryAt` (Retry-After or the rate-limit
 * reset); `permanent`: GitHub will never take it (401, 404, 422), with what to fix.
 */
export type SendResult =
  | { ok: true }
  | { ok: false; kind: "transient"; status: number | undefined; message: string }
  | { ok: false; kind: "rate-limited"; status: number; retryAt: number; message: string }
  | { ok: false; kind: "permanent"; status: number; message: string };

export interface GithubClientOptions {
  apiUrl: string;
  token: string;
  /** Between two writes (GitHub's guidance for mutations: at least 1 s). */
  writeIntervalMs: number;
  timeoutMs: number;
  logger: Logger;
}

/** One check run or commit status context on a commit, as the required-checks gate reads it. */
export interface CheckReading {
  name: string;
  source: "check run" | "status";
  state: "success" | "failure" | "pending";
  /** GitHub's own word for it: a check run's status or conclusion, a status's state. */
  detail: string;
  url: string | undefined;
}

export type ChecksResult = { ok: true; checks: CheckReading[] } | Exclude<SendResult, { ok: true }>;

export interface GithubClient {
  createStatus(status: CommitStatus, signal: AbortSignal): Promise<SendResult>;
  /** Every check run (the newest of each name) and status context on a commit. */
  readChecks(repository: string, sha: string, signal: AbortSignal): Promise<ChecksResult>;
  /** Creates the deployment, unless one with its marker exists already; either way answers its id. */
  createDeployment(deployment: NewDeployment, signal: AbortSignal): Promise<SendResult & { id?: number }>;
  createDeploymentStatus(status: DeploymentStatus, signal: AbortSignal): Promise<SendResult>;
}

/** What the sender asks GitHub for: the permanent answers' advice depends on it. */
export type RequestKind = "status" | "deployment";

/** Conclusions GitHub's branch protection counts as passing. */
const PASSING_CONCLUSIONS = new Set(["success", "neutral", "skipped"]);

const RestWithPlugins = Octokit.plugin(retry, throttling);

const BAD_TOKEN = "GitHub refused the token (401): GITHUB_TOKEN is wrong, expired or revoked; create a new one and restart deployq";

/** What to fix, by the permanent answers each endpoint gives. */
const PERMANENT: Record<RequestKind, Record<number, string>> = {
  status: {
    401: BAD_TOKEN,
    404: "GitHub answered 404: the repository does not exist, or GITHUB_TOKEN cannot see it; give the token access to it with \"Commit statuses: read and write\"",
    422: "GitHub refused the status (422): the commit is not in that repository, or it already has 1000 statuses for this context",
  },
  deployment: {
    401: BAD_TOKEN,
    404: "GitHub answered 404: the repository or the deployment does not exist, or GITHUB_TOKEN may not write deployments; give the token \"Deployments: read and write\" on the repository",
    422: "GitHub refused the deployment (422): the commit is not in that repository, the environment name is not valid, or the environment's protection rules refuse it",
  },
};
const PERMISSION: Record<RequestKind, string> = { status: "Commit statuses: read and write", deployment: "Deployments: read and write" };

/**
 * The GitHub REST client, through octokit with its retry and throttling plugins. The
 * plugins pace writes and retry a 5xx once, at once; everything longer (a rate limit, an
 * outage) is left to the outbox sender, which waits durably and can be stopped at any
 * moment: so onRateLimit / onSecondaryRateLimit answer "do not retry" and the answer's
 * headers come back here. The token goes into octokit only: octokit redacts it from its
 * errors, and what is logged here is the status and GitHub's message.
 */
export function createGithubClient(options: GithubClientOptions): GithubClient {
  const { logger } = options;
  const octokit = new RestWithPlugins({
    auth: options.token,
    baseUrl: options.apiUrl,
    userAgent: "deployq",
    log: { debug: () => {}, info: () => {}, warn: (m: string) => logger.debug({ github: m }, "octokit"), error: (m: string) => logger.debug({ github: m }, "octokit") },
    retry: { retries: 1, retryAfterBaseValue: 200 },
    throttle: {
      // A group of its own (not the plugin's process-wide one): its pace is this daemon's setting.
      write: new Bottleneck.Group({ maxConcurrent: 1, minTime: options.writeIntervalMs }),
      onRateLimit: () => false,
      onSecondaryRateLimit: () => false,
    },
  });
  return {
    async createStatus(status, signal) {
      const [owner, repo] = status.repository.split("/") as [string, string];
      const timeout = AbortSignal.timeout(options.timeoutMs);
      try {
        await octokit.rest.repos.createCommitStatus({
          owner,
          repo,
          sha: status.sha,
          state: status.state,
          context: status.context,
          description: status.description,
          ...(status.targetUrl ? { target_url: status.targetUrl } : {}),
          request: { signal: AbortSignal.any([signal, timeout]) },
        });
        return { ok: true };
      } catch (err) {
        return classify(err, timeout.aborted ? `no answer within ${options.timeoutMs} ms` : undefined);
      }
    },
    async readChecks(repository, sha, signal) {
      const [owner, repo] = repository.split("/") as [string, string];
      const timeout = AbortSignal.timeout(options.timeoutMs);
      const request = { signal: AbortSignal.any([signal, timeout]) };
      try {
        const [runs, combined] = await Promise.all([
          octokit.paginate(octokit.rest.checks.listForRef, { owner, repo, ref: sha, per_page: 100, filter: "latest", request }),
          octokit.rest.repos.getCombinedStatusForRef({ owner, repo, ref: sha, per_page: 100, request }),
        ]);
        // A check re-run is a new run of the same name: the newest (greatest id) is the one that counts.
        const newest = new Map<string, (typeof runs)[number]>();
        for (const run of runs) if ((newest.get(run.name)?.id ?? -1) < run.id) newest.set(run.name, run);
        const checks: CheckReading[] = [...newest.values()].map((run) => ({
          name: run.name,
          source: "check run",
          state: run.status !== "completed" ? "pending" : PASSING_CONCLUSIONS.has(run.conclusion ?? "") ? "success" : "failure",
          detail: run.status !== "completed" ? run.status : (run.conclusion ?? "completed"),
          url: run.html_url ?? run.details_url ?? undefined,
        }));
        for (const status of combined.data.statuses) {
          checks.push({
            name: status.context,
            source: "status",
            state: status.state === "success" ? "success" : status.state === "pending" ? "pending" : "failure",
            detail: status.state,
            url: status.target_url ?? undefined,
          });
        }
        return { ok: true, checks };
      } catch (err) {
        const result = classify(err, timeout.aborted ? `no answer within ${options.timeoutMs} ms` : undefined);
        // The read needs other permissions than the statuses the table above speaks of.
        if (result.status === 404 || result.status === 403) {
          return { ...result, message: `GitHub answered ${result.status} reading the checks of ${sha.slice(0, 7)}: give GITHUB_TOKEN "Checks: read" and "Commit statuses: read" on ${repository} (${githubMessage(err as HttpLikeError) ?? errorMessage(err)})` };
        }
        return result;
      }
    },

    async createDeployment(deployment, signal) {
      const [owner, repo] = deployment.repository.split("/") as [string, string];
      const timeout = AbortSignal.timeout(options.timeoutMs);
      const request = { signal: AbortSignal.any([signal, timeout]) };
      try {
        // One this daemon created already, whose answer it never recorded (a timeout, a crash): not a second one.
        const { data: existing } = await octokit.rest.repos.listDeployments({ owner, repo, sha: deployment.sha, environment: deployment.environment, per_page: 100, request });
        const found = existing.find((d) => markerOf(d.payload) === deployment.marker);
        if (found) return { ok: true, id: found.id };
        const { data, status } = await octokit.rest.repos.createDeployment({
          owner,
          repo,
          ref: deployment.sha,
          environment: deployment.environment,
          description: deployment.description,
          // deployq deploys the exact commit, and has checked nothing GitHub could check for it.
          auto_merge: false,
          required_contexts: [],
          payload: { deployq: deployment.marker },
          ...(deployment.productionEnvironment === undefined ? {} : { production_environment: deployment.productionEnvironment }),
          request,
        });
        const id = status === 201 && typeof data === "object" && data !== null && "id" in data ? Number(data.id) : undefined;
        if (id === undefined || !Number.isFinite(id)) {
          return { ok: false, kind: "permanent", status, message: `GitHub did not create the deployment (${status}: ${JSON.stringify(data).slice(0, 300)})` };
        }
        return { ok: true, id };
      } catch (err) {
        return classify(err, timeout.aborted ? `no answer within ${options.timeoutMs} ms` : undefined, Date.now(), "deployment");
      }
    },

    async createDeploymentStatus(status, signal) {
      const [owner, repo] = status.repository.split("/") as [string, string];
      const timeout = AbortSignal.timeout(options.timeoutMs);
      try {
        await octokit.rest.repos.createDeploymentStatus({
          owner,
          repo,
          deployment_id: status.deploymentId,
          state: status.state,
          description: status.description,
          ...(status.logUrl ? { log_url: status.logUrl } : {}),
          ...(status.environmentUrl ? { environment_url: status.environmentUrl } : {}),
          request: { signal: AbortSignal.any([signal, timeout]) },
        });
        return { ok: true };
      } catch (err) {
        return classify(err, timeout.aborted ? `no answer within ${options.timeoutMs} ms` : undefined, Date.now(), "deployment");
      }
    },
  };
}

/** The `deployq` marker of a listed deployment's payload (GitHub answers the payload as given: an object, or a string of JSON). */
function markerOf(payload: unknown): unknown {
  if (typeof payload === "string") {
    try {
      payload = JSON.parse(payload) as unknown;
    } catch {
      return undefined;
    }
  }
  return typeof payload === "object" && payload !== null ? (payload as Record<string, unknown>).deployq : undefined;
}

interface HttpLikeError {
  status?: unknown;
  message?: unknown;
  response?: { headers?: Record<string, string | number | undefined>; data?: unknown };
}

/** Sorts an octokit error into what the sender does next. */
export function classify(err: unknown, timedOut?: string, now = Date.now(), kind: RequestKind = "status"): Exclude<SendResult, { ok: true }> {
  const e = (err ?? {}) as HttpLikeError;
  const status = typeof e.status === "number" ? e.status : undefined;
  const headers = e.response?.headers ?? {};
  const message = timedOut ?? githubMessage(e) ?? errorMessage(err);
  if (status === undefined || !e.response) return { ok: false, kind: "transient", status: undefined, message };
  const retryAfter = Number(headers["retry-after"]);
  if ((status === 403 || status === 429) && Number.isFinite(retryAfter) && retryAfter >= 0) {
    return { ok: false, kind: "rate-limited", status, retryAt: now + retryAfter * 1000, message };
  }
  if ((status === 403 || status === 429) && String(headers["x-ratelimit-remaining"]) === "0") {
    const reset = Number(headers["x-ratelimit-reset"]) * 1000;
    // A second after the reset, as GitHub's documentation advises.
    return { ok: false, kind: "rate-limited", status, retryAt: Number.isFinite(reset) ? Math.max(now, reset + 1000) : now + 60_000, message };
  }
  if (status === 429) return { ok: false, kind: "rate-limited", status, retryAt: now + 60_000, message };
  const fix = PERMANENT[kind][status];
  if (fix) return { ok: false, kind: "permanent", status, message: `${fix} (${message})` };
  if (status === 403) {
    return { ok: false, kind: "transient", status, message: `GitHub answered 403 (${message}): if it lasts, give GITHUB_TOKEN "${PERMISSION[kind]}" on this repository` };
  }
  return { ok: false, kind: "transient", status, message };
}

function githubMessage(e: HttpLikeError): string | undefined {
  const data = e.response?.data;
  if (data && typeof data === "object" && typeof (data as { message?: unknown }).message === "string") {
    return `${String(e.status)} ${(data as { message: string }).message}`.slice(0, 500);
  }
  return undefined;
}
