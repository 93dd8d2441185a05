import { randomUUID } from "node:crypto";
import { createInterface } from "node:readline";
import type { Settings } from "../config/load.ts";
import { DeployqError } from "../errors.ts";
import { pushPayload } from "../push-payload.ts";
import { seedEntryClock } from "../queue/entry-clock.ts";
import { entryName } from "../queue/entry-name.ts";
import { queueLayout } from "../queue/layout.ts";
import { ensureQueueDirs, writeEntryDurably } from "../queue/write.ts";

const LINE = /^([0-9a-f]{40}|[0-9a-f]{64}) ([0-9a-f]{40}|[0-9a-f]{64}) (refs\/\S+)$/;
const REPOSITORY = /^[A-Za-z0-9_.-]+\/[A-Za-z0-9_.-]+$/;

/**
 * For a bare repository's hooks/post-receive: reads git's "<old> <new> <ref>" lines from
 * stdin and queues each as a push event in router/, exactly as the receiver would.
 */
export async function postReceive(settings: Settings, repository: string, input: NodeJS.ReadableStream = process.stdin): Promise<string[]> {
  if (!REPOSITORY.test(repository)) throw new DeployqError("CONFIG", `--repository must be "owner/name", got ${JSON.stringify(repository)}`);
  const layout = queueLayout(settings.queuesDir);
  await ensureQueueDirs(layout);
  await seedEntryClock(layout);
  const queued: string[] = [];
  for await (const raw of createInterface({ input })) {
    const line = raw.trim();
    if (line === "") continue;
    const m = LINE.exec(line);
    if (!m) throw new DeployqError("ENTRY", `not a post-receive line ("<old-sha> <new-sha> <ref>"): ${JSON.stringify(line.slice(0, 200))}`);
    const [, before, after, ref] = m as unknown as [string, string, string, string];
    const deliveryId = randomUUID();
    const name = entryName(deliveryId);
    await writeEntryDurably(layout, layout.router, name, {
      event: "push",
      delivery_id: deliveryId,
      hook_id: "",
      received_at: new Date().toISOString(),
      source: "post-receive",
      payload: pushPayload({ repository, ref, before, after, deleted: /^0+$/.test(after) }),
    });
    queued.push(name);
  }
  return queued;
}
