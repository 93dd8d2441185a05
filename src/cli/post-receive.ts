import { randomUUID } from "node:crypto";
import { createInterface } from "node:readline";
import type { Settings } from "../config/load.ts";
import { DeployqError } from "../errors.ts";
import { pushPayload } from "../push-payload.ts";
import { seedEntryClock } from "../queue/entry-clock.ts";
import { entryName } from "../queue/entry-name.ts";
import { queueLayout } from "../queue/layout.ts";
import { ensureQueueDirs, writeEntryDurably } from "../queue/write.ts";
import { type RouteDecision, routeEvent } from "../workers/match.ts";

const LINE = /^([0-9a-f]{40}|[0-9a-f]{64}) ([0-9a-f]{40}|[0-9a-f]{64}) (refs\/\S+)$/;
const REPOSITORY = /^[A-Za-z0-9_.-]+\/[A-Za-z0-9_.-]+$/;

export type PostReceiveOutcome =
  | { ref: string; queued: string; deployments: string[] }
  | { ref: string; queued: undefined; decision: Extract<RouteDecision, { kind: "void" }> };

/**
 * For a bare repository's hooks/post-receive: reads git's "<old> <new> <ref>" lines from
 * stdin and queues each ref a deployment follows as a push event in router/, exactly as the
 * receiver would; a ref nothing follows (a tag, another branch, a deletion) gets no entry,
 * decided by the router's own matching. `report` hears each outcome as it happens (the
 * pusher reads them as "remote:" lines).
 */
export async function postReceive(
  settings: Settings,
  repository: string,
  report: (outcome: PostReceiveOutcome) => void,
  input: NodeJS.ReadableStream = process.stdin,
): Promise<PostReceiveOutcome[]> {
  if (!REPOSITORY.test(repository)) throw new DeployqError("CONFIG", `--repository must be "owner/name", got ${JSON.stringify(repository)}`);
  const layout = queueLayout(settings.queuesDir);
  await ensureQueueDirs(layout);
  await seedEntryClock(layout);
  const deployments = [...settings.deployments.values()];
  const outcomes: PostReceiveOutcome[] = [];
  for await (const raw of createInterface({ input })) {
    const line = raw.trim();
    if (line === "") continue;
    const m = LINE.exec(line);
    if (!m) throw new DeployqError("ENTRY", `not a post-receive line ("<old-sha> <new-sha> <ref>"): ${JSON.stringify(line.slice(0, 200))}`);
    const [, before, after, ref] = m as unknown as [string, string, string, string];
    const event = { event: "push", payload: pushPayload({ repository, ref, before, after, deleted: /^0+$/.test(after) }) };
    const decision = routeEvent(event, deployments);
    let outcome: PostReceiveOutcome;
    if (decision.kind === "void") {
      outcome = { ref, queued: undefined, decision };
    } else {
      const deliveryId = randomUUID();
      const name = entryName(deliveryId);
      await writeEntryDurably(layout, layout.router, name, {
        ...event,
        delivery_id: deliveryId,
        hook_id: "",
        received_at: new Date().toISOString(),
        source: "post-receive",
      });
      outcome = { ref, queued: name, deployments: decision.deployments };
    }
    outcomes.push(outcome);
    report(outcome);
  }
  return outcomes;
}

/**
 * What the pusher reads. A ref nothing follows gets the classic hook's words,
 * "Ref <ref> received. Doing nothing: only <branch> may be deployed on this server.",
 * when the repository's deployments follow other branches; otherwise the reason.
 */
export function describePostReceive(outcome: PostReceiveOutcome): string {
  if (outcome.queued !== undefined) return `deployq: queued ${outcome.queued} for ${outcome.deployments.join(", ")}`;
  const { code, reason, followed } = outcome.decision;
  const otherRef = code === "tag" || code === "unfollowed" || code === "not-a-branch";
  const why = otherRef && followed.length > 0 ? `only ${orList(followed)} may be deployed on this server` : reason;
  return `Ref ${outcome.ref} received. Doing nothing: ${why}.`;
}

/** "main", "main or deploy-*", "main, staging or deploy-*". */
function orList(items: string[]): string {
  return items.length === 1 ? items[0]! : `${items.slice(0, -1).join(", ")} or ${items.at(-1)!}`;
}
