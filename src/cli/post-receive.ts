import { randomUUID } from "node:crypto";
import { mkdir } from "node:fs/promises";
import { createInterface } from "node:readline";
import type { Settings } from "../config/load.ts";
import { DeployqError } from "../errors.ts";
import { pushPayload } from "../push-payload.ts";
import { seedEntryClock } from "../queue/entry-clock.ts";
import { entryName } from "../queue/entry-name.ts";
import { queueLayout } from "../queue/layout.ts";
import { writeEntryDurably } from "../queue/write.ts";
import { type RouteDecision, routeEvent } from "../queue/route.ts";

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
  // The hook runs as whoever pushed (git, say), under that user's umask, often 077, and the
  // daemon reads its entries through a group they share: keep the group's bits, so that
  // entries are 0640 and directories 0770 as asked (nothing for others either way).
  process.umask(0o007);
  try {
    // Only what the hook writes to; a directory it creates lets the daemon's group remove entries from it.
    for (const dir of [layout.tmp, layout.router]) await mkdir(dir, { recursive: true, mode: 0o770 });
    await seedEntryClock(layout);
  } catch (err) {
    throw refused(err, layout.root);
  }
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
      }).catch((err: unknown) => {
        throw refused(err, layout.root);
      });
      outcome = { ref, queued: name, deployments: decision.deployments };
    }
    outcomes.push(outcome);
    report(outcome);
  }
  return outcomes;
}

/** A queue root the hook's user may not write to: say which user, and what the operator does about it. */
function refused(err: unknown, root: string): unknown {
  const code = (err as NodeJS.ErrnoException).code;
  if (code !== "EACCES" && code !== "EPERM") return err;
  return new DeployqError(
    "CONFIG",
    `this hook runs as uid ${process.getuid?.() ?? "?"}, which may not read and write the queue root ${root} (${(err as Error).message}): ` +
      "add that user to the daemon's group, and make the root's .tmp/ and router/ writable by that group and setgid (chmod 2770); " +
      'see "git push to a bare repository" in deployq\'s README',
    { cause: err },
  );
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
