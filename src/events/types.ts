/**
 * Everything deployq does that someone may want to see, as one stream of events: emitted
 * where it happens (receiver, router, deployment workers, locks), counted by /metrics,
 * recorded in the `events` table, and pushed to the dashboard and /ws/v0 clients.
 * Strings from a push (refs, reasons that quote them, errors) are untrusted: whoever
 * shows them escapes them.
 */

/** How a deploy ended, as recorded in `deploys.status` (and `rolled-back`: it failed after its switch and the previous release was restored). */
export type DeployOutcomeName = "succeeded" | "failed" | "superseded" | "rolled-back" | "already-deployed" | "interrupted" | "retrying" | "cancelled";

/**
 * The steps of a deploy, by kind: bounded, so that they can label metrics and be compared
 * across deploys (the step's own title, with its sha or path, is `title`).
 */
export const STEP_KINDS = ["fetch", "checkout", "build", "switch", "restart", "health-check", "nginx", "prune", "rollback", "resume", "rollout"] as const;
export type StepKind = (typeof STEP_KINDS)[number];

export type DeliveryEvent = {
  kind: "delivery";
  deliveryId: string;
  hookId?: string | undefined;
  event?: string | undefined;
  repository?: string | undefined;
  ref?: string | undefined;
  entry?: string | undefined;
} & (
  | { name: "received"; deployments: string[] }
  | { name: "duplicate" }
  | { name: "voided"; reason: string }
  | { name: "routed"; deployments: string[] }
  | { name: "dead-lettered"; reason: string }
);

export type DeployEvent = {
  kind: "deploy";
  deployment: string;
  entry?: string | undefined;
  deployId?: number | undefined;
} & (
  | { name: "queued"; sha?: string | undefined }
  | { name: "started"; attempt: number; sha?: string | undefined; ref?: string | undefined; logPath: string }
  | { name: "step-started"; step: StepKind; title: string }
  | { name: "step-finished"; step: StepKind; title: string; durationMs: number; ok: boolean; exitCode?: number | undefined }
  | { name: "paused"; reason: string; by: string; until?: string | undefined }
  | { name: "resumed" }
  /** A push held until its required checks pass (require_checks): `pending` are those not successful yet. */
  | { name: "waiting-for-checks"; sha: string; pending: string[]; since: string }
  | { name: "finished"; outcome: DeployOutcomeName; durationMs: number; sha?: string | undefined; release?: string | undefined; error?: string | undefined; supersededBy?: string | undefined; nextAttemptAt?: string | undefined }
);

export type LockEvent = {
  kind: "lock";
  lock: string;
  deployment?: string | undefined;
} & ({ name: "waiting" } | { name: "acquired"; waitedMs: number } | { name: "lost"; error: string } | { name: "released"; heldMs: number });

export type DeployqEvent = DeliveryEvent | DeployEvent | LockEvent;

/** An event as emitted: stamped with the time (ISO 8601) and the process (pid, host name) that emitted it. */
export type StampedEvent = DeployqEvent & { at: string; pid: number; host: string };
