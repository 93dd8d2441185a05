import { constants as fsConstants } from "node:fs";
import { open, readFile, readdir, readlink } from "node:fs/promises";
import http from "node:http";
import https from "node:https";
import path from "node:path";
import type { NginxHost } from "../../config/schema.ts";
import { DeployqError, errorMessage } from "../../errors.ts";
import { readProcStat } from "../../exec/proc.ts";
import type { CommandContext } from "../command-context.ts";

// Verifying a reload. Processes: did the master apply a configuration? Then the verify
// URLs, and nginx's error log for its reason when it did not.

const POLL_MS = 50;

export class VerifyFailure extends Error {}

/** The nginx master's pid from the pid file; fails if it cannot be read or names no running nginx. */
export async function readMaster(pidFile: string): Promise<number> {
  let text: string;
  try {
    text = await readFile(pidFile, "utf8");
  } catch (err) {
    throw new DeployqError("DEPLOY", `cannot read nginx's pid file ${pidFile} (${errorMessage(err)}): is nginx running? (set [nginx] pid_file if it writes another one)`);
  }
  const pid = Number.parseInt(text.trim(), 10);
  if (!Number.isInteger(pid) || pid <= 1 || String(pid) !== text.trim()) throw new DeployqError("DEPLOY", `nginx's pid file ${pidFile} holds ${JSON.stringify(text.trim())}, not a pid`);
  const st = await readProcStat(pid);
  if (!st || st.state === "Z") throw new DeployqError("DEPLOY", `nginx's pid file ${pidFile} names pid ${pid}, which is not running: is nginx running?`);
  const cmdline = await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => undefined);
  if (cmdline !== undefined && cmdline !== "" && !cmdline.includes("nginx")) {
    throw new DeployqError("DEPLOY", `nginx's pid file ${pidFile} names pid ${pid}, which is not nginx (${cmdline.replaceAll("\0", " ").trim()}): a stale pid file?`);
  }
  return pid;
}

/** `pid:starttime` of each live child of `pid`. */
async function childrenOf(pid: number): Promise<Set<string>> {
  const found = new Set<string>();
  let pids: string[] | undefined;
  try {
    const tasks = await readdir(`/proc/${pid}/task`);
    const lists = await Promise.all(tasks.map((t) => readFile(`/proc/${pid}/task/${t}/children`, "utf8")));
    pids = lists.join(" ").split(/\s+/).filter(Boolean);
  } catch {
    pids = undefined; // no CONFIG_PROC_CHILDREN: scan every process's parent
  }
  if (pids) {
    for (const child of pids) {
      const st = await readProcStat(child);
      if (st && st.ppid === pid && st.state !== "Z") found.add(`${child}:${st.starttime}`);
    }
    return found;
  }
  for (const name of await readdir("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    const st = await readProcStat(name);
    if (st && st.ppid === pid && st.state !== "Z") found.add(`${name}:${st.starttime}`);
  }
  return found;
}

interface Snapshot {
  master: number;
  children: Set<string>;
  at: number;
}

export async function snapshot(pidFile: string): Promise<Snapshot> {
  const master = await readMaster(pidFile);
  return { master, children: await childrenOf(master), at: Date.now() };
}

/**
 * Waits until nginx applied a configuration after `before`: its master runs a child that
 * was not there (nginx starts new workers only once it has read a configuration and opened
 * its sockets; a failed reload keeps the old workers and logs why), or the pid file names
 * another running master. Old workers finishing their connections do not matter. Then each
 * verify URL must answer below 500. One deadline, verify_timeout_s after the reload.
 */
export async function verifyReload(host: NginxHost, before: Snapshot, urls: Array<[string, string]>, ctx: CommandContext): Promise<void> {
  const timeoutMs = host.verify_timeout_s * 1000;
  const deadline = Date.now() + timeoutMs;
  let lastProblem = "";
  for (;;) {
    if (ctx.signal?.aborted) throw new VerifyFailure("the deploy was cancelled while nginx's reload was being verified");
    try {
      const master = await readMaster(host.pid_file);
      const children = await childrenOf(master);
      if (master !== before.master ? children.size > 0 : [...children].some((c) => !before.children.has(c))) break;
      lastProblem = "";
    } catch (err) {
      lastProblem = ` (${errorMessage(err)})`;
    }
    if (Date.now() >= deadline) {
      const logLines = await errorLogLines(before.master, before.at);
      throw new VerifyFailure(
        `the reload did not take effect: nginx's master (pid ${before.master}) started no new worker within ${host.verify_timeout_s} s${lastProblem}, ` +
          `so it still runs its previous configuration (nginx -t passes, but the configuration could not be applied, e.g. a listen port already in use). ` +
          (logLines.length > 0 ? `nginx's error log says:\n${logLines.join("\n")}` : "See nginx's error log for its reason."),
      );
    }
    await sleep(POLL_MS);
  }
  ctx.log.write(`nginx: the reload took effect (new workers)\n`);
  // Also without verify URLs: once the deploy says done, requests reach the new configuration.
  await oldWorkersStopAccepting(before, deadline, ctx);
  for (const [site, url] of urls) {
    let last = "";
    for (;;) {
      if (ctx.signal?.aborted) throw new VerifyFailure("the deploy was cancelled while the verify URLs were polled");
      const remaining = deadline - Date.now();
      const answer = await probe(url, Math.max(250, Math.min(5000, remaining)));
      if (typeof answer === "number" && answer < 500) {
        ctx.log.write(`nginx: verify ${site}: ${url} answered ${answer}\n`);
        break;
      }
      last = typeof answer === "number" ? `status ${answer}` : answer;
      if (Date.now() >= deadline) {
        throw new VerifyFailure(`site ${site}'s verify URL ${url} did not answer with a status below 500 within ${host.verify_timeout_s} s of the reload (last: ${last})`);
      }
      await sleep(Math.min(200, Math.max(0, deadline - Date.now())));
    }
  }
}

/**
 * For a few milliseconds after the new workers start, the old ones still accept connections
 * (with the old configuration) until they get the master's QUIT: a verify URL could be
 * answered by them. An old worker retitles itself "worker process is shutting down" just
 * before it closes its listening sockets; it may then take long to finish its connections,
 * which does not matter. Waits until each old child is gone or says so (at most until the
 * deadline; then the URLs are polled anyway, with a note in the log).
 */
async function oldWorkersStopAccepting(before: Snapshot, deadline: number, ctx: CommandContext): Promise<void> {
  for (;;) {
    let accepting = 0;
    for (const key of before.children) {
      const [pid, starttime] = key.split(":");
      const st = await readProcStat(pid!);
      if (!st || st.state === "Z" || st.starttime !== starttime) continue;
      const title = await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => undefined);
      if (title === undefined) return; // not ours to read: nothing to wait for
      if (title !== "" && !title.includes("shutting down")) accepting++;
    }
    if (accepting === 0) return;
    if (Date.now() >= deadline || ctx.signal?.aborted) {
      ctx.log.write(`nginx: note: ${accepting} old worker(s) of nginx did not start shutting down; the verify URLs may be answered by the previous configuration\n`);
      return;
    }
    await sleep(10);
  }
}

/** GET on a fresh connection (a pooled one could reach an old worker); the status, or why there was none. TLS is not verified: only whether nginx answers. */
function probe(url: string, timeoutMs: number): Promise<number | string> {
  return new Promise((resolve) => {
    let done = false;
    const finish = (value: number | string) => {
      if (done) return;
      done = true;
      resolve(value);
    };
    let req: http.ClientRequest;
    try {
      const u = new URL(url);
      const options = { method: "GET", agent: false as const, timeout: timeoutMs, headers: { "user-agent": "deployq-verify", connection: "close" } };
      req = u.protocol === "https:" ? https.request(u, { ...options, rejectUnauthorized: false }) : http.request(u, options);
    } catch (err) {
      finish(errorMessage(err));
      return;
    }
    req.on("response", (res) => {
      finish(res.statusCode ?? 0);
      res.resume();
      req.destroy();
    });
    req.on("timeout", () => {
      finish(`no answer within ${timeoutMs} ms`);
      req.destroy();
    });
    req.on("error", (err) => finish(errorMessage(err)));
    req.end();
  });
}

const LOG_LINE = /^(\d{4})\/(\d{2})\/(\d{2}) (\d{2}):(\d{2}):(\d{2}) \[(emerg|alert|crit|error)\] /;

/**
 * nginx's own reason for a failed reload, best effort: [emerg]/[alert]/[crit] lines logged
 * since `since` in the error logs the master has open (readable when deployq may look at
 * the master's file descriptors), else in /var/log/nginx/error.log if readable.
 */
async function errorLogLines(master: number, since: number): Promise<string[]> {
  const candidates = new Set<string>();
  try {
    for (const fd of await readdir(`/proc/${master}/fd`)) {
      const target = await readlink(`/proc/${master}/fd/${fd}`).catch(() => "");
      if (target.startsWith("/") && /error[^/]*$/.test(path.basename(target))) candidates.add(target);
    }
  } catch {
    // not ours to look at
  }
  if (candidates.size === 0) candidates.add("/var/log/nginx/error.log");
  const lines: string[] = [];
  for (const file of candidates) {
    try {
      const fh = await open(file, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK);
      try {
        const { size } = await fh.stat();
        const length = Math.min(size, 64 * 1024);
        const buffer = Buffer.alloc(length);
        await fh.read(buffer, 0, length, size - length);
        for (const line of buffer.toString("utf8").split("\n")) {
          const m = LOG_LINE.exec(line);
          if (!m || m[7] === "error") continue;
          const at = new Date(Number(m[1]), Number(m[2]) - 1, Number(m[3]), Number(m[4]), Number(m[5]), Number(m[6])).getTime();
          if (at >= since - 1000) lines.push(line.trim());
        }
      } finally {
        await fh.close();
      }
    } catch {
      // unreadable: the generic message stands
    }
  }
  // nginx tries bind() five times: one line per distinct message (time and pid aside), with a count.
  const counts = new Map<string, { line: string; count: number }>();
  for (const line of lines) {
    const key = line.replace(/^\S+ \S+ \[(\w+)\] \d+#\d+: /, "$1 ");
    const seen = counts.get(key);
    if (seen) seen.count++;
    else counts.set(key, { line, count: 1 });
  }
  return [...counts.values()].slice(-10).map(({ line, count }) => (count > 1 ? `${line} (${count} times)` : line));
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
