import type { DeploymentConfig } from "../config/schema.ts";
import type { QueueEntry } from "../queue/entry.ts";
import { summarizePayload } from "../queue/entry.ts";

export type RouteDecision =
  | { kind: "deliver"; deployments: string[]; repository: string; ref: string; after: string }
  | { kind: "void"; reason: string };

const SHA = /^(?:[0-9a-f]{40}|[0-9a-f]{64})$/;
const ZERO_SHA = /^0+$/;

/**
 * git's own rules for a branch name (git check-ref-format --branch), so that a hostile
 * ref is voided here, long before anything could pass it to git.
 */
export function isValidBranchName(name: string): boolean {
  if (name.length === 0 || name.length > 255) return false;
  if (name.startsWith("-") || name.startsWith("/") || name.endsWith("/") || name.endsWith(".")) return false;
  if (name === "@" || name.includes("..") || name.includes("@{") || name.includes("//")) return false;
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x20\x7f~^:?*[\\]/.test(name)) return false;
  return name.split("/").every((part) => !part.startsWith(".") && !part.endsWith(".lock"));
}

/** `*` and `?` stay within one path component, `**` crosses them; everything else is literal. */
export function branchGlobToRegExp(pattern: string): RegExp {
  let re = "";
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i]!;
    if (c === "*" && pattern[i + 1] === "*") {
      re += ".*";
      i++;
    } else if (c === "*") re += "[^/]*";
    else if (c === "?") re += "[^/]";
    else re += c.replace(/[.+^${}()|[\]\\]/g, "\\$&");
  }
  return new RegExp(`^${re}$`);
}

export function branchMatches(pattern: string, branch: string): boolean {
  return pattern === branch || branchGlobToRegExp(pattern).test(branch);
}

/**
 * Which deployments an event goes to. Only pushes to a branch deploy; tag pushes, branch
 * deletions, other events, invalid refs and branches nobody follows are voided, with the reason.
 */
export function routeEvent(
  entry: Pick<QueueEntry, "event" | "payload">,
  deployments: Iterable<DeploymentConfig & { name: string }>,
): RouteDecision {
  if (entry.event !== "push") return { kind: "void", reason: `"${entry.event}" events do not deploy (only push events do)` };
  const { repository, ref, after, deleted } = summarizePayload(entry.payload);
  if (!repository) return { kind: "void", reason: "the payload has no repository.full_name" };
  if (!ref) return { kind: "void", reason: "the payload has no ref" };
  if (ref.startsWith("refs/tags/")) return { kind: "void", reason: `tag push (${ref}) does not deploy` };
  if (deleted) return { kind: "void", reason: `branch deletion (${ref}) does not deploy` };
  if (!ref.startsWith("refs/heads/")) return { kind: "void", reason: `ref ${JSON.stringify(ref)} is not a branch` };
  const branch = ref.slice("refs/heads/".length);
  if (!isValidBranchName(branch)) return { kind: "void", reason: `ref ${JSON.stringify(ref)} is not a valid branch name` };
  if (!after || !SHA.test(after) || ZERO_SHA.test(after)) {
    return { kind: "void", reason: `the payload's "after" is not a commit sha: ${JSON.stringify(after)}` };
  }
  const repo = repository.toLowerCase();
  const matched: string[] = [];
  for (const d of deployments) {
    if (d.enabled && d.repository.toLowerCase() === repo && branchMatches(d.branch, branch)) matched.push(d.name);
  }
  if (matched.length === 0) return { kind: "void", reason: `no enabled deployment follows ${repository} branch ${branch}` };
  return { kind: "deliver", deployments: matched, repository, ref, after };
}
