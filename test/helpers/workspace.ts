import { randomUUID } from "node:crypto";
import { mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { sign } from "@octokit/webhooks-methods";
import { type Settings, loadSettings } from "../../src/config/load.ts";
import { pushPayload } from "../../src/push-payload.ts";
import { entryName } from "../../src/queue/entry-name.ts";
import { queueLayout } from "../../src/queue/layout.ts";
import { ensureQueueDirs, writeEntryDurably } from "../../src/queue/write.ts";

export const SECRET = "test-secret-It's a Secret to Everybody";

export interface Workspace {
  dir: string;
  configPath: string;
  queuesDir: string;
  settings: Settings;
  env: NodeJS.ProcessEnv;
  dispose(): Promise<void>;
}

export const DEFAULT_DEPLOYMENTS = `
[deployments.api]
repository = "Octo-Org/API"
branch = "main"
remote = "/nonexistent/api.git"
path = "./apps/api"

[deployments.api-staging]
repository = "octo-org/api"
branch = "deploy-*"
remote = "/nonexistent/api.git"
path = "./apps/api-staging"

[deployments.web]
repository = "octo-org/web"
branch = "main"
remote = "/nonexistent/web.git"
path = "./apps/web"
`;

/**
 * The TOML of a deployment named `name` that follows branch main of "octo-org/<name>",
 * fetched from `remote`, living in ./apps/<name>, plus any `extra` keys.
 */
export function followingDeployment(name: string, remote: string, extra = ""): string {
  return `
[deployments.${name}]
repository = "octo-org/${name}"
branch = "main"
remote = "${remote}"
path = "./apps/${name}"
${extra.trim()}
`;
}

/** A temporary folder with a deployq.toml, its queue root and data dir inside. */
export async function createWorkspace(options: { deployments?: string; port?: number; env?: NodeJS.ProcessEnv; topLevel?: string } = {}): Promise<Workspace> {
  const dir = await mkdtemp(path.join(tmpdir(), "deployq-test-"));
  const configPath = path.join(dir, "deployq.toml");
  await writeFile(
    configPath,
    `data_dir = "./data"\nqueues_dir = "./queues"\nrescan_interval_ms = 100\n${options.topLevel ?? ""}\n\n[server]\nhost = "127.0.0.1"\nport = ${options.port ?? 0}\n${options.deployments ?? DEFAULT_DEPLOYMENTS}`,
  );
  const env: NodeJS.ProcessEnv = { GITHUB_WEBHOOK_SECRET: SECRET, DEPLOYQ_LOG_LEVEL: "warn", ...options.env };
  const settings = loadSettings({ configPath, env: { ...env, DEPLOYQ_CONFIG: undefined, DEPLOYQ_QUEUES_DIR: undefined } });
  return { dir, configPath, queuesDir: settings.queuesDir, settings, env, dispose: () => rm(dir, { recursive: true, force: true }) };
}

/** Every file under a directory, relative to it (to prove nothing was written elsewhere). */
export async function listFiles(dir: string): Promise<string[]> {
  try {
    const entries = await readdir(dir, { recursive: true, withFileTypes: true });
    return entries
      .filter((e) => e.isFile())
      .map((e) => path.relative(dir, path.join(e.parentPath, e.name)))
      .sort();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw err;
  }
}

export interface SignedRequest {
  headers: Record<string, string>;
  body: string | Buffer;
}

/** A delivery as GitHub sends it, signed with `secret`. */
export async function signedDelivery(
  payload: unknown,
  options: { event?: string; delivery?: string; hookId?: string; secret?: string } = {},
): Promise<SignedRequest> {
  const body = typeof payload === "string" ? payload : JSON.stringify(payload);
  return {
    body,
    headers: {
      "content-type": "application/json",
      "user-agent": "GitHub-Hookshot/test",
      "x-github-event": options.event ?? "push",
      "x-github-delivery": options.delivery ?? randomUUID(),
      "x-github-hook-id": options.hookId ?? "123456",
      "x-hub-signature-256": await sign(options.secret ?? SECRET, body),
    },
  };
}

export function randomSha(): string {
  return randomUUID().replace(/-/g, "") + randomUUID().replace(/-/g, "").slice(0, 8);
}

export async function post(url: string, request: SignedRequest): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await fetch(`${url}/github-webhook`, { method: "POST", headers: request.headers, body: request.body as BodyInit });
  const text = await res.text();
  let body: Record<string, unknown>;
  try {
    body = JSON.parse(text) as Record<string, unknown>;
  } catch {
    body = { raw: text };
  }
  return { status: res.status, body };
}

/** Writes a push entry straight into a queue directory (as the router, or a planted file, would). Returns its name. */
export async function queuePush(queuesDir: string, dir: "router" | { deployment: string }, repository: string, sha: string, branch = "main"): Promise<string> {
  const layout = queueLayout(queuesDir);
  const target = dir === "router" ? layout.router : layout.deployment(dir.deployment);
  await ensureQueueDirs(layout, dir === "router" ? [] : [dir.deployment]);
  const id = randomUUID();
  const name = entryName(id);
  await writeEntryDurably(layout, target, name, {
    event: "push",
    delivery_id: id,
    hook_id: "",
    received_at: new Date().toISOString(),
    payload: pushPayload({ repository, branch, after: sha }),
  });
  return name;
}

export { pushPayload };
