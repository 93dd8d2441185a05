import { retry } from "@octokit/plugin-retry";
import { throttling } from "@octokit/plugin-throttling";
import { Octokit } from "@octokit/rest";
import Bottleneck from "bottleneck";
import type { Logger } from "pino";
import type { Deployment } from "../config/load.ts";
import { DeployqError, errorMessage } from "../errors.ts";
import { CHECK_EVENTS } from "./checks.ts";

/** Where the receiver takes GitHub's deliveries (src/http/server.ts). */
export const WEBHOOK_PATH = "/github-webhook";

/** The URL a repository's webhook must post to for this deployq: [server] public_url + /github-webhook. */
export function hookUrl(publicUrl: string): string {
  return `${publicUrl.replace(/\/+$/, "")}${WEBHOOK_PATH}`;
}

/**
 * The events a deployment's repository webhook subscribes to: the one place they are
 * computed. `push` always; a deployment with `require_checks` also needs the events that
 * say a check on a commit has moved (CHECK_EVENTS), which wake its waiting push.
 */
export function hookEvents(deployment: Pick<Deployment, "name" | "require_checks">): string[] {
  return deployment.require_checks.length > 0 ? ["push", ...[...CHECK_EVENTS].sort()] : ["push"];
}

/** The events of one hook serving several deployments of one repository: the union, sorted (push first). */
export function hookEventsFor(deployments: ReadonlyArray<Pick<Deployment, "name" | "require_checks">>): string[] {
  const all = new Set(deployments.flatMap((d) => hookEvents(d)));
  return [...all].sort((a, b) => (a === "push" ? -1 : b === "push" ? 1 : a.localeCompare(b)));
}

export interface Hook {
  id: number;
  url: string;
  events: string[];
  active: boolean;
  contentType: string | undefined;
  lastResponse: { code: number | null; status: string | null; message: string | null } | undefined;
  updatedAt: string | undefined;
}

/** One row of GET /repos/{owner}/{repo}/hooks/{hook_id}/deliveries. */
export interface HookDelivery {
  id: number;
  guid: string;
  deliveredAt: string;
  redelivery: boolean;
  statusCode: number;
  status: string;
  event: string;
  action: string | null;
}

export interface HookSpec {
  url: string;
  secret: string;
  events: string[];
}

export interface HooksApi {
  list(repository: string): Promise<Hook[]>;
  create(repository: string, spec: HookSpec): Promise<Hook>;
  update(repository: string, hookId: number, spec: HookSpec): Promise<Hook>;
  remove(repository: string, hookId: number): Promise<void>;
  ping(repository: string, hookId: number): Promise<void>;
  /**
   * The hook's deliveries, newest first, page by page (GitHub's cursor, through the Link
   * header), until `keepGoing` says no to a page (it has seen everything it needs).
   */
  deliveries(repository: string, hookId: number, keepGoing: (page: HookDelivery[]) => boolean): Promise<HookDelivery[]>;
  /** Asks GitHub to send delivery `deliveryId` again (it answers 202 and sends it later, as a new delivery with the same GUID). */
  redeliver(repository: string, hookId: number, deliveryId: number): Promise<void>;
}

export interface HooksApiOptions {
  apiUrl: string;
  token: string;
  timeoutMs: number;
  /** Between two writes (creating a hook, a redelivery): GitHub asks for at least a second between mutations. */
  writeIntervalMs: number;
  logger?: Logger;
  /** Aborts every request in flight (a daemon closing). */
  signal?: AbortSignal;
}

const RestWithPlugins = Octokit.plugin(retry, throttling);

/** GitHub's ids are positive integers; anything else never goes into a URL. */
export function isGithubId(value: unknown): value is number {
  return typeof value === "number" && Number.isSafeInteger(value) && value > 0;
}

function parseId(value: unknown, what: string): number {
  if (!isGithubId(value)) throw new DeployqError("UNAVAILABLE", `GitHub answered a ${what} that is not a positive whole number (${JSON.stringify(value)}): is GITHUB_API_URL a GitHub API?`);
  return value;
}

function split(repository: string): { owner: string; repo: string } {
  const [owner, repo] = repository.split("/") as [string, string];
  return { owner, repo };
}

/**
 * The repository webhooks API (Webhooks: read and write), through octokit with its retry
 * and throttling plugins, as the status client (client.ts) does; a client of its own
 * because what it answers and what its errors tell the operator differ. Every request gets
 * `timeoutMs` through octokit's fetch (paginate's page requests take no per-call signal).
 */
export function createHooksApi(options: HooksApiOptions): HooksApi {
  const { logger } = options;
  const octokit = new RestWithPlugins({
    auth: options.token,
    baseUrl: options.apiUrl,
    userAgent: "deployq",
    log: {
      debug: () => {},
      info: () => {},
      warn: (m: string) => logger?.debug({ github: m }, "octokit"),
      error: (m: string) => logger?.debug({ github: m }, "octokit"),
    },
    retry: { retries: 1, retryAfterBaseValue: 200 },
    throttle: {
      write: new Bottleneck.Group({ maxConcurrent: 1, minTime: options.writeIntervalMs }),
      onRateLimit: () => false,
      onSecondaryRateLimit: () => false,
    },
    request: {
      fetch: (url: string | URL, init: RequestInit = {}) => {
        const signals = [AbortSignal.timeout(options.timeoutMs), ...(init.signal ? [init.signal] : []), ...(options.signal ? [options.signal] : [])];
        return fetch(url, { ...init, signal: AbortSignal.any(signals) });
      },
    },
  });
  const toHook = (h: { id: unknown; config?: { url?: string | undefined; content_type?: string | undefined } | undefined; events?: string[] | undefined; active?: boolean | undefined; updated_at?: string | undefined; last_response?: { code: number | null; status: string | null; message?: string | null } | undefined }): Hook => ({
    id: parseId(h.id, "hook id"),
    url: h.config?.url ?? "",
    events: h.events ?? [],
    active: h.active ?? true,
    contentType: h.config?.content_type,
    lastResponse: h.last_response ? { code: h.last_response.code, status: h.last_response.status, message: h.last_response.message ?? null } : undefined,
    updatedAt: h.updated_at,
  });
  const config = (spec: HookSpec) => ({ url: spec.url, content_type: "json", secret: spec.secret, insecure_ssl: "0" as const });
  return {
    async list(repository) {
      const hooks = await octokit.paginate(octokit.rest.repos.listWebhooks, { ...split(repository), per_page: 100 });
      return hooks.map(toHook);
    },
    async create(repository, spec) {
      const { data } = await octokit.rest.repos.createWebhook({ ...split(repository), name: "web", active: true, events: spec.events, config: config(spec) });
      return toHook(data);
    },
    async update(repository, hookId, spec) {
      const { data } = await octokit.rest.repos.updateWebhook({ ...split(repository), hook_id: parseId(hookId, "hook id"), active: true, events: spec.events, config: config(spec) });
      return toHook(data);
    },
    async remove(repository, hookId) {
      await octokit.rest.repos.deleteWebhook({ ...split(repository), hook_id: parseId(hookId, "hook id") });
    },
    async ping(repository, hookId) {
      await octokit.rest.repos.pingWebhook({ ...split(repository), hook_id: parseId(hookId, "hook id") });
    },
    async deliveries(repository, hookId, keepGoing) {
      const all: HookDelivery[] = [];
      const pages = octokit.paginate.iterator(octokit.rest.repos.listWebhookDeliveries, { ...split(repository), hook_id: parseId(hookId, "hook id"), per_page: 100 });
      for await (const { data } of pages) {
        const page = data.map((d) => ({
          id: parseId(d.id, "delivery id"),
          guid: String(d.guid),
          deliveredAt: String(d.delivered_at),
          redelivery: d.redelivery === true,
          statusCode: Number(d.status_code),
          status: String(d.status),
          event: String(d.event),
          action: d.action ?? null,
        }));
        all.push(...page);
        if (!keepGoing(page)) break;
      }
      return all;
    },
    async redeliver(repository, hookId, deliveryId) {
      await octokit.rest.repos.redeliverWebhookDelivery({ ...split(repository), hook_id: parseId(hookId, "hook id"), delivery_id: parseId(deliveryId, "delivery id") });
    },
  };
}

/** What GitHub answered, if it answered: the HTTP status. */
export function githubStatus(err: unknown): number | undefined {
  const status = (err as { status?: unknown } | null)?.status;
  return typeof status === "number" && (err as { response?: unknown }).response !== undefined ? status : undefined;
}

/** A webhooks API error, told as what the operator should do about it. */
export function hooksApiError(err: unknown, repository: string, doing: string): DeployqError {
  if (err instanceof DeployqError) return err;
  const status = githubStatus(err);
  const data = (err as { response?: { data?: { message?: unknown } } }).response?.data;
  const said = typeof data?.message === "string" ? `: ${data.message.slice(0, 300)}` : "";
  const permission = `give GITHUB_TOKEN the repository permission "Webhooks: read and write" on ${repository} (a fine-grained token; a classic one needs the admin:repo_hook scope)`;
  if (status === 401) return new DeployqError("CONFIG", `GitHub refused GITHUB_TOKEN (401${said}) while trying to ${doing}: it is wrong, expired or revoked; create a new one (${permission.replace(/^give GITHUB_TOKEN /, "with ")})`);
  if (status === 403) return new DeployqError("CONFIG", `GitHub answered 403${said} while trying to ${doing}: ${permission}, or wait if it is a rate limit`);
  if (status === 404) return new DeployqError("CONFIG", `GitHub answered 404${said} while trying to ${doing}: the repository ${repository} does not exist, or GITHUB_TOKEN may not manage its webhooks; ${permission}`);
  if (status === 422) return new DeployqError("BAD_REQUEST", `GitHub refused the webhook (422${said}) while trying to ${doing}: check [server] public_url (GitHub must be able to reach it)`);
  if (status !== undefined) return new DeployqError("UNAVAILABLE", `GitHub answered ${status}${said} while trying to ${doing}: try again later`, { cause: err });
  return new DeployqError("UNAVAILABLE", `could not reach GitHub at its API (${errorMessage(err)}) while trying to ${doing}: check the network, or GITHUB_API_URL for GitHub Enterprise Server`, { cause: err });
}
