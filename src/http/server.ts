import { access, constants, statfs } from "node:fs/promises";
import type { IncomingMessage, Server, ServerResponse } from "node:http";
import net, { type AddressInfo } from "node:net";
import { sql } from "drizzle-orm";
import express, { type NextFunction, type Request, type Response } from "express";
import type { Logger } from "pino";
import type { Deployment } from "../config/load.ts";
import type { Db } from "../db/client.ts";
import { DEFAULT_DELIVERIES_LIMIT, type DeliverySummary, MAX_DELIVERIES_LIMIT, parseDeliveriesLimit, recentDeliveries } from "../db/queries/recent-deliveries.ts";
import { RequestError, errorMessage } from "../errors.ts";
import { DEFAULT_ROLLOUTS_LIMIT, MAX_ROLLOUTS_LIMIT, parseRolloutsLimit, rolloutDetailById, rolloutSummaries } from "../fleet/rollout-report.ts";
import type { QueueLayout } from "../queue/layout.ts";
import { SERVICE_NAME, VERSION } from "../version.ts";
import { admitBody } from "./admission.ts";
import { githubAllowlist } from "./allowlist.ts";
import type { GithubHookRanges } from "../github/meta.ts";
import { DEFAULT_DEADLINE_MS } from "./enqueue-batch.ts";
import { REDELIVER, githubWebhookHandler } from "./github-webhook.ts";
import type { Readiness } from "./readiness.ts";
import type { Events } from "../events/bus.ts";
import { metricsHandler, webhookRequestMetrics } from "../metrics/http.ts";
import type { Metrics } from "../metrics/registry.ts";
import type { Dashboard } from "./dashboard/app.ts";

/** GitHub caps webhook payloads at 25 MB. */
export const BODY_LIMIT_BYTES = 25 * 1024 * 1024;

export interface HealthCheck {
  name: string;
  /** Throws when unhealthy; a string is a healthy check's remark, shown instead of "ok". */
  check(): Promise<void | string>;
}

export interface HttpDeps {
  db: Db;
  layout: QueueLayout;
  logger: Logger;
  /** Webhook secrets; without them there is no receiver (a workers-only health endpoint). */
  secrets?: readonly string[];
  /** The configured deployments, which the receiver's answers name. */
  deployments: readonly Deployment[];
  /** Extra health checks (workers report theirs), read at each request: the daemon adds them once its workers run. */
  health?: HealthCheck[];
  /** GET /status[?deployment=name]: what `deployq status` shows (asked for while this process owns PGlite). */
  status?: (deployment: string | undefined) => Promise<unknown>;
  /** Until it says ready, whatever needs the database answers 503 (a daemon listens before Postgres is reached). */
  readiness?: Readiness;
  /** The process's events (deliveries received, duplicate, voided). */
  events?: Events;
  /** GET /metrics, and the webhook requests' own (absent: no /metrics). */
  metrics?: Metrics;
  /** The dashboard (src/http/dashboard/), mounted at its path prefix; absent without DEPLOYQ_ADMIN_TOKEN. */
  dashboard?: Dashboard | undefined;
  /** [server] trust_proxy: whose X-Forwarded-For / -Proto req.ip and req.secure believe (absent or empty: nobody's). */
  trustProxy?: readonly string[];
  /** [github] allowlist: POST /github-webhook only from GitHub's hook ranges (absent: from anywhere). */
  allowlist?: GithubHookRanges | undefined;
}

/** Below this, the queue root counts as full: an entry may not fit (a writable directory says nothing about space). */
const MIN_FREE_BYTES = 1024 * 1024;

async function queuesWritable(layout: QueueLayout): Promise<void> {
  await access(layout.router, constants.W_OK);
  const fs = await statfs(layout.root);
  const free = fs.bavail * fs.bsize;
  if (free < MIN_FREE_BYTES) throw new Error(`${layout.root} is full (${Math.floor(free / 1024)} KB free): deliveries get 503 until space is freed`);
  // Some filesystems (btrfs) report no inode counts at all: only a count that ran out means full.
  if (fs.files > 0 && fs.ffree === 0) throw new Error(`${layout.root} has no free inodes: deliveries get 503 until files are removed`);
}

export function createApp(deps: HttpDeps): express.Express {
  const app = express();
  app.disable("x-powered-by");
  app.set("etag", false);
  // proxy-addr compiles the list (validated by the configuration): the client is the last
  // X-Forwarded-For address that is not a trusted proxy. false: X-Forwarded-* are ignored.
  app.set("trust proxy", deps.trustProxy && deps.trustProxy.length > 0 ? [...deps.trustProxy] : false);
  if (deps.metrics) app.use(webhookRequestMetrics(deps.metrics));

  app.get("/", (_req, res) => {
    res.json({ service: SERVICE_NAME, version: VERSION });
  });

  const notReady = () => deps.readiness?.notReady();
  const checks = (): HealthCheck[] => [
    {
      name: "database",
      check: async () => {
        const why = notReady();
        if (why) throw new Error(why);
        await deps.db.execute(sql`select 1`);
      },
    },
    { name: "queues", check: () => queuesWritable(deps.layout) },
    ...(deps.health ?? []),
  ];
  app.get("/healthz", async (_req, res) => {
    const results: Record<string, string> = {};
    let ok = true;
    await Promise.all(
      checks().map(async (c) => {
        try {
          results[c.name] = (await c.check()) || "ok";
        } catch (err) {
          ok = false;
          results[c.name] = errorMessage(err);
        }
      }),
    );
    res.status(ok ? 200 : 503).json({ status: ok ? "ok" : "unhealthy", checks: results });
  });
  // Before the readiness gate: metrics need no database, and tell most while it is down.
  if (deps.metrics) app.get("/metrics", metricsHandler(deps.metrics, deps.logger));

  // Before the readiness gate and the body: a client outside GitHub's ranges waits for
  // nothing, and nothing of what it sends is read.
  if (deps.secrets && deps.allowlist) app.post("/github-webhook", githubAllowlist(deps.allowlist, deps.logger));

  // Everything below needs the database. A request that comes before it is reached waits
  // for it, up to the receiver's deadline, then gets a 503, before any body is read.
  app.use(async (req, res, next) => {
    if (!deps.readiness || (await deps.readiness.whenAccepting(DEFAULT_DEADLINE_MS))) return next();
    const why = notReady() ?? "deployq is starting";
    res.set("retry-after", "10");
    throw new RequestError("UNAVAILABLE", 503, req.method === "POST" ? `${why}; nothing was queued: ${REDELIVER}` : why);
  });

  if (deps.dashboard) app.use(deps.dashboard.path, deps.dashboard.router);

  // What `deployq deliveries` shows while this process owns PGlite.
  app.get("/deliveries", async (req, res) => {
    const raw = req.query.limit;
    const limit = raw === undefined ? DEFAULT_DELIVERIES_LIMIT : typeof raw === "string" ? parseDeliveriesLimit(raw) : undefined;
    if (limit === undefined) throw new RequestError("BAD_REQUEST", 400, `limit must be a whole number from 1 to ${MAX_DELIVERIES_LIMIT}`);
    const rows: DeliverySummary[] = await recentDeliveries(deps.db, limit);
    res.json(rows);
  });

  // What `deployq rollout ls` and `rollout show` show while this process owns PGlite (an unknown id: null).
  app.get("/rollouts", async (req, res) => {
    const raw = req.query.limit;
    const limit = raw === undefined ? DEFAULT_ROLLOUTS_LIMIT : typeof raw === "string" ? parseRolloutsLimit(raw) : undefined;
    if (limit === undefined) throw new RequestError("BAD_REQUEST", 400, `limit must be a whole number from 1 to ${MAX_ROLLOUTS_LIMIT}`);
    const deployment = typeof req.query.deployment === "string" && req.query.deployment !== "" ? req.query.deployment : undefined;
    res.json(await rolloutSummaries(deps.db, { deployment, limit }));
  });
  app.get("/rollouts/:id", async (req, res) => {
    if (!/^\d{1,15}$/.test(req.params.id)) throw new RequestError("BAD_REQUEST", 400, "a rollout id is a number");
    res.json((await rolloutDetailById(deps.db, Number(req.params.id))) ?? null);
  });

  const status = deps.status;
  if (status) {
    app.get("/status", async (req, res) => {
      const only = typeof req.query.deployment === "string" ? req.query.deployment : undefined;
      res.json(await status(only));
    });
  }

  if (deps.secrets) {
    // The raw body, whatever its content type: the signature is over the exact bytes.
    app.post(
      "/github-webhook",
      admitBody(BODY_LIMIT_BYTES),
      express.raw({ type: () => true, limit: BODY_LIMIT_BYTES }),
      githubWebhookHandler({ secrets: deps.secrets, db: deps.db, layout: deps.layout, logger: deps.logger, deployments: deps.deployments, readiness: deps.readiness, events: deps.events }),
    );
  }

  app.use((_req, res) => {
    res.status(404).json({ error: "not found" });
  });

  app.use((err: unknown, req: Request, res: Response, _next: NextFunction) => {
    const { status, message } = toHttpError(err);
    if (status >= 500) deps.logger.error({ path: req.path, status, err: errorMessage((err as { cause?: unknown }).cause ?? err) }, message);
    else deps.logger.warn({ path: req.path, status, delivery: req.get("x-github-delivery")?.slice(0, 64) }, message);
    if (!res.headersSent) res.status(status).json({ error: message });
  });
  return app;
}

function toHttpError(err: unknown): { status: number; message: string } {
  if (err instanceof RequestError) return { status: err.status, message: err.message };
  const e = err as { status?: number; type?: string };
  if (e.type === "entity.too.large") {
    return { status: 413, message: `the body is larger than ${BODY_LIMIT_BYTES} bytes (GitHub's own limit)` };
  }
  if (typeof e.status === "number" && e.status >= 400 && e.status < 500) return { status: e.status, message: errorMessage(err) };
  return { status: 500, message: "internal error; see the deployq log" };
}

export interface RunningServer {
  url: string;
  port: number;
  /** The node server itself (for upgrades: /ws/v0). */
  server: Server;
  /** Stops accepting, lets in-flight requests finish, then resolves. Idempotent. */
  close(): Promise<void>;
}

export async function listen(app: express.Express, host: string, port: number): Promise<RunningServer> {
  const server = app.listen(port, host);
  await new Promise<void>((resolve, reject) => {
    server.once("listening", resolve);
    server.once("error", reject);
  });
  server.keepAliveTimeout = 5000;
  let stopping = false;
  // Once draining, every answer closes its connection, so that keep-alive clients move on
  // (to the next process) instead of sending more work here until the connection is cut.
  server.on("request", (_req: IncomingMessage, res: ServerResponse) => {
    if (stopping) res.setHeader("connection", "close");
  });
  const address = server.address() as AddressInfo;
  const shownHost = address.family === "IPv6" ? `[${address.address}]` : address.address;
  let closing: Promise<void> | undefined;
  return {
    url: `http://${shownHost}:${address.port}`,
    port: address.port,
    server,
    close() {
      stopping = true;
      closing ??= new Promise<void>((resolve, reject) => {
        // Stop listening, but not http.Server#close(): since Node 19 it also closes idle
        // keep-alive connections at once, and a client that is just sending its next delivery
        // on one gets a reset (a failed delivery), even while another receiver instance takes
        // new connections on the same port (pm2 cluster mode). An idle connection ends by its
        // keep-alive timeout instead, which the client knows from the Keep-Alive header and
        // stops reusing it before; an answer on it says `connection: close`.
        net.Server.prototype.close.call(server, (err) => (err ? reject(err) : resolve()));
        // Keep-alive connections that finish their request after this are closed then;
        // any that still linger after the grace period are cut.
        setTimeout(() => server.closeAllConnections(), 10_000).unref();
      });
      return closing;
    },
  };
}
