import type { Writable } from "node:stream";
import type { RunOptions } from "../exec/run-command.ts";

/** What a step needs to run its commands the way a deploy runs them (see exec/run-command.ts). */
export interface CommandContext {
  /** The deploy's log: every command line and its output go here. */
  log: Writable;
  /** Aborted on shutdown or when the deployment lock is lost; absent for work that must finish (restoring). */
  signal?: AbortSignal | undefined;
  /** Each command is killed after this long. */
  timeoutMs: number;
  /** Where the running command's pid is kept (killed at the next start if deployq dies). */
  pidFile?: string | undefined;
}

/** runCommand's options for a command of this step, run in `cwd`: its log, timeout, cancellation and pid file. */
export function runOptions(ctx: CommandContext, cwd: string, env?: Record<string, string>): RunOptions {
  return {
    cwd,
    log: ctx.log,
    timeoutMs: ctx.timeoutMs,
    ...(env ? { env } : {}),
    ...(ctx.signal ? { signal: ctx.signal } : {}),
    ...(ctx.pidFile ? { pidFile: ctx.pidFile } : {}),
  };
}
