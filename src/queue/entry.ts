import { z } from "zod";
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
});
export type QueueEntry = z.infer<typeof QueueEntry>;

export function serializeEntry(entry: QueueEntry): string {
  return `${JSON.stringify(entry, null, 2)}\n`;
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
