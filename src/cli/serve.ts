import { loadSettings } from "../config/load.ts";
import { type Role, startDaemon } from "../daemon.ts";
import { type LogFormat, createLogger } from "../log.ts";
import { installShutdownLadder } from "../signals.ts";

export async function runDaemon(role: Role, configPath: string | undefined, watch: boolean, logFormat?: LogFormat): Promise<void> {
  const settings = loadSettings({ configPath });
  const logger = createLogger({ format: logFormat });
  const starting = startDaemon({ settings, role, logger, watch });
  // Signals are handled from the start: one that arrives while starting drains once started.
  installShutdownLadder(() => starting.then((d) => d.close()), logger);
  const daemon = await starting;
  // pm2 (wait_ready in ecosystem.config.cjs): started. The receiver listens, the workers have scanned their queues.
  if (process.send) process.send("ready");
  if (daemon.url) {
    const cfg = process.env.DEPLOYQ_CONFIG || configPath ? ` --config ${settings.configPath}` : "";
    process.stderr.write(
      `\ndeployq ${role} listening on ${daemon.url} (webhook: POST ${daemon.url}/github-webhook)\n` +
        `queues: ${settings.queuesDir}   database: ${daemon.database.describe}\n` +
        `send it a signed test delivery from another terminal, with the same GITHUB_WEBHOOK_SECRET:\n` +
        `  npx deployq send-test-delivery${cfg}\n` +
        `then look at the queues:  npx deployq queue ls${cfg}\n\n`,
    );
  }
}
