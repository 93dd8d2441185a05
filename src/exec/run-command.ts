import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { readFileSync, readlinkSync, rmSync, writeFileSync } from "node:fs";
import { readFile, readdir, readlink } from "node:fs/promises";
import type { Socket } from "node:net";
import type { Readable, Writable } from "node:stream";
import { execa } from "execa";
import { ExecError } from "./exec-error.ts";
import { liveGroupMembers, readCmdline, readProcStat } from "./proc.ts";
import { TerminalText } from "./terminal-text.ts";
import { isProcessAlive } from "../pid-lock.ts";

/**
 * The one way deployq runs a program: an argv array (never a shell), a clean environment
 * (nothing of the daemon's own leaks in by accident), its own process group (so a timeout
 * or a shutdown kills the build and everything it started), its output appended to the
 * deploy's log as text for people (terminal escapes and progress-bar rewrites removed, see
 * terminal-text.ts), and an ExecError that keeps the exit code, signal and the tail of stderr.
 *
 * What a command leaves in its process group once it exits on its own: a build command
 * (and any other) gets it stopped (SIGTERM, then SIGKILL after `killAfterMs`), named in the
 * log; a restart script (`leaveRunning`) that exits 0 keeps it, since starting a server is
 * its job (`nohup python3 manage.py runserver &`). A timeout or a cancel kills the whole
 * group either way.
 */
export interface RunOptions {
  cwd: string;
  /** Added to the base environment (PATH, HOME, locale, NO_COLOR). */
  env?: Record<string, string>;
  timeoutMs?: number;
  /** Aborting kills the process group: SIGTERM, then SIGKILL after `killAfterMs`. */
  signal?: AbortSignal;
  killAfterMs?: number;
  /** Where stdout and stderr go (the deploy log); also gets a header and the exit line. */
  log?: Writable;
  /** false: stdout is only returned, not logged (a helper's output for deployq itself); stderr still is. */
  logStdout?: boolean;
  /** Standard input; none by default (a command that prompts gets EOF, not a hang). */
  input?: string;
  /**
   * Holds the command's pid (= its process group) while it runs, so that after a crash
   * of deployq the next start can kill what the dead process left running. Removed once
   * the command is done, so that what a restart script left running is not killed then.
   * Written before the spawn with a token the command gets in its environment
   * (DEPLOYQ_COMMAND_ID), and the pid added once known: a deployq killed in between
   * leaves a command found by that token.
   */
  pidFile?: string;
  /** A restart script: after it exits 0, the processes it started are left running. */
  leaveRunning?: boolean;
}

export interface RunResult {
  stdout: string;
  durationMs: number;
}

/** The environment variable that carries a command's token (see RunOptions.pidFile). */
const COMMAND_ID = "DEPLOYQ_COMMAND_ID";
const PASSED_THROUGH = ["PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR", "SSH_AUTH_SOCK", "PM2_HOME"];
const TAIL_BYTES = 4096;
const STDOUT_KEEP = 1024 * 1024;
/**
 * Once nothing of a command's process group is left, its pipes close at once; a process
 * that escaped the group (setsid) and inherited them would keep them open, as does a
 * restart script's server that outputLinks could not tell apart (the script exited at
 * once). Past this, their output is no longer logged, so that the deploy goes on.
 */
const ESCAPED_PIPE_MS = 5000;

/**
 * The environment every command starts from. NO_COLOR (https://no-color.org) and
 * FORCE_COLOR=0 (chalk, supports-color, Node's own util.inspect) ask programs for plain
 * text: their output is a log file (a deployment's `env` may set them otherwise).
 */
export function baseEnv(from: NodeJS.ProcessEnv = process.env): Record<string, string> {
  const env: Record<string, string> = {};
  for (const key of PASSED_THROUGH) {
    const value = from[key];
    if (value !== undefined) env[key] = value;
  }
  env.PATH ??= "/usr/local/bin:/usr/bin:/bin";
  env.NO_COLOR = "1";
  env.FORCE_COLOR = "0";
  return env;
}

/** Process groups of commands still running, so a forced exit can take them down too. */
const running = new Set<number>();

export function killAllCommands(signal: NodeJS.Signals = "SIGKILL"): void {
  for (const pid of running) killGroup(pid, signal);
}

function killGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    // already gone
  }
}

/** Whether any process is left in the group: signal 0 checks without sending anything, and spares a scan of /proc after most commands. */
function groupExists(pgrp: number): boolean {
  try {
    process.kill(-pgrp, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

export function formatArgv(argv: readonly string[]): string {
  return argv.map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replaceAll("'", `'\\''`)}'`)).join(" ");
}

export async function runCommand(argv: readonly string[], options: RunOptions): Promise<RunResult> {
  const [file, ...args] = argv;
  if (!file) throw new TypeError("runCommand needs at least a program name");
  const started = performance.now();
  const shown = formatArgv(argv);
  const log = options.log;
  log?.write(`$ ${shown}   (in ${options.cwd})\n`);
  if (options.signal?.aborted) {
    throw new ExecError(argv, undefined, undefined, "", "aborted", `${shown} was not started: the deploy was cancelled (shutdown, or the deployment lock was lost)`);
  }
  const token = options.pidFile ? randomUUID() : undefined;
  if (options.pidFile) writeFileSync(options.pidFile, `${token}\n`);
  const child = execa(file, args, {
    cwd: options.cwd,
    env: { ...baseEnv(), ...options.env, ...(token ? { [COMMAND_ID]: token } : {}) },
    extendEnv: false,
    detached: true,
    buffer: false,
    reject: false,
    stdin: options.input === undefined ? "ignore" : "pipe",
    stdout: "pipe",
    stderr: "pipe",
    // Timeouts and cancellation are ours: they kill the whole process group.
    cleanup: true,
  });
  // A restart script may leave a server holding its output: these tell which one (read at once, while the script runs).
  const links = options.leaveRunning && child.pid !== undefined ? outputLinks(child.pid) : [];
  // Settles once the process has exited (true), or could not be started (false), before its pipes close.
  const exited = new Promise<boolean>((resolve) => {
    child.once("exit", () => resolve(true));
    void child.then(() => resolve(false));
  });
  if (options.input !== undefined) child.stdin?.end(options.input);
  const pid = child.pid;
  if (pid !== undefined) {
    running.add(pid);
    if (options.pidFile) writeFileSync(options.pidFile, `${token}\n${pid}\n`);
  } else if (options.pidFile) {
    rmSync(options.pidFile, { force: true });
  }

  let stdout = "";
  let stderrTail = "";
  /** Once set, output is read but no longer logged (a process left running still writes to the pipe). */
  let detached = false;
  const outText = new TerminalText();
  const errText = new TerminalText();
  const toLog = (text: string) => {
    if (text && !detached) log?.write(text);
  };
  const logStdout = options.logStdout ?? true;
  child.stdout?.on("data", (chunk: Buffer) => {
    if (logStdout) toLog(outText.push(chunk));
    if (stdout.length < STDOUT_KEEP && !detached) stdout += chunk.toString();
  });
  child.stderr?.on("data", (chunk: Buffer) => {
    toLog(errText.push(chunk));
    if (!detached) stderrTail = (stderrTail + chunk.toString()).slice(-TAIL_BYTES);
  });

  let reason: "timeout" | "aborted" | undefined;
  let killTimer: NodeJS.Timeout | undefined;
  const stop = (why: "timeout" | "aborted") => {
    if (reason || pid === undefined) return;
    reason = why;
    killGroup(pid, "SIGTERM");
    killTimer = setTimeout(() => killGroup(pid, "SIGKILL"), options.killAfterMs ?? 5000);
  };
  const timer = options.timeoutMs ? setTimeout(() => stop("timeout"), options.timeoutMs) : undefined;
  const onAbort = () => stop("aborted");
  options.signal?.addEventListener("abort", onAbort, { once: true });

  const spawned = await exited;
  if (timer) clearTimeout(timer);
  options.signal?.removeEventListener("abort", onAbort);
  const exitCode = spawned ? (child.exitCode ?? undefined) : undefined;
  const signal = spawned ? (child.signalCode ?? undefined) : undefined;
  // What a restart script that exited 0 left running is no leftover of a crash: the pid file goes first.
  if (options.pidFile && options.leaveRunning && !reason && exitCode === 0) rmSync(options.pidFile, { force: true });
  const detach = (why: string) => {
    detached = true;
    for (const stream of [child.stdout, child.stderr]) {
      if (!stream) continue;
      // Read on without holding deployq's event loop, until a drain of its own has the pipe.
      (stream as Socket).unref();
      handOver(stream);
    }
    log?.write(`(${why}: what it writes from now on is not logged; redirect its output to a file, e.g. \`nohup server >server.log 2>&1 &\`)\n`);
  };
  if (pid !== undefined) {
    let holders: string[] = [];
    if (reason) {
      // Timed out or cancelled: what is left of the group had its SIGTERM; SIGKILL once killAfterMs is over.
      if ((await groupGone(pid, options.killAfterMs ?? 5000)).length > 0) {
        killGroup(pid, "SIGKILL");
        await groupGone(pid);
      }
    } else {
      const left = groupExists(pid) ? await liveGroupMembers(pid) : [];
      if (left.length > 0 && options.leaveRunning && exitCode === 0) {
        log?.write(`left running by ${shown}: ${(await describe(left)).join("; ")}\n`);
        holders = await holdingOutput(left, links);
      } else if (left.length > 0) {
        const hint = options.leaveRunning ? "A restart script keeps what it started only when it exits 0." : "Only the restart script may leave a server running.";
        await stopLeftovers(pid, await describe(left), shown, options.killAfterMs ?? 5000, log, hint);
      }
    }
    if (killTimer) clearTimeout(killTimer);
    running.delete(pid);
    if (options.pidFile) rmSync(options.pidFile, { force: true });
    // What the command wrote before it exited is in the pipe and read by now (the /proc reads above took several turns of the loop).
    if (holders.length > 0) {
      detach(`${holders.length === 1 ? "process" : "processes"} ${holders.join(", ")}, left running, ${holders.length === 1 ? "holds" : "hold"} this command's output open`);
    } else if (!(await endsWithin(child, ESCAPED_PIPE_MS))) {
      detach("a process left running, or one that left the command's process group (setsid), holds this command's output open");
    }
  }
  const result = detached ? undefined : await child;
  if (logStdout) toLog(outText.end());
  toLog(errText.end());
  detached = true;
  const durationMs = Math.round(performance.now() - started);
  if (result?.failed && exitCode === undefined && signal === undefined && !reason) {
    const message = `${shown} could not be started: ${result.originalMessage ?? result.shortMessage}`;
    log?.write(`→ ${message}\n`);
    throw new ExecError(argv, undefined, undefined, "", "spawn", message);
  }
  if (reason || exitCode !== 0) {
    const how =
      reason === "timeout"
        ? `timed out after ${options.timeoutMs} ms and was killed`
        : reason === "aborted"
          ? "was cancelled (shutdown, or the deployment lock was lost) and killed"
          : signal
            ? `was killed by ${signal}`
            : `exited with code ${exitCode}`;
    log?.write(`→ ${how} (${durationMs} ms)\n`);
    const tail = stderrTail.trim().split("\n").slice(-10).join("\n");
    throw new ExecError(argv, exitCode, signal, tail, reason ?? "exit", `${shown} ${how}${tail ? `:\n${tail}` : ""}`);
  }
  log?.write(`→ exit 0 (${durationMs} ms)\n`);
  return { stdout, durationMs };
}

/** Processes as "<pid> <command line>", for the log. */
async function describe(pids: number[]): Promise<string[]> {
  const described: string[] = [];
  for (const pid of pids) {
    const cmdline = await readCmdline(pid);
    described.push(`${pid} ${cmdline.length > 0 ? formatArgv(cmdline) : "(gone)"}`);
  }
  return described;
}

/**
 * What the command's stdout and stderr are, as /proc shows them ("socket:[<inode>]": Node's
 * pipes are socket pairs, whose two ends have inodes of their own, so this is read from the
 * command's side). Read right after the spawn, while the command runs; empty if it already exited.
 */
function outputLinks(pid: number): string[] {
  const links: string[] = [];
  for (const fd of [1, 2]) {
    try {
      links.push(readlinkSync(`/proc/${pid}/fd/${fd}`));
    } catch {
      return [];
    }
  }
  return links;
}

/** Which of `pids` hold the command's stdout or stderr open (`links` from outputLinks; empty: cannot tell, so none is named). */
async function holdingOutput(pids: number[], links: string[]): Promise<string[]> {
  if (links.length === 0) return [];
  const holders: string[] = [];
  for (const pid of pids) {
    const fds = await readdir(`/proc/${pid}/fd`).catch(() => [] as string[]);
    for (const fd of fds) {
      if (links.includes(await readlink(`/proc/${pid}/fd/${fd}`).catch(() => ""))) {
        holders.push(String(pid));
        break;
      }
    }
  }
  return holders;
}

/** A command that is done left processes behind: name them in the log, SIGTERM the group, SIGKILL what is left after `graceMs`. */
async function stopLeftovers(pgrp: number, left: string[], shown: string, graceMs: number, log: Writable | undefined, hint: string): Promise<void> {
  log?.write(
    `warning: ${shown} left ${left.length === 1 ? "a process" : `${left.length} processes`} running: ${left.join("; ")}; ` +
      `stopping ${left.length === 1 ? "it" : "them"} (SIGTERM, then SIGKILL after ${graceMs} ms). ${hint}\n`,
  );
  killGroup(pgrp, "SIGTERM");
  let alive = await groupGone(pgrp, graceMs);
  if (alive.length > 0) {
    killGroup(pgrp, "SIGKILL");
    alive = await groupGone(pgrp);
    if (alive.length > 0) log?.write(`warning: still alive after SIGKILL (uninterruptible sleep?): ${alive.join(", ")}\n`);
  }
}

/**
 * The read end of a pipe that a process left running still writes to goes to a `cat
 * >/dev/null` in a session of its own, which lives as long as that writer: were the pipe
 * closed (deployq stopped or restarted), the writer's next write would fail (EPIPE), and a
 * server that logs each request to stderr (Python's http.server, gunicorn by default) would
 * stop answering. Until `cat` runs, deployq goes on reading.
 */
function handOver(stream: Readable): void {
  try {
    const drain = spawn("cat", [], { stdio: [stream, "ignore", "ignore"], detached: true, env: { PATH: baseEnv().PATH! } });
    drain.once("spawn", () => stream.destroy());
    drain.once("error", () => {
      // No cat: deployq keeps reading (while it runs).
    });
    drain.unref();
  } catch {
    // As above.
  }
}

/** Whether `done` settles within `ms`. */
async function endsWithin(done: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
  try {
    return await Promise.race([done.then(() => true as const), late]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Kills the process groups recorded by `<name>.<owner pid>.command.pid` files in `dir`
 * whose owner (a deployq process) no longer runs, and waits until they are gone: the
 * caller then removes what they were writing, which a command still dying could recreate.
 * A file without a pid (its owner died between writing it and the spawn's return) names
 * the command by the token in its environment. Returns the group ids it killed, and any
 * process still alive 10 s after (a process in uninterruptible sleep, e.g. on a hung NFS
 * mount, dies only when that ends).
 */
export async function killLeftoverCommands(dir: string, name: string): Promise<{ killed: number[]; alive: number[] }> {
  const killed: number[] = [];
  // Deployment names are letters, digits, - and _: nothing to escape.
  const pattern = new RegExp(`^${name}\\.(\\d+)\\.command\\.pid$`);
  for (const file of await readdir(dir).catch(() => [] as string[])) {
    const owner = Number(pattern.exec(file)?.[1]);
    if (!owner || (owner !== process.pid && isProcessAlive(owner))) continue;
    const full = `${dir}/${file}`;
    let lines: string[];
    try {
      lines = readFileSync(full, "utf8").split("\n");
    } catch {
      continue;
    }
    rmSync(full, { force: true });
    const [token = "", recorded = ""] = lines;
    const groups = /^\d+$/.test(recorded) ? [Number(recorded)] : token ? await groupsWithToken(token) : [];
    for (const pid of groups) {
      if (!Number.isInteger(pid) || pid <= 1 || running.has(pid)) continue;
      try {
        process.kill(-pid, "SIGKILL");
        killed.push(pid);
      } catch {
        // already gone
      }
    }
  }
  const alive: number[] = [];
  for (const pid of killed) alive.push(...(await groupGone(pid)));
  return { killed, alive };
}

/** The process groups of the live processes whose environment holds `token` as DEPLOYQ_COMMAND_ID. */
async function groupsWithToken(token: string): Promise<number[]> {
  const wanted = `${COMMAND_ID}=${token}`;
  const groups = new Set<number>();
  for (const name of await readdir("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    const environ = await readFile(`/proc/${name}/environ`, "utf8").catch(() => "");
    if (!environ.split("\0").includes(wanted)) continue;
    const st = await readProcStat(name);
    if (st && st.state !== "Z") groups.add(st.pgrp);
  }
  return [...groups];
}

/** SIGKILL is delivered asynchronously: poll /proc until no live process is left in the group; returns those left at the timeout. */
async function groupGone(pgrp: number, timeoutMs = 10_000): Promise<number[]> {
  const deadline = Date.now() + timeoutMs;
  for (let pause = 10; ; pause = Math.min(pause * 2, 200)) {
    // kill(0) first: no /proc scan once the group is empty (zombies still count for it, hence the scan).
    const left = groupExists(pgrp) ? await liveGroupMembers(pgrp) : [];
    if (left.length === 0 || Date.now() > deadline) return left;
    await new Promise((r) => setTimeout(r, pause));
  }
}

