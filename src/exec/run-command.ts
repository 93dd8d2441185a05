import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { readdir } from "node:fs/promises";
import type { Writable } from "node:stream";
import { execa } from "execa";
import { ExecError } from "./exec-error.ts";
import { liveGroupMembers } from "./proc.ts";
import { isProcessAlive } from "../pid-lock.ts";

/**
 * The one way deployq runs a program: an argv array (never a shell), a clean environment
 * (nothing of the daemon's own leaks in by accident), its own process group (so a timeout
 * or a shutdown kills the build and everything it started), its output appended to the
 * deploy's log, and an ExecError that keeps the exit code, signal and the tail of stderr.
 */
export interface RunOptions {
  cwd: string;
  /** Added to the base environment (PATH, HOME, locale). */
  env?: Record<string, string>;
  timeoutMs?: number;
  /** Aborting kills the process group: SIGTERM, then SIGKILL after `killAfterMs`. */
  signal?: AbortSignal;
  killAfterMs?: number;
  /** Where stdout and stderr go (the deploy log); also gets a header and the exit line. */
  log?: Writable;
  /** Standard input; none by default (a command that prompts gets EOF, not a hang). */
  input?: string;
  /**
   * Holds the command's pid (= its process group) while it runs, so that after a crash
   * of deployq the next start can kill what the dead process left running.
   */
  pidFile?: string;
}

export interface RunResult {
  stdout: string;
  durationMs: number;
}

const PASSED_THROUGH = ["PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR", "SSH_AUTH_SOCK", "PM2_HOME"];
const TAIL_BYTES = 4096;
const STDOUT_KEEP = 1024 * 1024;

export function baseEnv(from: NodeJS.ProcessEnv = process.env): Record<string, string> {
  const env: Record<string, string> = {};
  for (const key of PASSED_THROUGH) {
    const value = from[key];
    if (value !== undefined) env[key] = value;
  }
  env.PATH ??= "/usr/local/bin:/usr/bin:/bin";
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

export function formatArgv(argv: readonly string[]): string {
  return argv.map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replaceAll("'", `'\\''`)}'`)).join(" ");
}

export async function runCommand(argv: readonly string[], options: RunOptions): Promise<RunResult> {
  const [file, ...args] = argv;
  if (!file) throw new TypeError("runCommand needs at least a program name");
  const started = performance.now();
  const shown = formatArgv(argv);
  options.log?.write(`$ ${shown}   (in ${options.cwd})\n`);
  if (options.signal?.aborted) {
    throw new ExecError(argv, undefined, undefined, "", "aborted", `${shown} was not started: the deploy was cancelled (shutdown, or the deployment lock was lost)`);
  }
  const child = execa(file, args, {
    cwd: options.cwd,
    env: { ...baseEnv(), ...options.env },
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
  if (options.input !== undefined) child.stdin?.end(options.input);
  const pid = child.pid;
  if (pid !== undefined) {
    running.add(pid);
    if (options.pidFile) writeFileSync(options.pidFile, `${pid}\n`);
  }

  let stdout = "";
  let stderrTail = "";
  child.stdout?.on("data", (chunk: Buffer) => {
    options.log?.write(chunk);
    if (stdout.length < STDOUT_KEEP) stdout += chunk.toString();
  });
  child.stderr?.on("data", (chunk: Buffer) => {
    options.log?.write(chunk);
    stderrTail = (stderrTail + chunk.toString()).slice(-TAIL_BYTES);
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

  const result = await child;
  if (timer) clearTimeout(timer);
  if (killTimer) clearTimeout(killTimer);
  options.signal?.removeEventListener("abort", onAbort);
  if (pid !== undefined) {
    // Whatever the command left behind in its group goes with it.
    killGroup(pid, "SIGKILL");
    running.delete(pid);
    if (options.pidFile) rmSync(options.pidFile, { force: true });
  }
  const durationMs = Math.round(performance.now() - started);
  const exitCode = result.exitCode;
  const signal = result.signal;
  if (result.failed && exitCode === undefined && signal === undefined && !reason) {
    const message = `${shown} could not be started: ${result.originalMessage ?? result.shortMessage}`;
    options.log?.write(`→ ${message}\n`);
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
    options.log?.write(`→ ${how} (${durationMs} ms)\n`);
    const tail = stderrTail.trim().split("\n").slice(-10).join("\n");
    throw new ExecError(argv, exitCode, signal ?? undefined, tail, reason ?? "exit", `${shown} ${how}${tail ? `:\n${tail}` : ""}`);
  }
  options.log?.write(`→ exit 0 (${durationMs} ms)\n`);
  return { stdout, durationMs };
}

/**
 * Kills the process groups recorded by `<name>.<owner pid>.command.pid` files in `dir`
 * whose owner (a deployq process) no longer runs, and waits until they are gone: the
 * caller then removes what they were writing, which a command still dying could recreate.
 * Returns the group ids it killed, and any process still alive 10 s after (a process in
 * uninterruptible sleep, e.g. on a hung NFS mount, dies only when that ends).
 */
export async function killLeftoverCommands(dir: string, name: string): Promise<{ killed: number[]; alive: number[] }> {
  const killed: number[] = [];
  // Deployment names are letters, digits, - and _: nothing to escape.
  const pattern = new RegExp(`^${name}\\.(\\d+)\\.command\\.pid$`);
  for (const file of await readdir(dir).catch(() => [] as string[])) {
    const owner = Number(pattern.exec(file)?.[1]);
    if (!owner || (owner !== process.pid && isProcessAlive(owner))) continue;
    const full = `${dir}/${file}`;
    let pid: number;
    try {
      pid = Number.parseInt(readFileSync(full, "utf8"), 10);
    } catch {
      continue;
    }
    rmSync(full, { force: true });
    if (!Number.isInteger(pid) || pid <= 1 || running.has(pid)) continue;
    try {
      process.kill(-pid, "SIGKILL");
      killed.push(pid);
    } catch {
      // already gone
    }
  }
  const alive: number[] = [];
  for (const pid of killed) alive.push(...(await groupGone(pid)));
  return { killed, alive };
}

/** SIGKILL is delivered asynchronously: poll /proc until no live process is left in the group; returns those left at the timeout. */
async function groupGone(pgrp: number, timeoutMs = 10_000): Promise<number[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const left = await liveGroupMembers(pgrp);
    if (left.length === 0 || Date.now() > deadline) return left;
    await new Promise((r) => setTimeout(r, 10));
  }
}

