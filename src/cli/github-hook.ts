import type { Deployment, Settings } from "../config/load.ts";
import { DeployqError } from "../errors.ts";
import { type Hook, type HooksApi, WEBHOOK_PATH, createHooksApi, hookEventsFor, hookUrl, hooksApiError } from "../github/hooks.ts";
import { configuredDeployment } from "./names.ts";
import { table } from "./output.ts";

/**
 * `deployq github hook install|list|ping|remove <deployment>`: the webhook of the
 * deployment's repository that posts to this deployq ([server] public_url + /github-webhook),
 * found by its URL, so that install is idempotent (a second run updates it).
 */

export interface HookCommandOptions {
  json: boolean;
  /** Tests: the API client (default: GITHUB_TOKEN on GITHUB_API_URL). */
  api?: HooksApi;
  write?: (text: string) => void;
}

const PERMISSION = 'the repository permission "Webhooks: read and write"';

function requireToken(settings: Settings, d: Deployment): string {
  const token = settings.secrets.githubToken;
  if (!token) {
    throw new DeployqError("CONFIG", `GITHUB_TOKEN is not set: export a token with ${PERMISSION} on ${d.repository} (a fine-grained token; a classic one needs the admin:repo_hook scope)`);
  }
  return token;
}

function requirePublicUrl(settings: Settings): string {
  if (!settings.publicUrl) {
    throw new DeployqError(
      "CONFIG",
      `[server] public_url is not set in ${settings.configPath}: set it to the address GitHub reaches deployq at (such as "https://deploy.example.com"; the webhook posts to it + ${WEBHOOK_PATH})`,
    );
  }
  return settings.publicUrl;
}

function requireSecret(settings: Settings): string {
  const secret = settings.secrets.webhookSecrets[0];
  if (!secret) {
    throw new DeployqError(
      "CONFIG",
      "GITHUB_WEBHOOK_SECRET is not set: export the secret GitHub should sign deliveries with (the receiver verifies them with it), such as the output of `openssl rand -hex 32`, in this shell and in the daemon's environment",
    );
  }
  return secret;
}

interface Context {
  d: Deployment;
  api: HooksApi;
  write: (text: string) => void;
}

function context(settings: Settings, name: string, options: HookCommandOptions): Context {
  const d = configuredDeployment(settings, name);
  const api = options.api ?? createHooksApi({ apiUrl: settings.github.apiUrl, token: requireToken(settings, d), timeoutMs: settings.github.timeoutMs, writeIntervalMs: settings.github.writeIntervalMs });
  return { d, api, write: options.write ?? ((text) => process.stdout.write(text)) };
}

async function call<T>(repository: string, doing: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw hooksApiError(err, repository, doing);
  }
}

const ours = (hooks: Hook[], url: string) => hooks.filter((h) => h.url === url);

export async function hookInstall(settings: Settings, name: string, options: HookCommandOptions): Promise<void> {
  const d = configuredDeployment(settings, name);
  requireToken(settings, d);
  const url = hookUrl(requirePublicUrl(settings));
  const secret = requireSecret(settings);
  const { api, write } = context(settings, name, options);
  // Every deployment of the repository shares the one hook: it needs the events of them all.
  const events = hookEventsFor([...settings.deployments.values()].filter((x) => x.repository.toLowerCase() === d.repository.toLowerCase()));
  const spec = { url, secret, events };
  const existing = ours(await call(d.repository, `list the webhooks of ${d.repository}`, () => api.list(d.repository)), url);
  const [first, ...others] = existing;
  const hook = first
    ? await call(d.repository, `update webhook ${first.id} of ${d.repository}`, () => api.update(d.repository, first.id, spec))
    : await call(d.repository, `create a webhook on ${d.repository}`, () => api.create(d.repository, spec));
  const action = first ? "updated" : "created";
  if (options.json) return printJsonTo(write, { action, repository: d.repository, hook, duplicates: others.map((h) => h.id) });
  write(`${action} webhook ${hook.id} on ${d.repository}: ${hook.url}, content type json, events ${hook.events.join(", ")}, secret from GITHUB_WEBHOOK_SECRET\n`);
  if (action === "created") write("GitHub sends it a ping now: `deployq deliveries` shows it once deployq has received it\n");
  if (others.length > 0) {
    write(`warning: ${d.repository} has ${others.length} more webhook(s) posting to ${url} (${others.map((h) => h.id).join(", ")}): each push arrives once per hook (the duplicates are ignored); remove them in the repository's settings\n`);
  }
}

export async function hookList(settings: Settings, name: string, options: HookCommandOptions): Promise<void> {
  const { d, api, write } = context(settings, name, options);
  const url = settings.publicUrl ? hookUrl(settings.publicUrl) : undefined;
  const hooks = await call(d.repository, `list the webhooks of ${d.repository}`, () => api.list(d.repository));
  if (options.json) return printJsonTo(write, hooks.map((h) => ({ ...h, deployq: h.url === url })));
  if (hooks.length === 0) {
    write(`${d.repository} has no webhooks: \`deployq github hook install ${d.name}\` creates deployq's\n`);
    return;
  }
  const rows = hooks.map((h) => [
    h.url === url ? "*" : "",
    String(h.id),
    h.url,
    h.events.join(","),
    h.active ? "yes" : "no",
    h.lastResponse?.code ? `${h.lastResponse.code} ${h.lastResponse.message ?? ""}`.trim() : (h.lastResponse?.status ?? "-"),
  ]);
  write(`${table(["", "ID", "URL", "EVENTS", "ACTIVE", "LAST RESPONSE"], rows)}\n`);
  if (url && !hooks.some((h) => h.url === url)) write(`none posts to ${url} (* would mark it): \`deployq github hook install ${d.name}\` creates it\n`);
}

/** deployq's hooks of the repository, or a refusal that says how to create one. */
async function requireOurs(settings: Settings, c: Context): Promise<{ url: string; hooks: Hook[] }> {
  const url = hookUrl(requirePublicUrl(settings));
  const hooks = ours(await call(c.d.repository, `list the webhooks of ${c.d.repository}`, () => c.api.list(c.d.repository)), url);
  return { url, hooks };
}

export async function hookPing(settings: Settings, name: string, options: HookCommandOptions): Promise<void> {
  const d = configuredDeployment(settings, name);
  requireToken(settings, d);
  requirePublicUrl(settings);
  const c = context(settings, name, options);
  const { url, hooks } = await requireOurs(settings, c);
  if (hooks.length === 0) throw new DeployqError("BAD_REQUEST", `no webhook of ${d.repository} posts to ${url}: \`deployq github hook install ${d.name}\` creates it`);
  for (const h of hooks) await call(d.repository, `ping webhook ${h.id} of ${d.repository}`, () => c.api.ping(d.repository, h.id));
  if (options.json) return printJsonTo(c.write, { pinged: hooks.map((h) => h.id), repository: d.repository, url });
  for (const h of hooks) c.write(`pinged webhook ${h.id} on ${d.repository}: GitHub sends a ping to ${url}; \`deployq deliveries\` shows it once deployq has received it\n`);
}

export async function hookRemove(settings: Settings, name: string, options: HookCommandOptions): Promise<void> {
  const d = configuredDeployment(settings, name);
  requireToken(settings, d);
  requirePublicUrl(settings);
  const c = context(settings, name, options);
  const { url, hooks } = await requireOurs(settings, c);
  for (const h of hooks) await call(d.repository, `remove webhook ${h.id} of ${d.repository}`, () => c.api.remove(d.repository, h.id));
  if (options.json) return printJsonTo(c.write, { removed: hooks.map((h) => h.id), repository: d.repository, url });
  if (hooks.length === 0) c.write(`no webhook of ${d.repository} posts to ${url}: nothing removed\n`);
  for (const h of hooks) c.write(`removed webhook ${h.id} from ${d.repository} (${url}): GitHub sends deployq nothing more from it\n`);
}

/** As printJson (output.ts), to `write`. */
function printJsonTo(write: (text: string) => void, value: unknown): void {
  write(`${JSON.stringify(value, null, 2)}\n`);
}
