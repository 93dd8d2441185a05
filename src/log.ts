import { pino, type DestinationStream, type Logger } from "pino";
import { isColorSupported, prettyFactory } from "pino-pretty";

export const LOG_FORMATS = ["json", "pretty"] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];

export interface LoggerOptions {
  env?: NodeJS.ProcessEnv;
  /** `--log-format` (or DEPLOYQ_LOG_FORMAT); undefined: pretty when stdout is a terminal, JSON lines otherwise. */
  format?: LogFormat | undefined;
  /** Whether stdout is a terminal (process.stdout.isTTY by default). */
  tty?: boolean;
}

/**
 * deployq's own log on stdout: JSON lines for pm2 and journald (the default when stdout is
 * not a terminal), or lines for people in a terminal. DEPLOYQ_LOG_LEVEL sets the level.
 * Pretty lines are formatted in this thread and written synchronously (pino-pretty's
 * prettyFactory, not a transport's worker thread), so the lines logged right before an
 * exit (the shutdown ladder re-raises the signal) are never lost.
 */
export function createLogger(options: LoggerOptions = {}): Logger {
  // Through process.stdout (synchronous for files, pipes and terminals on Linux), not pino's
  // default of writing to fd 1 directly: pm2's cluster mode captures an instance's output by
  // wrapping process.stdout.write (lib/ProcessContainer.js), so fd 1 would bypass its log files.
  const env = options.env ?? process.env;
  const settings = { name: "deployq", level: env.DEPLOYQ_LOG_LEVEL ?? "info", base: { pid: process.pid } };
  const tty = options.tty ?? process.stdout.isTTY === true;
  if ((options.format ?? (tty ? "pretty" : "json")) === "json") return pino(settings, process.stdout);
  return pino(settings, prettyStream(process.stdout, tty && isColorSupported));
}

/** Each JSON line pino writes, pretty-printed into `out` (colours only for a terminal that has them). */
export function prettyStream(out: { write(text: string): unknown }, colorize: boolean): DestinationStream {
  const prettify = prettyFactory({ colorize, translateTime: "SYS:yyyy-mm-dd HH:MM:ss.l", ignore: "hostname" });
  return { write: (line: string) => void out.write(prettify(line)) };
}

export function silentLogger(): Logger {
  return pino({ level: "silent" });
}
