import { createHash, createHmac, randomUUID } from "node:crypto";
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
/** A repository webhook, as the fake keeps it (GitHub answers its secret as "********"). */
export interface FakeHook {
  id: number;
  repository: string;
  url: string;
  contentType: string;
  secret: string | undefined;
  events: string[];
  active: boolean;
  createdAt: string;
  updatedAt: string;
  lastResponse: { code: number | null; status: string; message: string | null };
}

/** One delivery of a hook, as GET .../hooks/{id}/deliveries lists it, with what was sent. */
export interface FakeDelivery {
  id: number;
  guid: string;
  hookId: number;
  repository: string;
  event: string;
  action: string | null;
  deliveredAt: string;
  redelivery: boolean;
  /** What the hook's URL answered; 502 when nothing answered there (as a proxy in front of a stopped daemon answers). */
  statusCode: number;
  status: string;
  body: string;
  headers: Record<string, string>;
}

export interface FakeGithub extends FakeMeta {
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
  /** Repository webhooks (POST/GET/PATCH/DELETE /repos/{owner}/{repo}/hooks[/{id}], .../pings). */
  hooks: FakeHook[];
  /** Every delivery of every hook, oldest first (.../hooks/{id}/deliveries lists them newest first, paginated). */
  deliveries: FakeDelivery[];
  /** A webhook, as if created in the repository's settings. */
  addHook(repository: string, spec: { url: string; secret?: string; events?: string[] }): FakeHook;
  /**
   * GitHub sending an event to a hook: signed with the hook's secret, POSTed to its URL,
   * recorded with the status code it got (`recordAs` overrides it: GitHub timed out, say,
   * though the receiver got it).
   */
  deliver(hookId: number, event: string, payload: Record<string, unknown>, options?: { recordAs?: number }): Promise<FakeDelivery>;
  /** The POST .../deliveries/{id}/attempts requests, in order. */
  redeliveryRequests(): RecordedRequest[];
  /** true: redelivery attempts are answered 202 but sent only once this is set back to false (a redelivery in flight). */
  holdRedeliveries(hold: boolean): void;
  /** Every delivery GitHub started (pings, redeliveries) has been POSTed and recorded (held redeliveries excepted). */
  settled(): Promise<void>;
  /** From now on, the hooks endpoints of `repository` answer `status` (403: no "Webhooks" permission; 404: no such repository); undefined: they work again. */
  setHookAccess(repository: string, status: 403 | 404 | undefined): void;
  /** up: answers; fail: every request gets `status`; hang: no answer; rate-limit: 403 with the rate-limit headers until the reset, then up. */
  setMode(mode: FakeMode): void;
  close(): Promise<void>;
}

/**
 * GitHub, as far as deployq uses it: POST /repos/{owner}/{repo}/statuses/{sha}, the
 * Deployments API (POST and GET /repos/{owner}/{repo}/deployments, POST and GET
 * …/deployments/{id}/statuses), behind
 * repository webhooks with their deliveries and redelivery attempts (which really POST to
 * the hook's URL, signed like GitHub's), behind
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
  const meta = createFakeMeta();
  const hung = new Set<ServerResponse>();
  const hooks: FakeHook[] = [];
  const deliveries: FakeDelivery[] = [];
  const hookAccess = new Map<string, 403 | 404>();
  const inFlight = new Set<Promise<unknown>>();
  let holding = false;
  const held: Array<() => Promise<unknown>> = [];
  // Realistic magnitudes: GitHub's delivery ids are past 2^32 (a bigint in deployq's tables).
  let nextHookId = 400_000_000;
  let nextDeliveryId = 12_000_000_000;
  let base = "";

  const hookJson = (h: FakeHook) => ({
    type: "Repository",
    id: h.id,
    name: "web",
    active: h.active,
    events: h.events,
    config: { content_type: h.contentType, insecure_ssl: "0", url: h.url, ...(h.secret ? { secret: "********" } : {}) },
    updated_at: h.updatedAt,
    created_at: h.createdAt,
    url: `${base}/repos/${h.repository}/hooks/${h.id}`,
    test_url: `${base}/repos/${h.repository}/hooks/${h.id}/test`,
    ping_url: `${base}/repos/${h.repository}/hooks/${h.id}/pings`,
    deliveries_url: `${base}/repos/${h.repository}/hooks/${h.id}/deliveries`,
    last_response: h.lastResponse,
  });
  const deliveryJson = (d: FakeDelivery) => ({
    id: d.id,
    guid: d.guid,
    delivered_at: d.deliveredAt,
    redelivery: d.redelivery,
    duration: 0.05,
    status: d.status,
    status_code: d.statusCode,
    event: d.event,
    action: d.action,
    installation_id: null,
    repository_id: 1,
    throttled_at: null,
  });

  /** POSTs one delivery to the hook's URL as GitHub does, and records it. */
  const send = async (hook: FakeHook, event: string, guid: string, body: string, redelivery: boolean, recordAs?: number): Promise<FakeDelivery> => {
    const headers: Record<string, string> = {
      "content-type": "application/json",
      "user-agent": "GitHub-Hookshot/fake",
      "x-github-event": event,
      "x-github-delivery": guid,
      "x-github-hook-id": String(hook.id),
      "x-github-hook-installation-target-type": "repository",
      "x-github-hook-installation-target-id": "1",
      ...(hook.secret
        ? {
            "x-hub-signature": `sha1=${createHmac("sha1", hook.secret).update(body).digest("hex")}`,
            "x-hub-signature-256": `sha256=${createHmac("sha256", hook.secret).update(body).digest("hex")}`,
          }
        : {}),
    };
    let statusCode: number;
    let status: string;
    try {
      const res = await fetch(hook.url, { method: "POST", headers, body, signal: AbortSignal.timeout(10_000) });
      await res.arrayBuffer();
      statusCode = res.status;
      status = res.ok ? "OK" : `Invalid HTTP Response: ${res.status}`;
    } catch {
      statusCode = 502;
      status = "Invalid HTTP Response: 502";
    }
    if (recordAs !== undefined) {
      statusCode = recordAs;
      status = recordAs >= 200 && recordAs < 300 ? "OK" : `Invalid HTTP Response: ${recordAs}`;
    }
    let action: string | null = null;
    try {
      const parsed = JSON.parse(body) as { action?: unknown };
      action = typeof parsed.action === "string" ? parsed.action : null;
    } catch {
      action = null;
    }
    const delivery: FakeDelivery = { id: ++nextDeliveryId, guid, hookId: hook.id, repository: hook.repository, event, action, deliveredAt: new Date().toISOString(), redelivery, statusCode, status, body, headers };
    deliveries.push(delivery);
    hook.lastResponse = { code: statusCode, status: statusCode >= 200 && statusCode < 300 ? "active" : "failed", message: status };
    return delivery;
  };
  /** GitHub sends pings and redeliveries after it has answered the request that asked for them. */
  const later = (fn: () => Promise<unknown>) => {
    const p = fn().catch(() => {});
    inFlight.add(p);
    void p.finally(() => inFlight.delete(p));
  };
  const ping = (hook: FakeHook) =>
    later(() => send(hook, "ping", randomUUID(), JSON.stringify({ zen: "Keep it logically awesome.", hook_id: hook.id, hook: hookJson(hook), repository: { full_name: hook.repository } }), false));
  const addHook = (repository: string, spec: { url: string; secret?: string; events?: string[]; contentType?: string }): FakeHook => {
    const now = new Date().toISOString();
    const hook: FakeHook = {
      id: ++nextHookId,
      repository,
      url: spec.url,
      contentType: spec.contentType ?? "json",
      secret: spec.secret,
      events: spec.events ?? ["push"],
      active: true,
      createdAt: now,
      updatedAt: now,
      lastResponse: { code: null, status: "unused", message: null },
    };
    hooks.push(hook);
    return hook;
  };

  /** The hooks endpoints: false when the path is not one of them. */
  const handleHooks = (req: IncomingMessage, res: ServerResponse, url: URL, record: RecordedRequest, body: Record<string, unknown> | undefined): boolean => {
    const m = /^\/repos\/([^/]+)\/([^/]+)\/hooks(?:\/(\d+)(?:\/(pings|deliveries)(?:\/(\d+)\/(attempts))?)?)?$/.exec(url.pathname);
    if (!m) return false;
    const repository = `${decodeURIComponent(m[1]!)}/${decodeURIComponent(m[2]!)}`;
    const denied = hookAccess.get(repository.toLowerCase());
    if (denied === 403) return (answer(res, record, 403, { message: "Resource not accessible by personal access token", documentation_url: "https://docs.github.com/rest/repos/webhooks", status: "403" }), true);
    if (denied === 404) return (answer(res, record, 404, { message: "Not Found", status: "404" }), true);
    const method = req.method ?? "";
    const id = m[3] === undefined ? undefined : Number(m[3]);
    const hook = id === undefined ? undefined : hooks.find((h) => h.id === id && h.repository.toLowerCase() === repository.toLowerCase());
    if (id !== undefined && !hook) return (answer(res, record, 404, { message: "Not Found" }), true);
    const config = (body?.config ?? {}) as Record<string, unknown>;
    if (id === undefined) {
      if (method === "GET") {
        return (answer(res, record, 200, hooks.filter((h) => h.repository.toLowerCase() === repository.toLowerCase()).map(hookJson)), true);
      }
      if (method === "POST") {
        if (typeof config.url !== "string" || !/^https?:\/\//.test(config.url)) return (answer(res, record, 422, { message: "Validation Failed", errors: [{ resource: "Hook", code: "custom", message: "url is not a valid URL" }] }), true);
        const created = addHook(repository, { url: config.url, secret: typeof config.secret === "string" ? config.secret : undefined, events: Array.isArray(body?.events) ? (body.events as string[]) : ["push"], contentType: typeof config.content_type === "string" ? config.content_type : "form" });
        if (body?.active === false) created.active = false;
        answer(res, record, 201, hookJson(created));
        // GitHub pings a new hook at once.
        ping(created);
        return true;
      }
      return (answer(res, record, 404, { message: "Not Found" }), true);
    }
    if (m[4] === undefined) {
      if (method === "GET") return (answer(res, record, 200, hookJson(hook!)), true);
      if (method === "PATCH") {
        if (typeof config.url === "string") hook!.url = config.url;
        if (typeof config.content_type === "string") hook!.contentType = config.content_type;
        if (typeof config.secret === "string") hook!.secret = config.secret;
        if (Array.isArray(body?.events)) hook!.events = body.events as string[];
        if (typeof body?.active === "boolean") hook!.active = body.active;
        hook!.updatedAt = new Date().toISOString();
        return (answer(res, record, 200, hookJson(hook!)), true);
      }
      if (method === "DELETE") {
        hooks.splice(hooks.indexOf(hook!), 1);
        record.answered = 204;
        res.writeHead(204).end();
        return true;
      }
      return (answer(res, record, 404, { message: "Not Found" }), true);
    }
    if (m[4] === "pings") {
      if (method !== "POST") return (answer(res, record, 404, { message: "Not Found" }), true);
      record.answered = 204;
      res.writeHead(204).end();
      ping(hook!);
      return true;
    }
    if (m[5] === undefined) {
      if (method !== "GET") return (answer(res, record, 404, { message: "Not Found" }), true);
      // Newest first, `per_page` at a time; the cursor (opaque to clients) is the id to continue below.
      const perPage = Math.min(100, Math.max(1, Number(url.searchParams.get("per_page") ?? 30) || 30));
      const cursor = /^v1_(\d+)$/.exec(url.searchParams.get("cursor") ?? "");
      const below = cursor ? Number(cursor[1]) : Number.POSITIVE_INFINITY;
      const all = deliveries.filter((d) => d.hookId === hook!.id && d.id < below).sort((a, b) => b.id - a.id);
      const page = all.slice(0, perPage);
      const headers: Record<string, string> = {};
      if (all.length > perPage) {
        const next = new URL(`${base}${url.pathname}`);
        next.searchParams.set("per_page", String(perPage));
        next.searchParams.set("cursor", `v1_${page.at(-1)!.id}`);
        headers.link = `<${next.href}>; rel="next"`;
      }
      return (answer(res, record, 200, page.map(deliveryJson), headers), true);
    }
    // POST .../deliveries/{delivery_id}/attempts: 202, then the same delivery again, signed with the hook's secret now.
    const original = deliveries.find((d) => d.id === Number(m[5]) && d.hookId === hook!.id);
    if (method !== "POST" || !original) return (answer(res, record, 404, { message: "Not Found" }), true);
    answer(res, record, 202, {});
    const redeliver = () => send(hook!, original.event, original.guid, original.body, true);
    if (holding) held.push(redeliver);
    else later(redeliver);
    return true;
  };

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
    if (meta.handle(req, res, url, record)) return;
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
    if (handleHooks(req, res, url, record, body)) return;
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
  base = `http://127.0.0.1:${port}`;
  return {
    ...meta.api,
    url: `http://127.0.0.1:${port}`,
    token,
    requests,
    statuses,
    hooks,
    deliveries,
    addHook: (repository, spec) => addHook(repository, spec),
    async deliver(hookId, event, payload, options = {}) {
      const hook = hooks.find((h) => h.id === hookId);
      if (!hook) throw new Error(`the fake GitHub has no hook ${hookId}`);
      return send(hook, event, randomUUID(), JSON.stringify(payload), false, options.recordAs);
    },
    redeliveryRequests: () => requests.filter((r) => r.method === "POST" && /\/deliveries\/\d+\/attempts$/.test(r.path)),
    holdRedeliveries(hold) {
      holding = hold;
      if (!hold) for (const redeliver of held.splice(0)) later(redeliver);
    },
    async settled() {
      while (inFlight.size > 0) await Promise.all([...inFlight]);
    },
    setHookAccess(repository, status) {
      if (status === undefined) hookAccess.delete(repository.toLowerCase());
      else hookAccess.set(repository.toLowerCase(), status);
    },
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
      while (inFlight.size > 0) await Promise.all([...inFlight]);
      for (const res of hung) res.destroy();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** GET /meta: GitHub's published addresses; `hooks` is where webhook deliveries come from. */
export interface FakeMeta {
  /** The `hooks` ranges /meta answers (default: 127.0.0.2/32 and its IPv4-mapped form, so a test client bound to 127.0.0.2 is "GitHub"). */
  setMetaHooks(hooks: string[]): void;
  /** From now on GET /meta answers `status` (500: down); undefined: it works again. */
  setMetaStatus(status: number | undefined): void;
  /** The GET /meta requests, in order, with the If-None-Match each sent. */
  metaRequests(): Array<RecordedRequest & { ifNoneMatch: string | undefined }>;
  /** The ETag /meta answers now. */
  metaEtag(): string;
}

/**
 * GET /meta as GitHub answers it: public (no token needed; one sent is recorded), with a
 * weak ETag over the content and 304 to a matching If-None-Match.
 * https://docs.github.com/rest/meta/meta#get-github-meta-information
 */
function createFakeMeta() {
  let hooks = ["127.0.0.2/32", "::ffff:127.0.0.2/128"];
  let failing: number | undefined;
  const metaRequests: Array<RecordedRequest & { ifNoneMatch: string | undefined }> = [];
  const body = () => ({
    verifiable_password_authentication: true,
    hooks,
    web: ["192.30.252.0/22"],
    api: ["192.30.252.0/22"],
    git: ["192.30.252.0/22"],
  });
  const etag = () => `W/"${createHash("sha256").update(JSON.stringify(body())).digest("hex").slice(0, 32)}"`;
  const handle = (req: IncomingMessage, res: ServerResponse, url: URL, record: RecordedRequest): boolean => {
    if (req.method !== "GET" || url.pathname !== "/meta") return false;
    const ifNoneMatch = req.headers["if-none-match"];
    // The same record as in `requests`, which it is already part of.
    const entry = Object.assign(record, { ifNoneMatch });
    metaRequests.push(entry);
    if (failing !== undefined) {
      entry.answered = failing;
      res.writeHead(failing, { "content-type": "application/json; charset=utf-8" }).end(JSON.stringify({ message: "Server Error" }));
    } else if (ifNoneMatch === etag()) {
      entry.answered = 304;
      res.writeHead(304, { etag: etag() }).end();
    } else {
      entry.answered = 200;
      res.writeHead(200, { "content-type": "application/json; charset=utf-8", etag: etag() }).end(JSON.stringify(body()));
    }
    return true;
  };
  const api: FakeMeta = {
    setMetaHooks(next) {
      hooks = [...next];
    },
    setMetaStatus(status) {
      failing = status;
    },
    metaRequests: () => [...metaRequests],
    metaEtag: etag,
  };
  return { handle, api };
}
