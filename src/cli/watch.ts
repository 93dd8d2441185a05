import { readFile, readdir } from "node:fs/promises";
import path from "node:path";
import { WebSocket } from "ws";
import type { Settings } from "../config/load.ts";
import { findDaemon } from "../daemon.ts";
import { DeployqError, errorMessage } from "../errors.ts";
import { TerminalText } from "../exec/terminal-text.ts";
import { WS_PATH } from "../http/ws.ts";

/** A message from /ws/v0 (docs/ws-protocol.md). */
export type LiveMessage = Record<string, unknown> & { type: string };

const RECONNECT_MS = 1000;

/** Strings from a push (refs, errors that quote them, build output) may hold terminal controls: never print them raw. */
export function plain(value: unknown): string {
  const text = new TerminalText();
  return (text.push(String(value)) + text.end()).replace(/\s*\n\s*/g, " ").replace(/\t/g, " ");
}

/**
 * Where /ws/v0 is: --url (http(s) or ws(s), its path is replaced), else the daemon that
 * announced itself in the data directory (its port may have been picked by the system),
 * else the configured host and port.
 */
export async function liveUrl(settings: Settings, given: string | undefined): Promise<string> {
  let base: URL | undefined;
  if (given !== undefined) {
    try {
      base = new URL(given);
    } catch {
      base = undefined;
    }
    if (!base || !["http:", "https:", "ws:", "wss:"].includes(base.protocol)) {
      throw new DeployqError("CONFIG", `--url must be the daemon's address, such as http://127.0.0.1:${settings.port}, got ${JSON.stringify(given)}`);
    }
  } else {
    const announced = await announcedUrl(settings.dataDir);
    const host = settings.host === "0.0.0.0" ? "127.0.0.1" : settings.host === "::" ? "[::1]" : settings.host.includes(":") ? `[${settings.host}]` : settings.host;
    base = new URL(announced ?? `http://${host}:${settings.port}`);
  }
  base.protocol = base.protocol === "https:" || base.protocol === "wss:" ? "wss:" : "ws:";
  base.pathname = WS_PATH;
  base.search = "";
  return base.toString();
}

async function announcedUrl(dataDir: string): Promise<string | undefined> {
  let names: string[];
  try {
    names = await readdir(path.join(dataDir, "run"));
  } catch {
    return undefined;
  }
  for (const name of names) {
    const pid = Number(/^(\d+)\.json$/.exec(name)?.[1]);
    if (!pid) continue;
    try {
      process.kill(pid, 0);
    } catch {
      continue; // an announcement its process did not live to take back
    }
    const info = await findDaemon(dataDir, pid);
    if (info && info.role !== "workers") return info.url;
  }
  return undefined;
}

export interface LiveOptions {
  url: string;
  token: string;
  /** Narrow to these deployments (and get their log lines). */
  deployments?: string[];
  onMessage(message: LiveMessage): void;
  /** Authenticated (and subscribed): the stream runs from here on. */
  onReady?(): void;
  /** Told when the connection is lost and made again (the stream resumes from the last sequence number seen). */
  onReconnect?(reason: string): void;
}

export function adminToken(settings: Settings): string {
  const token = settings.secrets.adminToken;
  if (!token) {
    throw new DeployqError("CONFIG", "DEPLOYQ_ADMIN_TOKEN is not set: export the token the daemon was started with (its /ws/v0 is off without one)");
  }
  return token;
}

/**
 * Follows /ws/v0 until `stop()`: authenticates, subscribes, hands on each message and,
 * when the connection is lost, connects again with the last sequence number seen, so that
 * nothing is missed (within the server's history). Rejects when the daemon refuses (a
 * wrong token, /ws/v0 off, nothing listening at first).
 */
export function followLiveStream(options: LiveOptions): { stop(): void; done: Promise<void> } {
  let lastSeq: number | undefined;
  let current: WebSocket | undefined;
  let stopped = false;
  let everOpen = false;
  let resolveDone!: () => void;
  let rejectDone!: (err: unknown) => void;
  const done = new Promise<void>((resolve, reject) => {
    resolveDone = resolve;
    rejectDone = reject;
  });

  const connect = () => {
    const ws = new WebSocket(options.url, { handshakeTimeout: 10_000 });
    current = ws;
    let authenticated = false;
    let refused: DeployqError | undefined;
    let pendingResponses = 0;
    ws.on("unexpected-response", (_req, res) => {
      res.resume();
      refused = new DeployqError(
        "UNAVAILABLE",
        res.statusCode === 404
          ? `/ws/v0 is off at ${options.url} (404): start the daemon with DEPLOYQ_ADMIN_TOKEN set`
          : `the daemon refused the connection to ${options.url} (${res.statusCode}${res.statusCode === 503 ? ": it is starting or stopping" : ""})`,
      );
      ws.terminate();
    });
    ws.on("open", () => {
      everOpen = true;
      ws.send(JSON.stringify({ type: "AuthenticationRequest", token: options.token, ...(lastSeq === undefined ? {} : { since: lastSeq }) }));
    });
    ws.on("message", (data) => {
      let message: LiveMessage;
      try {
        message = JSON.parse(data.toString()) as LiveMessage;
      } catch {
        return;
      }
      if (message.type === "Response" && !authenticated) {
        if (message.status !== "success") {
          refused = new DeployqError("CONFIG", `/ws/v0 refused the authentication: ${plain((message.errors as unknown[] | undefined)?.join("; ") ?? "no reason")} (check DEPLOYQ_ADMIN_TOKEN)`);
          return;
        }
        authenticated = true;
        if (options.deployments && options.deployments.length > 0) {
          pendingResponses++;
          ws.send(JSON.stringify({ type: "Subscribe", deployments: options.deployments }));
        } else options.onReady?.();
        return;
      }
      if (message.type === "Response" && pendingResponses > 0) {
        pendingResponses--;
        if (message.status !== "success") refused = new DeployqError("CONFIG", `/ws/v0 refused the subscription: ${plain((message.errors as unknown[] | undefined)?.join("; ") ?? "no reason")}`);
        if (refused) ws.close();
        else options.onReady?.();
        return;
      }
      if (typeof message.seq === "number") lastSeq = message.seq;
      options.onMessage(message);
    });
    ws.on("error", (err) => {
      if (!everOpen && !refused) {
        const code = (err as { code?: string }).code;
        refused = new DeployqError(
          "UNAVAILABLE",
          code === "ECONNREFUSED" ? `nothing is listening at ${options.url}: start the daemon (\`deployq serve\`, or \`deployq receiver\`), or pass --url where it listens` : `could not reach ${options.url}: ${errorMessage(err)}`,
        );
      }
    });
    ws.on("close", (code, reason) => {
      current = undefined;
      if (stopped) return resolveDone();
      if (refused) return rejectDone(refused);
      if (code === 1008) return rejectDone(new DeployqError("CONFIG", `/ws/v0 closed the connection: ${plain(reason.toString())}`));
      options.onReconnect?.(`${code}${reason.length > 0 ? ` ${plain(reason.toString())}` : ""}`);
      setTimeout(connect, RECONNECT_MS).unref();
    });
  };
  connect();
  // Keeps the process alive while reconnecting (the timer is unref'd).
  const keepAlive = setInterval(() => {}, 60_000);
  void done.finally(() => clearInterval(keepAlive)).catch(() => {});
  return {
    stop() {
      stopped = true;
      if (current) current.close(1000);
      else resolveDone();
    },
    done,
  };
}

const time = (at: unknown) => (typeof at === "string" ? new Date(at).toLocaleTimeString("en-GB", { hour12: false }) : "--:--:--");
const seconds = (ms: unknown) => (typeof ms === "number" ? `${(ms / 1000).toFixed(1)}s` : "?");

/** One line for people: time, deployment, what happened, outcome, duration. */
export function describeEvent(m: LiveMessage): string | undefined {
  const deployment = typeof m.deployment === "string" ? m.deployment : "-";
  const head = `${time(m.at)}  ${plain(deployment).padEnd(12)}`;
  if (m.type === "DeployEvent") {
    const id = `deploy ${m.deployId ?? "?"}`;
    const sha = typeof m.sha === "string" ? ` ${m.sha.slice(0, 7)}` : "";
    switch (m.name) {
      case "queued":
        return `${head}  queued${sha}`;
      case "started":
        return `${head}  ${id} started (attempt ${plain(m.attempt)}${m.ref ? `, ${plain(String(m.ref).replace(/^refs\/heads\//, ""))}` : ""}${sha})`;
      case "step-started":
        return `${head}  ${id} ${plain(m.step)}: ${plain(m.title)}`;
      case "step-finished":
        return `${head}  ${id} ${plain(m.step)} ${m.ok ? "ok" : `failed${m.exitCode === undefined ? "" : ` (exit ${plain(m.exitCode)})`}`} in ${seconds(m.durationMs)}`;
      case "finished":
        return (
          `${head}  ${id} ${plain(m.outcome)}${sha} in ${seconds(m.durationMs)}` +
          (m.release ? ` (releases/${plain(m.release)})` : "") +
          (m.error ? `: ${plain(m.error).slice(0, 300)}` : "") +
          (m.nextAttemptAt ? `; next attempt at ${time(m.nextAttemptAt)}` : "")
        );
    }
  }
  if (m.type === "DeliveryEvent") {
    const what = `delivery ${plain(String(m.deliveryId).slice(0, 8))} ${plain(m.name)}`;
    const where = [m.event, m.repository, typeof m.ref === "string" ? m.ref.replace(/^refs\/heads\//, "") : undefined].filter((x) => x !== undefined).map(plain).join(" ");
    const list = Array.isArray(m.deployments) ? ` → ${m.deployments.length > 0 ? m.deployments.map(plain).join(", ") : "nothing"}` : "";
    const reason = m.reason ? `: ${plain(m.reason).slice(0, 300)}` : "";
    return `${head}  ${what}${where ? ` (${where})` : ""}${list}${reason}`;
  }
  if (m.type === "LockEvent") {
    const extra = m.name === "acquired" ? ` after ${seconds(m.waitedMs)}` : m.name === "released" ? ` after ${seconds(m.heldMs)}` : m.name === "lost" ? `: ${plain(m.error)}` : "";
    return `${head}  lock ${plain(m.lock)} ${plain(m.name)}${extra}`;
  }
  if (m.type === "Error") return `${time(new Date().toISOString())}  -             the daemon says: ${plain(m.reason)}`;
  return undefined;
}

/** `deployq watch [deployment]`: the events, live, one line each (or JSON lines), until interrupted. */
export async function watchCommand(settings: Settings, deployment: string | undefined, options: { url?: string; json: boolean }): Promise<void> {
  if (deployment !== undefined && !settings.deployments.has(deployment)) {
    throw new DeployqError("CONFIG", `no deployment named ${JSON.stringify(deployment)} in ${settings.configPath} (configured: ${[...settings.deployments.keys()].join(", ") || "none"})`);
  }
  const url = await liveUrl(settings, options.url);
  const live = followLiveStream({
    url,
    token: adminToken(settings),
    deployments: deployment === undefined ? undefined : [deployment],
    onMessage: (m) => {
      if (m.type === "LogLine" || m.type === "LogEnd") return; // `deployq logs -f` shows those
      if (options.json) return void process.stdout.write(`${JSON.stringify(m)}\n`);
      const line = describeEvent(m);
      if (line) process.stdout.write(`${line}\n`);
    },
    onReady: () => process.stderr.write(`deployq: watching ${url}${deployment === undefined ? "" : ` (${deployment})`}\n`),
    onReconnect: (reason) => process.stderr.write(`deployq: the connection to ${url} was lost (${reason}); reconnecting\n`),
  });
  stopOnSignals(live);
  await live.done;
}

export function stopOnSignals(live: { stop(): void }): void {
  const stop = () => live.stop();
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);
}

/** The newest deploy log of a deployment on this host (deployq logs without -f). */
export async function newestLog(dataDir: string, deployment: string): Promise<string | undefined> {
  const dir = path.join(dataDir, "logs", deployment);
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return undefined;
  }
  const ids = names.map((n) => Number(/^(\d+)\.log$/.exec(n)?.[1])).filter((n) => n > 0);
  if (ids.length === 0) return undefined;
  return readFile(path.join(dir, `${Math.max(...ids)}.log`), "utf8");
}
