import type { Logger } from "pino";
import type { Settings } from "../config/load.ts";
import type { Db } from "../db/client.ts";
import type { Events } from "../events/bus.ts";
import { GithubSender } from "../github/sender.ts";
import type { Metrics } from "../metrics/registry.ts";
import { DeploymentNotifier, notifyKey, sendNotification } from "./notify.ts";

export interface Notifications {
  /** Per deployment, what its worker writes to the outbox; absent for a deployment nobody listens to. */
  notifiers: ReadonlyMap<string, DeploymentNotifier>;
  /** For router/'s dead letters: the notifiers without a deployments list (absent: none). */
  router: DeploymentNotifier | undefined;
  close(): Promise<void>;
}

/**
 * [[notify]], in a process that runs the deployment workers: one outbox sender per
 * notifier (a lane of the outbox of its own: one notifier that is down holds up no other,
 * nor GitHub's statuses), woken by the events that follow each deploy's end.
 */
export function startNotifications(deps: { settings: Settings; db: Db; logger: Logger; events: Events; metrics: Metrics | undefined }): Notifications {
  const { settings, db, events, metrics } = deps;
  const logger = deps.logger.child({ component: "notify" });
  const notifiers = new Map<string, DeploymentNotifier>();
  for (const d of settings.deployments.values()) {
    const n = new DeploymentNotifier(settings, d);
    if (n.listened) notifiers.set(d.name, n);
  }
  const router = new DeploymentNotifier(settings, { name: "router", repository: "" });
  const senders = settings.notify.map(
    (notifier) =>
      new GithubSender({
        db,
        logger: logger.child({ notifier: notifier.name }),
        lane: {
          name: `notify:${notifier.name}`,
          key: notifyKey(notifier.name),
          to: `notifier ${notifier.name}`,
          kinds: { notify: { what: "notification", send: (row, signal) => sendNotification(notifier, row, signal, settings.github.timeoutMs) } },
        },
        onSend: (result) => metrics?.countNotification(notifier.name, result),
      }),
  );
  const unsubscribe = events.on((e) => {
    if (e.kind === "deploy" && e.name === "finished") for (const s of senders) s.wake();
  });
  for (const s of senders) s.start();
  return {
    notifiers,
    router: router.listened ? router : undefined,
    async close() {
      unsubscribe();
      await Promise.all(senders.map((s) => s.close()));
    },
  };
}
