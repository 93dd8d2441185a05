import { z } from "zod";
import { errorMessage } from "../errors.ts";
import { DELIVERY_ID } from "./entry-name.ts";

/**
 * One queue entry, as admins read it with cat and jq. The same file (same name) travels
 * from router/ to each deployment queue, and to dead-letter/ with its error.
 */
export const QueueEntry = z.looseObject({
  event: z.string().min(1),
  delivery_id: z.string().regex(DELIVERY_ID, "must be a GUID"),
  hook_id: z.string(),
  received_at: z.string(),
  /** Who put it there: the receiver, a post-receive hook, an admin's test delivery. */
  source: z.string().optional(),
  payload: z.unknown(),
  attempts: z.number().int().optional(),
  last_error: z.string().optional(),
  failed_at: z.string().optional(),
  /** A transient failure is retried no earlier than this (ISO time). */
  retry_at: z.string().optional(),
  /**
   * Set by a bulk `deployq queue requeue` on all but the newest entry it puts back into a
   * deployment's queue (the entry that wins): the worker records these as superseded, as
   * it does for the older pushes of a burst, and deploys none of them.
   */
  superseded_by: z.string().optional(),
  /**
   * How many times `deployq queue requeue` has put it back. An entry's turn in a deployment
   * ends with one final row; a copy that has had more turns than it was requeued (a router
   * killed between handing it over and removing it from router/ hands it over again) is a
   * duplicate, and the worker drops it.
   */
  requeues: z.number().int().nonnegative().optional(),
  /**
   * A push held until the checks its deployment requires have succeeded on its commit
   * (`require_checks`): since when, the checks not successful yet at the last look, and
   * how many looks there were. Its next look is at `retry_at`, or sooner when a check
   * event for its commit arrives.
   */
  checks_waiting: z
    .object({ since: z.string(), pending: z.array(z.string()), polls: z.number().int().nonnegative() })
    .optional(),
  /**
   * The fleet rollout (its id in the shared database) that this host's follower took this
   * entry from: its deploy switches only when the rollout lets it (src/fleet/rolling.ts).
   */
  rollout: z.number().int().positive().optional(),
});
export type QueueEntry = z.infer<typeof QueueEntry>;

/**
 * Entries are pretty-printed for admins who `cat` them, unless that would make the file
 * grow out of proportion: indentation multiplies a deeply nested body (a 65 KB array of
 * arrays pretty-printed to 269 MB), so such an entry is written compact instead (jq still
 * reads it). An entry is at most about four times its compact size.
 */
export function serializeEntry(entry: QueueEntry): string {
  const compact = JSON.stringify(entry);
  const pretty = JSON.stringify(entry, null, 2);
  return pretty.length <= compact.length * 4 + 64 * 1024 ? `${pretty}\n` : `${compact}\n`;
}

/** Deeper than any real webhook body (GitHub's are under ten levels): refused, since serializing it recursively could overflow the stack. */
export const MAX_PAYLOAD_DEPTH = 256;

/** Whether a parsed JSON value nests deeper than `limit` (counted without recursion). */
export function nestsDeeperThan(value: unknown, limit: number): boolean {
  const stack: Array<[unknown, number]> = [[value, 1]];
  while (stack.length > 0) {
    const [v, depth] = stack.pop()!;
    if (depth > limit) return true;
    for (const child of Object.values(v as object)) if (typeof child === "object" && child !== null) stack.push([child, depth + 1]);
  }
  return false;
}

/** The fields of a push payload the rest of deployq reads, each checked for type. */
export interface PushSummary {
  repository: string | undefined;
  ref: string | undefined;
  after: string | undefined;
  deleted: boolean;
}

export function summarizePayload(payload: unknown): PushSummary {
  const p = (typeof payload === "object" && payload !== null ? payload : {}) as Record<string, unknown>;
  const repo = (typeof p.repository === "object" && p.repository !== null ? p.repository : {}) as Record<string, unknown>;
  return {
    repository: typeof repo.full_name === "string" ? repo.full_name : undefined,
    ref: typeof p.ref === "string" ? p.ref : undefined,
    after: typeof p.after === "string" ? p.after : undefined,
    deleted: p.deleted === true,
  };
}

type ParsedEntry = { ok: true; entry: QueueEntry } | { ok: false; error: string; json: Record<string, unknown> | undefined };

/** An entry file's text as an entry, or why not (in words of its own: never quoting the text, which may be anything). */
export function parseEntry(text: string): ParsedEntry {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    // V8's message quotes the text around the error; keep only where it is.
    const at = /position (\d+)/.exec(errorMessage(err))?.[1];
    return { ok: false, error: `not valid JSON (${text.length} bytes${at ? `, first error at byte ${at}` : ""})`, json: undefined };
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    return { ok: false, error: "not a JSON object", json: undefined };
  }
  const result = QueueEntry.safeParse(json);
  if (!result.success) {
    const problems = result.error.issues.map((i) => `${i.path.join(".") || "(entry)"}: ${i.message}`).join("; ");
    return { ok: false, error: `not a deployq entry: ${problems}`, json: json as Record<string, unknown> };
  }
  return { ok: true, entry: result.data };
}
