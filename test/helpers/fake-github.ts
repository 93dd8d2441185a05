import { type IncomingMessage, type Server, type ServerResponse, createServer } from "node:http";
import type { AddressInfo } from "node:net";

/** Every request the fake received, and how it answered (undefined: never answered, a timeout). */
export interface RecordedRequest {
  at: number;
  method: string;
  path: string;
  authorization: string | undefined;
  body: Record<string, unknown> | undefined;
  answered: number | undefined;
}

/** A commit status GitHub took (answered 201). */
export interface CreatedStatus {
  at: number;
  repository: string;
  sha: string;
  state: string;
  context: string;
  description: string;
  targetUrl: string | undefined;
}

/** A check run on a commit, as CI would have reported it (tests set them with addCheckRun). */
export interface FakeCheckRun {
  id: number;
  sha: string;
  name: string;
  status: "queued" | "in_progress" | "completed";
  conclusion: string | null;
  html_url: string;
}

/** A GitHub Deployment GitHub created (POST /repos/{owner}/{repo}/deployments answered 201). */
export interface CreatedDeployment {
  id: number;
  at: number;
  repository: string;
  ref: string;
  environment: string;
  productionEnvironment: boolean | undefined;
  autoMerge: unknown;
  requiredContexts: unknown;
  description: string;
  payload: unknown;
}

/** A status of a GitHub Deployment (POST …/deployments/{id}/statuses answered 201). */
export interface CreatedDeploymentStatus {
  id: number;
  at: number;
  deploymentId: number;
  state: string;
  description: string;
  logUrl: string | undefined;
  environmentUrl: string | undefined;
}

/** lose-answer: a POST is carried out (a deployment created…), but its answer never comes (a timeout after GitHub acted); GETs are answered. */
export type FakeMode = { kind: "up" } | { kind: "fail"; status: number } | { kind: "hang" } | { kind: "rate-limit"; resetEpochS: number } | { kind: "lose-answer" };

export interface FakeGithub {
  url: string;
  token: string;
  requests: RecordedRequest[];
  statuses: CreatedStatus[];
  /** The statuses one commit got for one context, in the order GitHub took them. */
  statusesOf(sha: string, context: string): CreatedStatus[];
  /** Check runs GitHub shows on commits (GET /repos/{o}/{r}/commits/{sha}/check-runs). */
  checkRuns: FakeCheckRun[];
  /** CI reports a check run on `sha`; returns it, to be updated in place (status, conclusion). */
  addCheckRun(sha: string, name: string, status: FakeCheckRun["status"], conclusion?: string): FakeCheckRun;
  /** CI sets a commit status, as POST /statuses would (it shows in the combined status). */
  addStatus(repository: string, sha: string, context: string, state: string): void;
  deployments: CreatedDeployment[];
  deploymentStatuses: CreatedDeploymentStatus[];
  /** The statuses one deployment got, in the order GitHub took them. */
  deploymentStatusesOf(deploymentId: number): CreatedDeploymentStatus[];
  /** up: answers; fail: every request gets `status`; hang: no answer; rate-limit: 403 with the rate-limit headers until the reset, then up. */
  setMode(mode: FakeMode): void;
  close(): Promise<void>;
}

/**
 * GitHub, as far as deployq uses it: POST /repos/{owner}/{repo}/statuses/{sha}, the
 * Deployments API (POST and GET /repos/{owner}/{repo}/deployments, POST and GET
 * …/deployments/{id}/statuses), behind
 * token authentication, on a real HTTP server on a free port. It records every request,
 * and answers 5xx, rate limits or nothing at all on demand.
 */
export async function startFakeGithub(token = "ghp_fake-token-for-tests"): Promise<FakeGithub> {
  const requests: RecordedRequest[] = [];
  const statuses: CreatedStatus[] = [];
  const checkRuns: FakeCheckRun[] = [];
  const deployments: CreatedDeployment[] = [];
  const deploymentStatuses: CreatedDeploymentStatus[] = [];
  let mode: FakeMode = { kind: "up" };
  const hung = new Set<ServerResponse>();

  const answer = (res: ServerResponse, record: RecordedRequest, status: number, body: unknown, headers: Record<string, string> = {}) => {
    if (mode.kind === "lose-answer" && record.method === "POST") {
      hung.add(res);
      res.once("close", () => hung.delete(res));
      return;
    }
    record.answered = status;
    res.writeHead(status, { "content-type": "application/json; charset=utf-8", ...headers });
    res.end(JSON.stringify(body));
  };

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const text = Buffer.concat(chunks).toString();
    let body: Record<string, unknown> | undefined;
    try {
      body = text ? (JSON.parse(text) as Record<string, unknown>) : undefined;
    } catch {
      body = undefined;
    }
    const url = new URL(req.url ?? "/", "http://fake");
    const record: RecordedRequest = { at: Date.now(), method: req.method ?? "", path: url.pathname, authorization: req.headers.authorization, body, answered: undefined };
    requests.push(record);
    if (mode.kind === "rate-limit" && Date.now() >= mode.resetEpochS * 1000) mode = { kind: "up" };
    if (mode.kind === "hang") {
      hung.add(res);
      res.once("close", () => hung.delete(res));
      return;
    }
    if (mode.kind === "fail") return answer(res, record, mode.status, { message: "Server Error" });
    if (mode.kind === "rate-limit") {
      return answer(
        res,
        record,
        403,
        { message: "API rate limit exceeded for user ID 1.", documentation_url: "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api" },
        { "x-ratelimit-limit": "5000", "x-ratelimit-remaining": "0", "x-ratelimit-used": "5000", "x-ratelimit-reset": String(mode.resetEpochS), "x-ratelimit-resource": "core" },
      );
    }
    const auth = req.headers.authorization ?? "";
    if (auth !== `token ${token}` && auth !== `Bearer ${token}`) return answer(res, record, 401, { message: "Bad credentials" });
    const read = /^\/repos\/([^/]+)\/([^/]+)\/commits\/([0-9a-f]{40})\/(check-runs|status)$/.exec(url.pathname);
    if (req.method === "GET" && read) {
      const [, owner, repo, sha, what] = read as unknown as [string, string, string, string, string];
      if (what === "check-runs") {
        const runs = checkRuns.filter((r) => r.sha === sha).map((r) => ({ ...r, head_sha: r.sha, details_url: r.html_url }));
        return answer(res, record, 200, { total_count: runs.length, check_runs: runs });
      }
      const repository = `${decodeURIComponent(owner)}/${decodeURIComponent(repo)}`;
      // The newest status of each context, newest first, as GitHub's combined status lists them.
      const latest = new Map<string, CreatedStatus>();
      for (const st of statuses) if (st.repository === repository && st.sha === sha) latest.set(st.context, st);
      const list = [...latest.values()].reverse().map((st) => ({ context: st.context, state: st.state, description: st.description, target_url: st.targetUrl ?? null }));
      const state = list.some((st) => st.state === "failure" || st.state === "error") ? "failure" : list.every((st) => st.state === "success") && list.length > 0 ? "success" : "pending";
      return answer(res, record, 200, { state, sha, total_count: list.length, statuses: list });
    }
    if (/^\/repos\/[^/]+\/[^/]+\/deployments(?:\/|$)/.test(url.pathname)) return handleDeployments(req.method ?? "", url, body, res, record);
    const match = /^\/repos\/([^/]+)\/([^/]+)\/statuses\/([0-9a-f]{40})$/.exec(url.pathname);
    if (req.method !== "POST" || !match) return answer(res, record, 404, { message: "Not Found" });
    const state = String(body?.state ?? "");
    if (!["pending", "success", "failure", "error"].includes(state)) return answer(res, record, 422, { message: "Validation Failed" });
    const created: CreatedStatus = {
      at: Date.now(),
      repository: `${decodeURIComponent(match[1]!)}/${decodeURIComponent(match[2]!)}`,
      sha: match[3]!,
      state,
      context: String(body?.context ?? "default"),
      description: String(body?.description ?? ""),
      targetUrl: typeof body?.target_url === "string" ? body.target_url : undefined,
    };
    statuses.push(created);
    answer(res, record, 201, { id: statuses.length, state, context: created.context, description: created.description, target_url: created.targetUrl ?? null, created_at: new Date().toISOString() });
  };

  /** The Deployments API: create and list deployments, create and list their statuses (as GitHub validates them). */
  const handleDeployments = (method: string, url: URL, body: Record<string, unknown> | undefined, res: ServerResponse, record: RecordedRequest) => {
    const list = /^\/repos\/([^/]+)\/([^/]+)\/deployments$/.exec(url.pathname);
    const one = /^\/repos\/([^/]+)\/([^/]+)\/deployments\/(\d+)\/statuses$/.exec(url.pathname);
    const repoOf = (m: RegExpExecArray) => `${decodeURIComponent(m[1]!)}/${decodeURIComponent(m[2]!)}`;
    const asJson = (d: CreatedDeployment) => ({ id: d.id, sha: d.ref, ref: d.ref, task: "deploy", environment: d.environment, production_environment: d.productionEnvironment ?? d.environment === "production", description: d.description, payload: d.payload, created_at: new Date(d.at).toISOString() });
    if (list && method === "POST") {
      const ref = String(body?.ref ?? "");
      if (!/^[0-9a-f]{40}$/.test(ref)) return answer(res, record, 422, { message: "Validation Failed", errors: [{ field: "ref" }] });
      const created: CreatedDeployment = {
        id: 1000 + deployments.length,
        at: Date.now(),
        repository: repoOf(list),
        ref,
        environment: typeof body?.environment === "string" ? body.environment : "production",
        productionEnvironment: typeof body?.production_environment === "boolean" ? body.production_environment : undefined,
        autoMerge: body?.auto_merge,
        requiredContexts: body?.required_contexts,
        description: String(body?.description ?? ""),
        payload: body?.payload ?? {},
      };
      deployments.push(created);
      return answer(res, record, 201, asJson(created));
    }
    if (list && method === "GET") {
      const sha = url.searchParams.get("sha");
      const environment = url.searchParams.get("environment");
      const found = deployments.filter((d) => d.repository === repoOf(list) && (!sha || d.ref === sha) && (!environment || d.environment === environment));
      return answer(res, record, 200, found.reverse().map(asJson));
    }
    const deployment = one ? deployments.find((d) => d.id === Number(one[3]) && d.repository === repoOf(one)) : undefined;
    if (!one || !deployment) return answer(res, record, 404, { message: "Not Found" });
    if (method === "GET") return answer(res, record, 200, deploymentStatuses.filter((s) => s.deploymentId === deployment.id).reverse());
    if (method !== "POST") return answer(res, record, 404, { message: "Not Found" });
    const state = String(body?.state ?? "");
    if (!["error", "failure", "inactive", "in_progress", "queued", "pending", "success"].includes(state)) return answer(res, record, 422, { message: "Validation Failed" });
    const created: CreatedDeploymentStatus = {
      id: 5000 + deploymentStatuses.length,
      at: Date.now(),
      deploymentId: deployment.id,
      state,
      description: String(body?.description ?? ""),
      logUrl: typeof body?.log_url === "string" ? body.log_url : undefined,
      environmentUrl: typeof body?.environment_url === "string" ? body.environment_url : undefined,
    };
    deploymentStatuses.push(created);
    return answer(res, record, 201, { id: created.id, state, description: created.description, log_url: created.logUrl ?? "", environment_url: created.environmentUrl ?? "" });
  };

  const server: Server = createServer((req, res) => void handle(req, res));
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    token,
    requests,
    statuses,
    statusesOf: (sha, context) => statuses.filter((s) => s.sha === sha && s.context === context),
    checkRuns,
    addCheckRun(sha, name, status, conclusion) {
      const run: FakeCheckRun = { id: checkRuns.length + 1, sha, name, status, conclusion: conclusion ?? null, html_url: `https://github.example/checks/${checkRuns.length + 1}` };
      checkRuns.push(run);
      return run;
    },
    addStatus(repository, sha, context, state) {
      statuses.push({ at: Date.now(), repository, sha, state, context, description: "", targetUrl: undefined });
    },
    deployments,
    deploymentStatuses,
    deploymentStatusesOf: (deploymentId) => deploymentStatuses.filter((s) => s.deploymentId === deploymentId),
    setMode(next) {
      mode = next;
      if (next.kind !== "hang" && next.kind !== "lose-answer") for (const res of hung) res.destroy();
    },
    async close() {
      for (const res of hung) res.destroy();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
