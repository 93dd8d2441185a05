import { pino, type Logger } from "pino";

/** Structured JSON logs on stdout (pm2 and journald keep them); DEPLOYQ_LOG_LEVEL sets the level. */
export function createLogger(env: NodeJS.ProcessEnv = process.env): Logger {
  // Through process.stdout (synchronous for files, pipes and terminals on Linux), not pino's
  // default of writing to fd 1 directly: pm2's cluster mode captures an instance's output by
  // wrapping process.stdout.write (lib/ProcessContainer.js), so fd 1 would bypass its log files.
  return pino({ name: "deployq", level: env.DEPLOYQ_LOG_LEVEL ?? "info", base: { pid: process.pid } }, process.stdout);
}

export function silentLogger(): Logger {
  return pino({ level: "silent" });
}
