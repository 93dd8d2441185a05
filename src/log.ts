import { pino, type Logger } from "pino";

/** Structured JSON logs on stdout (pm2 and journald keep them); DEPLOYQ_LOG_LEVEL sets the level. */
export function createLogger(env: NodeJS.ProcessEnv = process.env): Logger {
  return pino({ name: "deployq", level: env.DEPLOYQ_LOG_LEVEL ?? "info", base: { pid: process.pid } });
}

export function silentLogger(): Logger {
  return pino({ level: "silent" });
}
