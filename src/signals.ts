import type { Logger } from "pino";
import { killAllCommands } from "./exec/run-command.ts";

/**
 * The shutdown ladder: the first SIGINT/SIGTERM drains (stop accepting, let the current
 * step finish, close everything), a second one forces an immediate exit, and once the
 * drain is done the process re-raises the signal on itself so that its exit status
 * tells pm2 and systemd how it ended.
 */
export function installShutdownLadder(drain: () => Promise<void>, logger: Logger): () => void {
  const signals: NodeJS.Signals[] = ["SIGINT", "SIGTERM"];
  let received = 0;
  const onSignal = (signal: NodeJS.Signals) => {
    received++;
    if (received > 1) {
      logger.warn({ signal }, "second signal: stopping now; interrupted entries stay in their queues");
      // Commands run in process groups of their own: they would outlive us.
      killAllCommands("SIGKILL");
      process.exit(1);
    }
    logger.info({ signal }, "draining: no new work is taken; send the signal again to stop at once");
    drain().then(
      () => {
        remove();
        process.kill(process.pid, signal);
      },
      (err: unknown) => {
        logger.error({ err }, "shutdown failed");
        process.exit(1);
      },
    );
  };
  const remove = () => signals.forEach((s) => process.off(s, onSignal));
  signals.forEach((s) => process.on(s, onSignal));
  return remove;
}
