import { readFileSync } from "node:fs";

/**
 * A real GitHub push payload (from @octokit/webhooks-examples, about 7.6 KB), rewritten
 * to a repository, branch and commit: what `deployq send-test-delivery`, the tests and the
 * benchmark send.
 */
const TEMPLATE = readFileSync(new URL("../examples/push-payload.json", import.meta.url), "utf8");

export interface PushOptions {
  repository: string;
  branch?: string;
  ref?: string;
  after?: string;
  before?: string;
  deleted?: boolean;
}

export function pushPayload(options: PushOptions): Record<string, unknown> {
  const payload = JSON.parse(TEMPLATE) as Record<string, unknown> & {
    repository: Record<string, unknown> & { owner: Record<string, unknown> };
    head_commit: Record<string, unknown> | null;
  };
  const [owner, name] = options.repository.split("/");
  payload.ref = options.ref ?? `refs/heads/${options.branch ?? "main"}`;
  if (options.after) payload.after = options.after;
  if (options.before) payload.before = options.before;
  payload.deleted = options.deleted ?? false;
  payload.repository.full_name = options.repository;
  payload.repository.name = name;
  payload.repository.owner.login = owner;
  if (payload.head_commit && options.after) payload.head_commit.id = options.after;
  return payload;
}
