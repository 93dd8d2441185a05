import { loadSettings } from "../config/load.ts";
import { type Role, startDaemon } from "../daemon.ts";
import { type LogFormat, createLogger } from "../log.ts";
import { installShutdownLadder } from "../signals.ts";

/** The secret the README's quickstart exports: public already, so the printed next step may show it. */
export const QUICKSTART_SECRET = "dev-secret";

export interface DaemonOptions {
  configPath: string | undefined;
  /** --port as typed (validated by loadSettings); wins over DEPLOYQ_PORT and [server] port. */
  port?: string | undefined;
  watch: boolean;
  /** --log-format (or DEPLOYQ_LOG_FORMAT); undefined: pretty on a terminal, JSON lines otherwise. */
  logFormat?: LogFormat | undefined;
}

export async function runDaemon(role: Role, options: DaemonOptions): Promise<void> {
  const { configPath } = options;
  const settings = loadSettings({ configPath, port: options.port });
  const logger = createLogger({ format: options.logFormat });
  // pm2 (wait_ready in ecosystem.config.cjs): started. The receiver listens (it answers 503
  // while the database is not reached yet, rather than be restarted in a loop); the workers
  // have scanned their queues.
  let told = false;
  const ready = () => {
    if (!told && process.send) process.send("ready");
    told = true;
  };
  const abort = new AbortController();
  const starting = startDaemon({ settings, role, logger, watch: options.watch, signal: abort.signal, onListening: ready });
  // Signals are handled from the start: one that arrives while starting stops the wait for
  // the database, or drains once started.
  installShutdownLadder(() => {
    abort.abort();
    return starting.then(
      (d) => d.close(),
      () => {},
    );
  }, logger);
  let daemon;
  try {
    daemon = await starting;
  } catch (err) {
    if (abort.signal.aborted) return; // stopped while waiting; the shutdown ladder ends the process
    throw err;
  }
  ready();
  if (daemon.url) {
    const cfg = process.env.DEPLOYQ_CONFIG || configPath ? ` --config ${settings.configPath}` : "";
    // send-test-delivery posts to the configured port: name the real one when it came from elsewhere.
    const url = options.port !== undefined || process.env.DEPLOYQ_PORT || settings.port === 0 ? ` --url ${daemon.url}/github-webhook` : "";
    process.stderr.write(
      `\ndeployq ${role} listening on ${daemon.url} (webhook: POST ${daemon.url}/github-webhook)\n` +
        `queues: ${settings.queuesDir}   database: ${daemon.database.describe}\n` +
        `send it a signed test delivery from another terminal, with the same secret:\n` +
        `  ${secretAssignment(settings.secrets.webhookSecrets, process.stderr.isTTY)} npx deployq send-test-delivery${cfg}${url}\n` +
        `then look at the queues:  npx deployq queue ls${cfg}\n\n`,
    );
  }
}

/**
 * `GITHUB_WEBHOOK_SECRET=<value>` for the printed next step. The value is shown only on a
 * terminal and only when it is the quickstart's public one: a real secret printed here would
 * stay in scrollback and terminal logs, and without a terminal (pm2, systemd) in log files that
 * others read. Otherwise "…" stands for it.
 */
export function secretAssignment(secrets: readonly string[], terminal: boolean): string {
  const shown = terminal && secrets.length === 1 && secrets[0] === QUICKSTART_SECRET;
  return `GITHUB_WEBHOOK_SECRET=${shown ? QUICKSTART_SECRET : "…"}`;
}
