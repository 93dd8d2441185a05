import type { Deployment, Settings } from "../config/load.ts";
import { DeployqError } from "../errors.ts";
import { type QueueRef, allQueues, resolveQueue } from "../queue/admin.ts";
import { ROUTER, queueLayout } from "../queue/layout.ts";

/**
 * What a CLI command is given as a deployment or queue name, checked the same way by every
 * command before it reads or queues anything: a deployment must be configured; a queue
 * must be router, a configured deployment, a deployment queue still on disk, or the
 * dead-letter queue of one of those.
 */
export function configuredDeployment(settings: Settings, name: string): Deployment {
  const d = settings.deployments.get(name);
  if (d) return d;
  const names = [...settings.deployments.keys()];
  throw new DeployqError(
    "BAD_REQUEST",
    `no deployment ${JSON.stringify(name)} in ${settings.configPath}: ${names.length > 0 ? `the configured ones are ${names.join(", ")}` : "it configures none"} (\`deployq status\` lists them)`,
  );
}

export async function existingQueue(settings: Settings, spec: string): Promise<QueueRef> {
  const layout = queueLayout(settings.queuesDir);
  const queue = resolveQueue(layout, spec);
  const configured = [...settings.deployments.keys()];
  const known = new Set((await allQueues(layout, configured)).map((q) => q.label));
  for (const name of [ROUTER, ...configured]) known.add(`dead-letter/${name}`);
  if (!known.has(queue.label)) {
    throw new DeployqError(
      "BAD_REQUEST",
      `there is no queue ${JSON.stringify(spec)}: the queues are ${[...known].sort().join(", ")} (\`deployq queue ls\` shows their sizes)`,
    );
  }
  return queue;
}
