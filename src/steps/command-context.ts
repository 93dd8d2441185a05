import type { Writable } from "node:stream";

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
