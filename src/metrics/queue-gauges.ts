import type { Deployment } from "../config/load.ts";
import { parseEntryName } from "../queue/entry-name.ts";
import { type QueueLayout, ROUTER } from "../queue/layout.ts";
import { queueSummary } from "../queue/scan.ts";
import { currentRelease, deploymentPaths } from "../steps/release.ts";

export interface QueueGauges {
  /** router/ and each configured deployment's queue. */
  queues: Array<{ queue: string; entries: number; oldestAgeSeconds: number }>;
  /** dead-letter/router/ and each configured deployment's. */
  deadLetters: Array<{ queue: string; entries: number }>;
  /** The release `current` points at, for the deployments that have one (releases strategy). */
  releases: Array<{ deployment: string; release: string }>;
}

/**
 * What the queue directories and `current` links hold now. Names only: no entry is read,
 * and an entry's age comes from the epoch its name starts with (the time the receiver
 * named it). A directory that cannot be read counts as empty rather than failing the scrape.
 */
export async function readQueueGauges(layout: QueueLayout, deployments: readonly Deployment[], now = Date.now()): Promise<QueueGauges> {
  const names = [ROUTER, ...deployments.map((d) => d.name)];
  const scan = (dir: string) => queueSummary(dir).catch(() => ({ entries: 0, oldest: undefined }));
  const [queues, deadLetters, releases] = await Promise.all([
    Promise.all(
      names.map(async (queue) => {
        const summary = await scan(queue === ROUTER ? layout.router : layout.deployment(queue));
        const oldest = summary.oldest ? parseEntryName(summary.oldest)?.epochMs : undefined;
        return { queue, entries: summary.entries, oldestAgeSeconds: oldest === undefined ? 0 : Math.max(0, now - oldest) / 1000 };
      }),
    ),
    Promise.all(names.map(async (queue) => ({ queue, entries: (await scan(layout.deadLetter(queue))).entries }))),
    Promise.all(
      deployments
        .filter((d) => d.strategy === "releases")
        .map(async (d) => ({ deployment: d.name, release: await currentRelease(deploymentPaths(d.path)).catch(() => undefined) })),
    ),
  ]);
  return { queues, deadLetters, releases: releases.filter((r): r is { deployment: string; release: string } => r.release !== undefined) };
}
