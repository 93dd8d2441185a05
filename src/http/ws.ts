import { createHash, timingSafeEqual } from "node:crypto";
import { type IncomingMessage, STATUS_CODES, type Server } from "node:http";
import type { Duplex } from "node:stream";
import type { Logger } from "pino";
import type { Settings } from "../config/load.ts";
import { type RawData, WebSocket, WebSocketServer } from "ws";
import { DEPLOYMENT_NAME } from "../config/schema.ts";
import { errorMessage } from "../errors.ts";
import type { EventFeed } from "../events/feed.ts";
import { type LogFollower, followLog } from "../events/log-follower.ts";
import type { SequencedEvent } from "../events/store.ts";
import { deployLogPath } from "../workers/deployment.ts";

/** Where the live stream is (with or without its trailing slash). */
export const WS_PATH = "/ws/v0/";
/** A connection that has not authenticated by then is closed. */
export const AUTH_TIMEOUT_MS = 5000;
/** Pings this often; a connection that did not answer the previous one is cut. */
export const HEARTBEAT_MS = 15_000;
/** What may wait in a connection's send buffer; past it, the client is too slow and is dropped. */
export const MAX_BUFFERED_BYTES = 1024 * 1024;
/** A client's own messages are small: anything larger is refused (close 1009). */
const MAX_MESSAGE_BYTES = 64 * 1024;
/** The lines of a running deploy kept for a client that subscribes while it runs (the file has them all). */
const RECENT_LINES = 2000;

/** Close codes: RFC 6455's, as the protocol document lists them. */
const CLOSE_POLICY = 1008;
const CLOSE_GOING_AWAY = 1001;
const CLOSE_TRY_AGAIN_LATER = 1013;
const CLOSE_INTERNAL_ERROR = 1011;

export interface LiveStreamOptions {
  server: Server;
  feed: EventFeed;
  /** DEPLOYQ_ADMIN_TOKEN. */
  token: string;
  /** The only origin a browser may connect from ([server] public_url); unset, browsers are refused. */
  publicOrigin: string | undefined;
  /** Where this host's deploy logs are (log lines are read from its own files, never from a path in an event). */
  dataDir: string;
  /** The configured deployment names, which a Subscribe may name. */
  deployments: readonly string[];
  logger: Logger;
  authTimeoutMs?: number;
  heartbeatMs?: number;
  maxBufferedBytes?: number;
}

export interface LiveStream {
  /** Connections open now (authenticated or not). */
  readonly connections: number;
  /** Clients dropped because they did not read fast enough. */
  readonly slowConsumersDropped: number;
  /** Closes every connection (1001) and stops accepting new ones. Idempotent. */
  close(): Promise<void>;
}

interface Client {
  ws: WebSocket;
  authenticated: boolean;
  /** Narrowed by a Subscribe: these deployments' events and log lines only. */
  deployments: Set<string> | undefined;
  /** The sequence number of the last event sent: nothing at or below it is sent again. */
  lastSeq: number;
  unsubscribe: (() => void) | undefined;
  /** Messages are handled one after the other (a Subscribe re-subscribes to the feed, which is asynchronous). */
  chain: Promise<void>;
  alive: boolean;
  dropping: boolean;
  closed: boolean;
  authTimer: NodeJS.Timeout | undefined;
}

/** A deploy being run, whose log is followed while someone is subscribed to its deployment. */
interface Run {
  deployment: string;
  deployId: number;
  follower: LogFollower | undefined;
  recent: string[];
  finished: boolean;
}

const MESSAGE_TYPES = { delivery: "DeliveryEvent", deploy: "DeployEvent", lock: "LockEvent" } as const;

const digest = (s: string) => createHash("sha256").update(s).digest();

/** Constant time whatever the lengths: both sides are hashed to 32 bytes first. */
function tokenMatches(given: string, expected: Buffer): boolean {
  return timingSafeEqual(digest(given), expected);
}

function refuseUpgrade(socket: Duplex, status: number, message: string): void {
  const body = `${JSON.stringify({ error: message })}\n`;
  socket.on("error", () => {});
  socket.end(
    `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
  );
}

/**
 * /ws/v0/, the live stream (docs/ws-protocol.md): a client connects, authenticates with
 * its first message, then receives every new event the feed delivers, optionally narrowed
 * to some deployments (and then also their deploys' log lines). Every client is served
 * from the feed's one read of the events table and each event is serialised once, so the
 * number of clients costs the deploy path nothing; a client that does not read is dropped
 * before its buffer passes maxBufferedBytes.
 */
export function startLiveStream(options: LiveStreamOptions): LiveStream {
  const { feed, logger, server } = options;
  const authTimeoutMs = options.authTimeoutMs ?? AUTH_TIMEOUT_MS;
  const maxBuffered = options.maxBufferedBytes ?? MAX_BUFFERED_BYTES;
  const expected = digest(options.token);
  const known = new Set(options.deployments);
  const wss = new WebSocketServer({ noServer: true, clientTracking: false, maxPayload: MAX_MESSAGE_BYTES, perMessageDeflate: false });
  const clients = new Set<Client>();
  const runs = new Map<number, Run>();
  const serialised = new WeakMap<SequencedEvent, string>();
  let dropped = 0;
  let closing: Promise<void> | undefined;

  const onUpgrade = (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    if (closing) return refuseUpgrade(socket, 503, "deployq is shutting down");
    const url = new URL(req.url ?? "/", "http://localhost");
    if (url.pathname !== WS_PATH && url.pathname !== WS_PATH.slice(0, -1)) return refuseUpgrade(socket, 404, "not found");
    if (url.searchParams.has("token")) {
      return refuseUpgrade(socket, 400, "the token goes in the first message (AuthenticationRequest), never in the URL, where proxies and logs keep it");
    }
    // Browsers cannot set headers on a WebSocket but always send their page's Origin:
    // a page elsewhere must not ride on a user's network position (cross-site WebSocket hijacking).
    const origin = req.headers.origin;
    if (origin !== undefined && origin !== options.publicOrigin) {
      logger.warn({ origin }, "/ws/v0 connection from a browser page of another origin refused");
      return refuseUpgrade(
        socket,
        403,
        options.publicOrigin ? `connections from ${origin} are refused: only ${options.publicOrigin} ([server] public_url)` : "browser connections are refused until [server] public_url is set",
      );
    }
    wss.handleUpgrade(req, socket, head, (ws) => accept(ws));
  };
  server.on("upgrade", onUpgrade);

  const heartbeat = setInterval(() => {
    for (const c of clients) {
      if (!c.alive) {
        c.ws.terminate();
        continue;
      }
      c.alive = false;
      c.ws.ping();
    }
  }, options.heartbeatMs ?? HEARTBEAT_MS);
  heartbeat.unref();

  // The stream's own subscription, first of all: it learns of deploys starting and ending, to follow their logs.
  let endRuns: (() => void) | undefined;
  void feed.subscribe({ deliver: (e) => trackRun(e) }).then((end) => {
    if (closing) end();
    else endRuns = end;
  });

  function subscribedTo(deployment: string): Client[] {
    return [...clients].filter((c) => c.authenticated && c.deployments?.has(deployment));
  }

  function trackRun(e: SequencedEvent): void {
    if (e.kind !== "deploy" || e.deployId === undefined) return;
    if (e.name === "started") {
      // A deployment runs one deploy at a time here: one still open never got its finished event (its process died).
      for (const other of runs.values()) {
        if (other.deployment !== e.deployment) continue;
        other.finished = true;
        if (other.follower) other.follower.finish();
        else runs.delete(other.deployId);
      }
      const run: Run = { deployment: e.deployment, deployId: e.deployId, follower: undefined, recent: [], finished: false };
      runs.set(e.deployId, run);
      if (subscribedTo(e.deployment).length > 0) follow(run);
    } else if (e.name === "finished") {
      const run = runs.get(e.deployId);
      if (!run) return;
      run.finished = true;
      if (run.follower) run.follower.finish();
      else runs.delete(e.deployId);
    }
  }

  function follow(run: Run): void {
    const file = deployLogPath(options.dataDir, run.deployment, run.deployId);
    const follower = followLog(file, {
      onLine: (line, offset) => {
        const message = JSON.stringify({ type: "LogLine", deployment: run.deployment, deployId: run.deployId, offset, line });
        run.recent.push(message);
        if (run.recent.length > RECENT_LINES) run.recent.shift();
        for (const c of subscribedTo(run.deployment)) send(c, message);
      },
      onError: (err) => logger.warn({ file, err: errorMessage(err) }, "could not follow a deploy's log for /ws/v0 clients"),
    });
    run.follower = follower;
    if (run.finished) follower.finish();
    void follower.done.then(() => {
      runs.delete(run.deployId);
      const end = JSON.stringify({ type: "LogEnd", deployment: run.deployment, deployId: run.deployId });
      for (const c of subscribedTo(run.deployment)) send(c, end);
    });
  }

  function send(c: Client, message: string): void {
    if (c.dropping || c.closed || c.ws.readyState !== WebSocket.OPEN) return;
    if (c.ws.bufferedAmount + message.length > maxBuffered) return dropSlow(c);
    c.ws.send(message);
  }

  function reply(c: Client, errors?: string[]): void {
    send(c, JSON.stringify(errors ? { type: "Response", status: "error", errors } : { type: "Response", status: "success" }));
  }

  /** Told if it can still hear it, then cut: nothing more is queued for it, so its buffer stops growing here. */
  function dropSlow(c: Client): void {
    c.dropping = true;
    dropped++;
    logger.warn({ buffered: c.ws.bufferedAmount }, "/ws/v0 client dropped: it did not read its events fast enough (slow consumer)");
    c.ws.send(JSON.stringify({ type: "Error", reason: "slow consumer" }));
    c.ws.close(CLOSE_TRY_AGAIN_LATER, "slow consumer");
    setTimeout(() => c.ws.terminate(), 1000).unref();
  }

  function eventMessage(e: SequencedEvent): string {
    let text = serialised.get(e);
    if (text === undefined) {
      text = JSON.stringify({ type: MESSAGE_TYPES[e.kind], ...e });
      serialised.set(e, text);
    }
    return text;
  }

  async function subscribe(c: Client, since: number | undefined): Promise<void> {
    c.unsubscribe?.();
    c.unsubscribe = undefined;
    let end: () => void;
    try {
      end = await feed.subscribe(
        {
          deployments: c.deployments,
          deliver: (e) => {
            if (e.seq <= c.lastSeq) return;
            c.lastSeq = e.seq;
            send(c, eventMessage(e));
          },
        },
        since,
      );
    } catch (err) {
      // The catch-up could not be read (the database is away): the client comes back with `since`.
      logger.warn({ err: errorMessage(err) }, "/ws/v0 client closed: the events it missed could not be read");
      send(c, JSON.stringify({ type: "Error", reason: "the events could not be read; reconnect with since" }));
      c.ws.close(CLOSE_INTERNAL_ERROR, "events unavailable");
      return;
    }
    if (c.closed) end();
    else c.unsubscribe = end;
  }

  function refuse(c: Client, errors: string[]): void {
    reply(c, errors);
    c.ws.close(CLOSE_POLICY, errors[0]!.slice(0, 120));
  }

  async function handle(c: Client, data: RawData, isBinary: boolean): Promise<void> {
    let message: Record<string, unknown> | undefined;
    try {
      const parsed: unknown = isBinary ? undefined : JSON.parse(data.toString());
      if (parsed && typeof parsed === "object" && !Array.isArray(parsed)) message = parsed as Record<string, unknown>;
    } catch {
      message = undefined;
    }
    if (!c.authenticated) {
      if (message?.type !== "AuthenticationRequest") return refuse(c, ["authenticate first: the first message must be {\"type\": \"AuthenticationRequest\", \"token\": \"...\"}"]);
      const since = message.since;
      if (since !== undefined && !(typeof since === "number" && Number.isSafeInteger(since) && since >= 0)) return refuse(c, ["since must be the sequence number (a whole number, 0 or more) of the last event seen"]);
      if (typeof message.token !== "string" || !tokenMatches(message.token, expected)) {
        logger.warn("/ws/v0 authentication failed: wrong token");
        return refuse(c, ["invalid token"]);
      }
      c.authenticated = true;
      clearTimeout(c.authTimer);
      reply(c);
      const from = since === undefined ? undefined : Math.min(since, feed.last);
      c.lastSeq = from ?? feed.last;
      return subscribe(c, from);
    }
    if (message?.type === "Subscribe") {
      const list = message.deployments;
      if (!Array.isArray(list) || list.some((d) => typeof d !== "string" || !DEPLOYMENT_NAME.test(d))) return reply(c, ["deployments must be a list of deployment names"]);
      const unknown = (list as string[]).filter((d) => !known.has(d));
      if (unknown.length > 0) return reply(c, unknown.map((d) => `no deployment named ${d} is configured`));
      c.deployments = list.length === 0 ? undefined : new Set(list as string[]);
      reply(c);
      // Log lines of the deploys running now: from their start (as far as kept), then live.
      for (const run of runs.values()) {
        if (!c.deployments?.has(run.deployment)) continue;
        if (run.follower) for (const line of run.recent) send(c, line);
        else follow(run);
      }
      return subscribe(c, c.lastSeq);
    }
    if (message?.type === "AuthenticationRequest") return reply(c, ["already authenticated"]);
    return reply(c, [`unknown message${typeof message?.type === "string" ? ` type ${JSON.stringify(message.type.slice(0, 40))}` : ": expected a JSON object with a type"}`]);
  }

  function accept(ws: WebSocket): void {
    const c: Client = { ws, authenticated: false, deployments: undefined, lastSeq: 0, unsubscribe: undefined, chain: Promise.resolve(), alive: true, dropping: false, closed: false, authTimer: undefined };
    clients.add(c);
    c.authTimer = setTimeout(() => {
      if (!c.authenticated) refuse(c, [`no AuthenticationRequest within ${authTimeoutMs / 1000} s`]);
    }, authTimeoutMs);
    c.authTimer.unref();
    ws.on("pong", () => (c.alive = true));
    ws.on("message", (data, isBinary) => {
      c.chain = c.chain.then(() => handle(c, data, isBinary)).catch((err: unknown) => logger.warn({ err: errorMessage(err) }, "/ws/v0 message could not be handled"));
    });
    ws.on("error", (err) => logger.debug({ err: errorMessage(err) }, "/ws/v0 connection error"));
    ws.on("close", () => {
      c.closed = true;
      clearTimeout(c.authTimer);
      c.unsubscribe?.();
      clients.delete(c);
    });
  }

  return {
    get connections() {
      return clients.size;
    },
    get slowConsumersDropped() {
      return dropped;
    },
    close() {
      closing ??= (async () => {
        server.off("upgrade", onUpgrade);
        clearInterval(heartbeat);
        endRuns?.();
        for (const run of runs.values()) run.follower?.close();
        runs.clear();
        const closed = [...clients].map((c) => new Promise<void>((resolve) => (c.closed ? resolve() : c.ws.once("close", () => resolve()))));
        for (const c of clients) c.ws.close(CLOSE_GOING_AWAY, "deployq is shutting down");
        const timer = setTimeout(() => {
          for (const c of clients) c.ws.terminate();
        }, 1000);
        await Promise.all(closed);
        clearTimeout(timer);
      })();
      return closing;
    },
  };
}

/** /ws/v0 when DEPLOYQ_ADMIN_TOKEN is set; otherwise off, which the log says at start. */
export function startLiveStreamIfConfigured(settings: Settings, server: Server, feed: EventFeed, logger: Logger): LiveStream | undefined {
  const token = settings.secrets.adminToken;
  if (!token) {
    logger.info("/ws/v0 is off: set DEPLOYQ_ADMIN_TOKEN to stream events to `deployq watch` and other clients");
    return undefined;
  }
  const deployments = [...settings.deployments.keys()];
  return startLiveStream({ server, feed, token, publicOrigin: settings.publicUrl, dataDir: settings.dataDir, deployments, logger });
}
