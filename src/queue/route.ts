import { branchMatches, isValidBranchName } from "../config/branch.ts";
import type { DeploymentConfig } from "../config/schema.ts";
import type { QueueEntry } from "./entry.ts";
import { summarizePayload } from "./entry.ts";
import { CHECK_EVENTS, checkEventSha } from "../github/checks.ts";

/**
 * Why an event deploys nothing, for callers that say it in their own words (the
 * post-receive hook's "Doing nothing: only main may be deployed on this server.").
 */
export type VoidCode = "event" | "payload" | "tag" | "deleted" | "not-a-branch" | "unfollowed";

export type RouteDecision =
  | { kind: "deliver"; deployments: string[]; repository: string; ref: string; after: string }
  /** A check event for the deployments that hold pushes until their checks pass (require_checks): it deploys nothing itself. */
  | { kind: "wake"; deployments: string[]; repository: string; sha: string }
  | {
      kind: "void";
      code: VoidCode;
      reason: string;
      /** The branch patterns the enabled deployments of the payload's repository follow ([] when none does). */
      followed: string[];
    };

const SHA = /^(?:[0-9a-f]{40}|[0-9a-f]{64})$/;
const ZERO_SHA = /^0+$/;

/**
 * Which deployments an event goes to. Only pushes to a branch deploy; tag pushes, branch
 * deletions, other events, invalid refs and branches nobody follows are voided, with the reason.
 */
export function routeEvent(
  entry: Pick<QueueEntry, "event" | "payload">,
  deployments: Iterable<DeploymentConfig & { name: string }>,
): RouteDecision {
  const { repository, ref, after, deleted } = summarizePayload(entry.payload);
  // GitHub's repository names are case-insensitive.
  const ofRepository = repository === undefined ? [] : [...deployments].filter((d) => d.repository.toLowerCase() === repository.toLowerCase());
  const enabled = ofRepository.filter((d) => d.enabled);
  const followed = [...new Set(enabled.map((d) => d.branch))];
  const voided = (code: VoidCode, reason: string): RouteDecision => ({ kind: "void", code, reason, followed });
  if (CHECK_EVENTS.has(entry.event)) {
    const gated = enabled.filter((d) => d.require_checks.length > 0).map((d) => d.name);
    const sha = checkEventSha(entry.event, entry.payload);
    if (gated.length > 0 && repository && sha) return { kind: "wake", deployments: gated, repository, sha };
    const why = gated.length === 0 ? "no enabled deployment of its repository has require_checks" : "the payload names no commit sha";
    return voided("event", `"${entry.event}" events do not deploy (only push events do), and this one wakes no waiting push: ${why}`);
  }
  if (entry.event !== "push") return voided("event", `"${entry.event}" events do not deploy (only push events do)`);
  if (!repository) return voided("payload", "the payload has no repository.full_name");
  if (!ref) return voided("payload", "the payload has no ref");
  if (ref.startsWith("refs/tags/")) return voided("tag", `tag push (${ref}) does not deploy`);
  if (deleted) return voided("deleted", `branch deletion (${ref}) does not deploy`);
  if (!ref.startsWith("refs/heads/")) return voided("not-a-branch", `ref ${JSON.stringify(ref)} is not a branch`);
  const branch = ref.slice("refs/heads/".length);
  if (!isValidBranchName(branch)) return voided("not-a-branch", `ref ${JSON.stringify(ref)} is not a valid branch name`);
  if (!after || !SHA.test(after) || ZERO_SHA.test(after)) {
    return voided("payload", `the payload's "after" is not a commit sha: ${JSON.stringify(after)}`);
  }
  const matched = enabled.filter((d) => branchMatches(d.branch, branch)).map((d) => d.name);
  if (matched.length > 0) return { kind: "deliver", deployments: matched, repository, ref, after };
  const prefix = `no enabled deployment follows ${repository} branch ${branch}`;
  if (ofRepository.length === 0) {
    return voided("unfollowed", `${prefix}: no deployment has repository = ${JSON.stringify(repository)} (compare with the deployments' repository keys)`);
  }
  const details = ofRepository.map((d) => `${d.name} follows ${d.branch}${d.enabled ? "" : " but is disabled"}`);
  return voided("unfollowed", `${prefix} (${details.join("; ")})`);
}
