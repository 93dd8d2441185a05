import type { CheckReading } from "./client.ts";

/**
 * The webhook events that say a check on a commit has moved: the receiver queues them for
 * the deployments of their repository that require checks, and a worker holding a push of
 * that commit looks at its checks again at once instead of at its next poll.
 */
export const CHECK_EVENTS: ReadonlySet<string> = new Set(["check_run", "check_suite", "workflow_run", "status"]);

const SHA = /^(?:[0-9a-f]{40}|[0-9a-f]{64})$/;

/** The commit a check event is about (undefined when the payload names none). */
export function checkEventSha(event: string, payload: unknown): string | undefined {
  const p = (typeof payload === "object" && payload !== null ? payload : {}) as Record<string, unknown>;
  const inner = (key: string) => (typeof p[key] === "object" && p[key] !== null ? (p[key] as Record<string, unknown>) : {});
  const sha = event === "status" ? p.sha : event === "check_run" ? inner("check_run").head_sha : event === "check_suite" ? inner("check_suite").head_sha : event === "workflow_run" ? inner("workflow_run").head_sha : undefined;
  return typeof sha === "string" && SHA.test(sha) ? sha : undefined;
}

export type ChecksVerdict =
  | { state: "passed" }
  | { state: "failed"; check: CheckReading }
  /** `pending`: the required names not successful yet (not reported at all, queued, running). */
  | { state: "pending"; pending: string[] };

/**
 * Whether a commit passed the checks a deployment requires. A name counts whether GitHub
 * shows it as a check run or a status context; one that failed in either fails the
 * commit. A name GitHub has not heard of yet is pending (CI may not have started): only
 * the timeout ends that wait.
 */
export function judgeChecks(required: readonly string[], checks: readonly CheckReading[]): ChecksVerdict {
  const pending: string[] = [];
  for (const name of required) {
    const found = checks.filter((c) => c.name === name);
    const failed = found.find((c) => c.state === "failure");
    if (failed) return { state: "failed", check: failed };
    if (found.length === 0 || found.some((c) => c.state !== "success")) pending.push(name);
  }
  return pending.length === 0 ? { state: "passed" } : { state: "pending", pending };
}

/** Polls of a waiting push: 5 s, doubling, at most a minute apart (a webhook wakes it sooner). */
export function nextChecksPoll(polls: number): number {
  return Math.min(5000 * 2 ** Math.max(0, polls), 60_000);
}
