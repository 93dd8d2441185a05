import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import express, { type NextFunction, type Request, type Response } from "express";
import type { VNode } from "preact";
import type { Logger } from "pino";
import { flushQueue, requeueDeadLetters } from "../../cli/queue.ts";
import { queueDeploy, queueRollback } from "../../cli/deploy.ts";
import type { Settings } from "../../config/load.ts";
import { DEPLOYMENT_NAME } from "../../config/schema.ts";
import type { Db } from "../../db/client.ts";
import { recordAdminAction } from "../../db/queries/admin-actions.ts";
import { deployById } from "../../db/queries/deploy-by-id.ts";
import { DeployqError, errorMessage } from "../../errors.ts";
import { type LockInspector, createLockInspector } from "../../lock/inspect.ts";
import { ROUTER } from "../../queue/layout.ts";
import { LoginLimiter, SESSION_COOKIE, SESSION_TTL_MS, type Flash, type Session, SessionStore, constantTimeEqual, csrfMatches, readCookie, sessionCookie } from "./auth.ts";
import { deployData, deploymentData, overviewData, queuesData } from "./data.ts";
import { followLog } from "../../events/log-follower.ts";
import { cancelDeploy, pauseDeployment, resumeDeployment } from "../../cli/pause.ts";
import type { PageContext } from "./pages/common.tsx";
import { DeployPage } from "./pages/deploy.tsx";
import { DeploymentPage } from "./pages/deployment.tsx";
import { LoginPage, MessagePage } from "./pages/login.tsx";
import { OverviewPage } from "./pages/overview.tsx";
import { QueuesPage } from "./pages/queues.tsx";
import { renderPage } from "./pages/render.ts";
import { h } from "preact";

/** Every dashboard response: nothing but this origin's own script, styles and forms; never framed; no referrer leaves. */
export const CONTENT_SECURITY_POLICY = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self'",
  // The live updates (fetch of the page itself, the log's EventSource) come from this origin only.
  "connect-src 'self'",
  "form-action 'self'",
  "frame-ancestors 'none'",
  "base-uri 'none'",
].join("; ");

interface Asset {
  body: Buffer;
  type: string;
  hash: string;
}

function loadAsset(name: string, type: string): Asset {
  const body = readFileSync(new URL(`./assets/${name}`, import.meta.url));
  return { body, type, hash: createHash("sha256").update(body).digest("hex").slice(0, 12) };
}

/** Shipped in the package and read once: no CDN, no request to anywhere else. */
const ASSETS: Record<string, Asset> = {
  "dashboard.css": loadAsset("dashboard.css", "text/css; charset=utf-8"),
  "dashboard.js": loadAsset("dashboard.js", "text/javascript; charset=utf-8"),
};

export interface DashboardDeps {
  settings: Settings;
  db: Db;
  logger: Logger;
  /** DEPLOYQ_ADMIN_TOKEN. */
  token: string;
  sessions?: SessionStore;
  limiter?: LoginLimiter;
  /** Reads the time left of Redis locks (with REDIS_URL); without it, locks are in-process. */
  locks?: LockInspector;
}

export interface Dashboard {
  path: string;
  router: express.Router;
  /** Ends its connections (the lock inspector's). */
  close(): Promise<void>;
}

/**
 * The dashboard when DEPLOYQ_ADMIN_TOKEN is set; otherwise none, and the log says so (the
 * daemon's start is where an operator looks for why /dashboard answers 404).
 */
export function dashboardFor(settings: Settings, db: Db, logger: Logger): Dashboard | undefined {
  const token = settings.secrets.adminToken;
  if (!token) {
    logger.info(`the dashboard is off: set DEPLOYQ_ADMIN_TOKEN (a long random string) to serve it at ${settings.dashboard.path}`);
    return undefined;
  }
  logger.info({ path: settings.dashboard.path }, "the dashboard is on");
  const urls = settings.secrets.redisUrls;
  return createDashboard({ settings, db, logger, token, ...(urls.length > 0 ? { locks: createLockInspector(urls) } : {}) });
}

const ID = /^[1-9]\d{0,15}$/;

/** A request for a page (what shows a flash): a GET that is not the log's event stream. */
const isPage = (req: Request) => req.method === "GET" && !req.path.endsWith("/log/stream");

export function createDashboard(deps: DashboardDeps): Dashboard {
  const prefix = deps.settings.dashboard.path;
  const sessions = deps.sessions ?? new SessionStore(deps.db);
  const limiter = deps.limiter ?? new LoginLimiter();
  const log = deps.logger.child({ component: "dashboard" });
  const assets = {
    css: `${prefix}/assets/dashboard.css?v=${ASSETS["dashboard.css"]!.hash}`,
    js: `${prefix}/assets/dashboard.js?v=${ASSETS["dashboard.js"]!.hash}`,
  };
  const router = express.Router();

  router.use((_req, res, next) => {
    res.set({
      "content-security-policy": CONTENT_SECURITY_POLICY,
      "x-content-type-options": "nosniff",
      "referrer-policy": "no-referrer",
      "x-frame-options": "DENY",
      "cache-control": "no-store",
    });
    next();
  });

  router.get("/assets/:name", (req, res) => {
    const asset = Object.hasOwn(ASSETS, req.params.name) ? ASSETS[req.params.name] : undefined;
    if (!asset) {
      res.status(404).type("text/plain").send("not found");
      return;
    }
    // The URLs carry the content hash: a new version is a new URL.
    res.set({ "content-type": asset.type, "cache-control": "public, max-age=31536000, immutable" }).send(asset.body);
  });

  /** A page's context; the session's flash (loaded with it, taken by the middleware below) shows on this page only. */
  const ctxOf = (session: Session | undefined): PageContext => ({ prefix, assets, csrf: session?.csrf, flash: session?.flash, now: Date.now() });
  const send = <P,>(res: Response, status: number, page: VNode<P>) => {
    res.status(status).type("text/html; charset=utf-8").send(renderPage(page));
  };
  const clientIp = (req: Request) => req.ip ?? req.socket.remoteAddress ?? "unknown";
  // req.ip and req.secure follow [server] trust_proxy: X-Forwarded-For / -Proto count only
  // from a configured proxy (anyone could send them, to dodge the login limit per address).
  const secure = (req: Request) => req.secure;

  router.use(express.urlencoded({ extended: false, limit: "16kb", parameterLimit: 20 }));

  router.get("/login", async (req, res) => {
    if (await sessions.get(readCookie(req.get("cookie"), SESSION_COOKIE))) {
      res.redirect(303, `${prefix}/`);
      return;
    }
    send(res, 200, h(LoginPage, { ctx: ctxOf(undefined) }));
  });

  router.post("/login", async (req, res) => {
    const ip = clientIp(req);
    const wait = limiter.retryAfterMs(ip);
    if (wait > 0) {
      log.warn({ origin: "dashboard", ip }, "dashboard login refused: too many failed attempts");
      res.set("retry-after", String(Math.ceil(wait / 1000)));
      send(res, 429, h(LoginPage, { ctx: ctxOf(undefined), error: `Too many failed logins from this address: try again in ${Math.ceil(wait / 1000)} s.` }));
      return;
    }
    const given = typeof req.body?.token === "string" ? (req.body.token as string) : "";
    if (!constantTimeEqual(deps.token, given)) {
      limiter.fail(ip);
      log.warn({ origin: "dashboard", ip }, "dashboard login failed: wrong token");
      send(res, 401, h(LoginPage, { ctx: ctxOf(undefined), error: "Wrong token." }));
      return;
    }
    // A new id at every login: a session id known before it (fixation) is worth nothing.
    const old = readCookie(req.get("cookie"), SESSION_COOKIE);
    if (old) await sessions.delete(old);
    const session = await sessions.create();
    log.info({ origin: "dashboard", ip }, "dashboard login");
    res.set("set-cookie", sessionCookie(session.id, { path: prefix, maxAgeS: Math.floor(SESSION_TTL_MS / 1000), secure: secure(req) }));
    res.redirect(303, `${prefix}/`);
  });

  // Everything below needs a session; every POST also its CSRF token.
  router.use(async (req, res, next) => {
    const session = await sessions.get(readCookie(req.get("cookie"), SESSION_COOKIE));
    if (!session) {
      if (req.method === "GET" || req.method === "HEAD") res.redirect(303, `${prefix}/login`);
      else send(res, 401, h(MessagePage, { ctx: ctxOf(undefined), title: "Not logged in", message: "Log in first: the session is missing or has expired." }));
      return;
    }
    if (req.method !== "GET" && req.method !== "HEAD" && !csrfMatches(session, req.body?._csrf)) {
      log.warn({ origin: "dashboard", path: req.path, ip: clientIp(req) }, "dashboard request refused: missing or wrong CSRF token");
      send(res, 403, h(MessagePage, { ctx: ctxOf(session), title: "Refused", message: "This form is stale or did not come from the dashboard (its CSRF token does not match): reload the page and try again." }));
      return;
    }
    // A flash is shown by the one page that takes it (not by the log's event stream, and not twice).
    if (session.flash && !(isPage(req) && (await sessions.takeFlash(session.id)))) delete session.flash;
    res.locals.session = session;
    next();
  });
  const sessionOf = (res: Response) => res.locals.session as Session;

  router.post("/logout", async (req, res) => {
    await sessions.delete(sessionOf(res).id);
    res.set("set-cookie", sessionCookie("", { path: prefix, maxAgeS: 0, secure: secure(req) }));
    res.redirect(303, `${prefix}/login`);
  });

  router.get("/", async (_req, res) => {
    send(res, 200, h(OverviewPage, { ctx: ctxOf(sessionOf(res)), data: await overviewData(deps.settings, deps.db, deps.locks) }));
  });

  router.get("/queues", async (_req, res) => {
    send(res, 200, h(QueuesPage, { ctx: ctxOf(sessionOf(res)), queues: await queuesData(deps.settings) }));
  });

  router.get("/deployments/:name", async (req, res) => {
    const data = await deploymentData(deps.settings, deps.db, req.params.name);
    if (!data) return notFound(res, `No deployment is called ${JSON.stringify(req.params.name)}.`);
    send(res, 200, h(DeploymentPage, { ctx: ctxOf(sessionOf(res)), data }));
  });

  router.get("/deploys/:id", async (req, res) => {
    const data = ID.test(req.params.id) ? await deployData(deps.db, Number(req.params.id)) : undefined;
    if (!data) return notFound(res, `There is no deploy #${req.params.id} (it may have been pruned).`);
    send(res, 200, h(DeployPage, { ctx: ctxOf(sessionOf(res)), data }));
  });

  router.get("/deploys/:id/log/stream", async (req, res) => {
    const deploy = ID.test(req.params.id) ? await deployById(deps.db, Number(req.params.id)) : undefined;
    if (!deploy?.logPath) {
      res.status(404).type("text/plain").send("no such deploy log");
      return;
    }
    // Last-Event-ID (the browser's resume after a dropped connection: the offset of the last
    // line it got) wins over ?offset (where the page's log ends: the next byte to send).
    const resumed = req.get("last-event-id");
    const raw = resumed ?? (typeof req.query.offset === "string" ? req.query.offset : "0");
    const offset = /^\d{1,15}$/.test(raw) ? Number(raw) : 0;
    streamLog(req, res, deps.db, deploy.id, deploy.logPath, offset, resumed !== undefined);
  });

  const notFound = (res: Response, message: string) => send(res, 404, h(MessagePage, { ctx: ctxOf(sessionOf(res)), title: "Not found", message }));

  /** An action's result is shown once on the page it came from (POST, then a redirect: a reload does not repeat it). */
  const done = async (res: Response, to: string, flash: Flash) => {
    await sessions.setFlash(sessionOf(res).id, flash);
    res.redirect(303, to);
  };
  const field = (req: Request, name: string): string | undefined => {
    const v = (req.body as Record<string, unknown> | undefined)?.[name];
    return typeof v === "string" && v.trim() !== "" ? v.trim() : undefined;
  };
  /**
   * Runs an action, records it (a log line at info with its origin, and a row of
   * admin_actions), and reports its outcome; a refusal (DeployqError) is shown, anything
   * else is a 500.
   */
  const act = async (req: Request, res: Response, back: string, action: string, deployment: string | null, details: Record<string, unknown>, run: () => Promise<string>) => {
    const ip = clientIp(req);
    let outcome: { ok: boolean; message: string };
    try {
      outcome = { ok: true, message: await run() };
      log.info({ origin: "dashboard", action, ip, deployment: deployment ?? undefined, ...details }, `dashboard: ${outcome.message}`);
    } catch (err) {
      if (!(err instanceof DeployqError)) throw err;
      outcome = { ok: false, message: err.message };
      log.warn({ origin: "dashboard", action, ip, deployment: deployment ?? undefined, ...details, err: errorMessage(err) }, `dashboard: ${action} refused`);
    }
    // What was done is done: a row that cannot be written is logged, not a failure of the action.
    await recordAdminAction(deps.db, { origin: "dashboard", action, deployment, details, ok: outcome.ok, message: outcome.message, client: ip }).catch((err: unknown) =>
      log.error({ action, err: errorMessage(err) }, "cannot record a dashboard action in admin_actions (it was done; the log line above has it)"),
    );
    await done(res, back, { kind: outcome.ok ? "ok" : "error", text: outcome.message });
  };
  const deploymentUrl = (name: string) => `${prefix}/deployments/${encodeURIComponent(name)}`;
  const knownDeployment = (res: Response, name: string) => {
    if (deps.settings.deployments.has(name)) return true;
    notFound(res, `No deployment is called ${JSON.stringify(name)}.`);
    return false;
  };

  router.post("/deployments/:name/deploy", async (req, res) => {
    const name = req.params.name;
    if (!knownDeployment(res, name)) return;
    const ref = field(req, "ref");
    const force = field(req, "force") === "yes";
    await act(req, res, deploymentUrl(name), "deploy", name, { ref, force }, async () => {
      const q = await queueDeploy(deps.settings, name, ref, { force, source: "dashboard" });
      return `queued ${q.what} for ${name} (entry ${q.entry})${q.note ? `; note: ${q.note}` : ""}`;
    });
  });

  router.post("/deployments/:name/rollback", async (req, res) => {
    const name = req.params.name;
    if (!knownDeployment(res, name)) return;
    const to = field(req, "to");
    await act(req, res, deploymentUrl(name), "rollback", name, { to }, async () => {
      const q = await queueRollback(deps.settings, name, to, "dashboard");
      return `queued ${q.what} for ${name} (entry ${q.entry})`;
    });
  });

  router.post("/deployments/:name/pause", async (req, res) => {
    const name = req.params.name;
    if (!knownDeployment(res, name)) return;
    const reason = field(req, "reason");
    const duration = field(req, "for");
    await act(req, res, deploymentUrl(name), "pause", name, { reason, for: duration }, async () => {
      const pause = await pauseDeployment(deps.settings, name, { reason, for: duration, by: "dashboard" });
      return `paused ${name}${pause.until ? ` until ${pause.until}` : ""}: its entries wait (the newest still wins)`;
    });
  });

  router.post("/deployments/:name/resume", async (req, res) => {
    const name = req.params.name;
    if (!knownDeployment(res, name)) return;
    await act(req, res, deploymentUrl(name), "resume", name, {}, async () => {
      const { removed } = await resumeDeployment(deps.settings, name);
      return removed ? `resumed ${name}: its newest waiting entry deploys now` : `${name} was not paused`;
    });
  });

  router.post("/deployments/:name/cancel", async (req, res) => {
    const name = req.params.name;
    if (!knownDeployment(res, name)) return;
    await act(req, res, deploymentUrl(name), "cancel", name, {}, async () => {
      const running = await cancelDeploy(deps.settings, name, "dashboard");
      return `asked deploy #${running.deployId} of ${name} to stop; the previous release stays current`;
    });
  });

  const deadLetterOwner = (req: Request, res: Response): string | undefined => {
    const name = req.params.name as string;
    if (name === ROUTER || (DEPLOYMENT_NAME.test(name) && deps.settings.deployments.has(name))) return name;
    notFound(res, `There is no dead-letter queue dead-letter/${name}.`);
    return undefined;
  };
  const backOf = (req: Request, name: string) => (field(req, "back") === "queues" || !deps.settings.deployments.has(name) ? `${prefix}/queues` : deploymentUrl(name));

  router.post("/queues/dead-letter/:name/requeue", async (req, res) => {
    const name = deadLetterOwner(req, res);
    if (name === undefined) return;
    const entry = field(req, "entry");
    await act(req, res, backOf(req, name), "requeue", name === ROUTER ? null : name, { queue: `dead-letter/${name}`, entry }, async () => {
      const moved = await requeueDeadLetters(deps.settings, name, entry);
      return moved.length === 0 ? `dead-letter/${name} is empty: nothing to requeue` : `requeued ${moved.length} entr${moved.length === 1 ? "y" : "ies"} into ${name}: ${moved.join(", ")}`;
    });
  });

  router.post("/queues/dead-letter/:name/flush", async (req, res) => {
    const name = deadLetterOwner(req, res);
    if (name === undefined) return;
    const back = backOf(req, name);
    if (field(req, "confirm") !== "yes") {
      await done(res, back, { kind: "error", text: `Tick "delete all … for good" to flush dead-letter/${name}: nothing was deleted.` });
      return;
    }
    await act(req, res, back, "flush", name === ROUTER ? null : name, { queue: `dead-letter/${name}` }, async () => {
      const { queue, removed } = await flushQueue(deps.settings, `dead-letter/${name}`);
      return `deleted ${removed.length} entr${removed.length === 1 ? "y" : "ies"} from ${queue}`;
    });
  });

  router.use((_req, res) => notFound(res, "There is no such page."));

  router.use((err: unknown, req: Request, res: Response, _next: NextFunction) => {
    const status = (err as { status?: number }).status;
    if (typeof status === "number" && status >= 400 && status < 500) {
      send(res, status, h(MessagePage, { ctx: ctxOf(undefined), title: "Bad request", message: errorMessage(err) }));
      return;
    }
    log.error({ path: req.path, err: errorMessage(err) }, "dashboard page failed");
    if (!res.headersSent) send(res, 500, h(MessagePage, { ctx: ctxOf(undefined), title: "Error", message: "This page failed: the deployq log says why." }));
  });

  return { path: prefix, router, close: async () => deps.locks?.close() };
}

/** How long one log stream lasts at most: the browser reconnects (with Last-Event-ID) if the deploy goes on. */
const STREAM_MAX_MS = 10 * 60 * 1000;

/**
 * Server-sent events of a deploy's log: each message is whole lines, its `id` the byte offset
 * just past them, so a reconnecting browser resumes where it stopped. Ends (`event: end`)
 * once the deploy is no longer running and its log is read to the end.
 */
function streamLog(req: Request, res: Response, db: Db, deployId: number, file: string, offset: number, resumed: boolean): void {
  res.status(200).set({ "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-store", "x-accel-buffering": "no" });
  res.flushHeaders();
  res.write("retry: 2000\n\n");
  // Each line is an event whose id is its offset in the file; a resumed stream starts at the
  // last line the browser got, which it does not get twice.
  const follower = followLog(file, {
    from: offset,
    onLine(line, at) {
      if (resumed && at === offset) return;
      // A carriage return ends a line in SSE too: one inside a log line must not start a field of its own.
      res.write(`id: ${at}\ndata: ${line.replace(/\r/g, "")}\n\n`);
    },
  });
  let stopped = false;
  const stop = () => {
    if (stopped) return;
    stopped = true;
    clearInterval(check);
    clearTimeout(limit);
    follower.close();
    res.end();
  };
  const check = setInterval(() => {
    void (async () => {
      const row = await deployById(db, deployId).catch(() => undefined);
      if (stopped || (row && row.status === "running")) return;
      follower.finish();
      await follower.done;
      if (!stopped) res.write("event: end\ndata: \n\n");
      stop();
    })();
  }, 1000);
  const limit = setTimeout(stop, STREAM_MAX_MS);
  req.on("close", stop);
}
