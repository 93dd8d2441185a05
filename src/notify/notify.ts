import { createHmac } from "node:crypto";
import { and, eq, isNull, notInArray, sql } from "drizzle-orm";
import type { Deployment, Notifier, Settings } from "../config/load.ts";
import type { NotifyEvent } from "../config/schema.ts";
import type { Db } from "../db/client.ts";
import { githubOutbox, notifyState } from "../db/schema.ts";
import type { GithubOutboxRow } from "../db/schema.ts";
import type { StepKind } from "../events/types.ts";
import { errorMessage } from "../errors.ts";
import type { SendResult } from "../github/client.ts";
import { COMMIT_STEPS, dashboardLink, short } from "../github/statuses.ts";
import { VERSION } from "../version.ts";

/**
 * Notifications ([[notify]]): what happened to a deploy, told to Slack, Discord or any HTTP
 * endpoint. They go through the outbox that carries GitHub's statuses (src/github/outbox.ts):
 * written in the transaction of the deploy row they tell of, sent by a sender of their own
 * per notifier (src/github/sender.ts), in order, each once (a crash between the answer and
 * its mark sends that one again, with the same X-Deployq-Delivery). A notifier that is down
 * or refuses never changes or holds up a deploy: the deploy only writes a row.
 *
 * When each event happens:
 * - failure: a deploy failed for good (not a transient failure that is retried), or a push's
 *   required checks failed. Once, when a deployment starts failing: the failures after it
 *   tell nobody until it recovers.
 * - recovered: the first successful deploy after a failure.
 * - rollback: `deployq rollback`, or a failed deploy that put the previous release back.
 * - dead-letter: an entry was moved to dead-letter/ (a deploy that failed for good, a
 *   cancel, an entry deployq could not read): one each, as each needs an operator.
 * - success: every successful deploy (a rollback is a rollback, not a success).
 * One thing that happened is one notification, naming all of its events that the notifier
 * listens to (a failed deploy that was rolled back and dead-lettered is one message).
 */

/** What happened, as the worker knows it. */
export type Happening =
  | { what: "succeeded"; sha: string; requestedSha?: string | undefined }
  | { what: "rolled-back"; to: string; from: string | undefined }
  | { what: "failed"; sha: string | undefined; error: string; step: StepKind | undefined; rolledBack: boolean; liveSha: string | undefined; deadLettered: boolean }
  | { what: "dead-lettered"; sha: string | undefined; error: string };

/** A notification to write, with the deploy row it tells of. */
export interface NotifyWrite {
  kind: "notify";
  deployment: string;
  repository: string;
  entry: string;
  deployId: number | null;
  happening: Happening;
  /** The notifiers of this deployment, with the events each listens to. */
  targets: ReadonlyArray<{ name: string; events: ReadonlySet<NotifyEvent> }>;
  link: string | null;
}

/** What an outbox row of kind "notify" carries: everything its formats need (never a URL or a key). */
export interface NotifyPayload {
  notifier: string;
  events: NotifyEvent[];
  deployment: string;
  repository: string;
  entry: string;
  sha: string | null;
  deployId: number | null;
  title: string;
  text: string;
  error: string | null;
  url: string | null;
  at: string;
  failingSince: string | null;
  failures: number;
}

/** The order in which a notification's events name it (the first one is its title and X-Deployq-Event). */
const PRIORITY: readonly NotifyEvent[] = ["recovered", "failure", "rollback", "dead-letter", "success"];

/** The notifications of one deployment: what its worker adds to the deploy rows' transactions. */
export class DeploymentNotifier {
  private readonly targets: NotifyWrite["targets"];

  constructor(
    private readonly settings: Pick<Settings, "publicUrl" | "dashboard" | "notify">,
    private readonly deployment: Pick<Deployment, "name" | "repository">,
  ) {
    this.targets = settings.notify.filter((n) => !n.deployments || n.deployments.has(deployment.name)).map((n) => ({ name: n.name, events: n.events }));
  }

  /** Whether anyone listens to this deployment. */
  get listened(): boolean {
    return this.targets.length > 0;
  }

  write(entry: string, deployId: number | null, happening: Happening): NotifyWrite[] {
    if (this.targets.length === 0) return [];
    const { name, repository } = this.deployment;
    return [{ kind: "notify", deployment: name, repository, entry, deployId, happening, targets: this.targets, link: dashboardLink(this.settings, name, deployId ?? undefined) }];
  }
}

const firstLine = (text: string, max = 300) => {
  const line = text.split("\n").find((l) => l.trim() !== "") ?? text;
  const one = line.replace(/\s+/g, " ").trim();
  return one.length <= max ? one : `${one.slice(0, max - 1)}…`;
};

/**
 * Writes a notification's rows (one per notifier that listens to one of its events) and the
 * deployment's failing state, in the caller's transaction.
 */
export async function writeNotifications(db: Db, w: NotifyWrite): Promise<void> {
  const [state] = await db.select().from(notifyState).where(eq(notifyState.deployment, w.deployment));
  const failing = state?.failing === true;
  const h = w.happening;
  const events: NotifyEvent[] = [];
  const d = w.deployment;
  let title: string;
  let text: string;
  let sha: string | undefined;
  let error: string | null = null;
  if (h.what === "succeeded") {
    sha = h.sha;
    events.push("success");
    if (failing) events.push("recovered");
    const superseding = h.requestedSha && h.requestedSha !== h.sha ? ` (the branch's head, superseding ${short(h.requestedSha)})` : "";
    title = failing ? `${d} recovered: ${short(h.sha)} is live` : `${d}: ${short(h.sha)} is live`;
    text = failing
      ? `${short(h.sha)}${superseding} deployed to ${d}, after ${state.failures} failed deploy${state.failures === 1 ? "" : "s"} since ${state.failingSince?.toISOString() ?? "?"}.`
      : `${short(h.sha)}${superseding} deployed to ${d}.`;
    await setState(db, d, { failing: false, failingSince: null, failures: 0 });
  } else if (h.what === "rolled-back") {
    sha = h.to;
    events.push("rollback");
    title = `${d}: rolled back to ${short(h.to)}`;
    text = `${d} was rolled back${h.from ? ` from ${short(h.from)}` : ""} to ${short(h.to)}, which is live again.`;
  } else if (h.what === "failed") {
    sha = h.sha;
    error = firstLine(h.error, 1000);
    if (!failing) events.push("failure");
    if (h.rolledBack) events.push("rollback");
    if (h.deadLettered) events.push("dead-letter");
    const step = h.step ? COMMIT_STEPS[h.step] : undefined;
    title = `${d}: deploy of ${sha ? short(sha) : "a request"} failed${step ? ` at its ${step}` : ""}`;
    const previous = h.liveSha ? `the previous release (${short(h.liveSha)})` : "the previous release, if any,";
    const serving = h.rolledBack ? `Rolled back: ${previous} is serving again.` : `${previous[0]!.toUpperCase()}${previous.slice(1)} is still serving.`;
    text = `${firstLine(h.error)}. ${serving}${h.deadLettered ? ` The entry is in dead-letter/${d}/ (\`deployq queue requeue ${d}\` once the cause is fixed).` : ""}`;
    await setState(db, d, failing ? { failing: true, failingSince: state.failingSince, failures: state.failures + 1 } : { failing: true, failingSince: sql`now()`, failures: 1 });
  } else {
    sha = h.sha;
    error = firstLine(h.error, 1000);
    events.push("dead-letter");
    title = `${d}: entry ${w.entry} moved to dead-letter/`;
    text = `${firstLine(h.error)}. Fix the cause, then \`deployq queue requeue ${d}\`.`;
  }
  const [now] = await db.select().from(notifyState).where(eq(notifyState.deployment, d));
  for (const target of w.targets) {
    const heard = PRIORITY.filter((e) => events.includes(e) && target.events.has(e));
    if (heard.length === 0) continue;
    const payload: NotifyPayload = {
      notifier: target.name,
      events: heard,
      deployment: d,
      repository: w.repository,
      entry: w.entry,
      sha: sha ?? null,
      deployId: w.deployId,
      title,
      text,
      error,
      url: w.link,
      at: new Date().toISOString(),
      failingSince: now?.failingSince ? new Date(now.failingSince).toISOString() : null,
      failures: now?.failures ?? 0,
    };
    await db.insert(githubOutbox).values({
      kind: "notify",
      key: notifyKey(target.name),
      collapsible: false,
      repository: w.repository,
      sha: sha ?? "",
      context: `deployq/${d}`,
      state: heard[0]!,
      description: title,
      targetUrl: w.link,
      deployment: d,
      deployId: w.deployId,
      payload: payload as unknown as Record<string, unknown>,
    });
  }
}

async function setState(db: Db, deployment: string, values: { failing: boolean; failingSince: Date | null | ReturnType<typeof sql>; failures: number }): Promise<void> {
  await db
    .insert(notifyState)
    .values({ deployment, ...values, updatedAt: sql`now()` })
    .onConflictDoUpdate({ target: notifyState.deployment, set: { ...values, updatedAt: sql`now()` } });
}

/**
 * The rows of a notifier that is no longer configured (its [[notify]] table removed, or its
 * url_env renamed) would wait forever, and `deployq status` would count them: given up at
 * start, saying why. Answers how many.
 */
export async function giveUpRemovedNotifiers(db: Db, configured: readonly string[]): Promise<number> {
  const keys = configured.map(notifyKey);
  const rows = await db
    .update(githubOutbox)
    .set({ result: "gave-up", lastError: "its notifier is no longer in the configuration ([[notify]] url_env)", lastAttemptAt: sql`now()` })
    .where(and(eq(githubOutbox.kind, "notify"), isNull(githubOutbox.result), keys.length > 0 ? notInArray(githubOutbox.key, keys) : undefined))
    .returning({ id: githubOutbox.id });
  return rows.length;
}

/** Every row of one notifier shares its key: they are sent one at a time, in order. */
export const notifyKey = (notifier: string) => `notify:${notifier}`;

/** A request, ready to send. */
export interface RenderedNotification {
  body: string;
  headers: Record<string, string>;
}

/** Slack's mrkdwn: &, < and > are its markup (`<!channel>`, links), so a commit's text cannot ping or link. */
const slackText = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
const clamp = (s: string, max: number) => (s.length <= max ? s : `${s.slice(0, max - 1)}…`);

const SLACK_MARK: Record<NotifyEvent, string> = { failure: ":x:", recovered: ":white_check_mark:", rollback: ":leftwards_arrow_with_hook:", "dead-letter": ":inbox_tray:", success: ":white_check_mark:" };
const DISCORD_COLOR: Record<NotifyEvent, number> = { failure: 0xd73a49, recovered: 0x28a745, rollback: 0xdbab09, "dead-letter": 0x6f42c1, success: 0x28a745 };

/** The body and headers of a notification, in its notifier's format. `delivery`: the outbox row's id, the same at every attempt. */
export function renderNotification(notifier: Pick<Notifier, "format" | "secret">, p: NotifyPayload, delivery: number): RenderedNotification {
  const event = p.events[0]!;
  const headers: Record<string, string> = { "content-type": "application/json", "user-agent": `deployq/${VERSION}`, "x-deployq-event": event, "x-deployq-delivery": String(delivery) };
  const where = `${p.repository}${p.sha ? `@${short(p.sha)}` : ""}`;
  if (notifier.format === "slack") {
    const link = p.url ? ` · <${p.url}|${p.deployId !== null ? `deploy #${p.deployId}` : "dashboard"}>` : "";
    const body = {
      text: clamp(`${p.title}: ${p.text}`, 3000),
      blocks: [
        { type: "section", text: { type: "mrkdwn", text: clamp(`${SLACK_MARK[event]} *${slackText(p.title)}*\n${slackText(p.text)}`, 3000) } },
        { type: "context", elements: [{ type: "mrkdwn", text: `${slackText(where)}${link} · ${p.events.join(", ")} · deployq` }] },
      ],
    };
    return { body: JSON.stringify(body), headers };
  }
  if (notifier.format === "discord") {
    const body = {
      username: "deployq",
      // A commit message or build output saying @everyone pings nobody.
      allowed_mentions: { parse: [] },
      embeds: [{ title: clamp(p.title, 256), description: clamp(p.text, 4096), ...(p.url ? { url: p.url } : {}), color: DISCORD_COLOR[event], timestamp: p.at, footer: { text: clamp(`${where} · ${p.events.join(", ")} · deployq`, 2048) } }],
    };
    return { body: JSON.stringify(body), headers };
  }
  const body = JSON.stringify({
    event,
    events: p.events,
    delivery,
    deployment: p.deployment,
    repository: p.repository,
    sha: p.sha,
    entry: p.entry,
    deploy_id: p.deployId,
    title: p.title,
    text: p.text,
    error: p.error,
    url: p.url,
    at: p.at,
    failing_since: p.failingSince,
    failures: p.failures,
  });
  headers["x-deployq-signature-256"] = signNotification(notifier.secret ?? "", body);
  return { body, headers };
}

/** `sha256=` and the hex HMAC-SHA256 of the body, as GitHub signs its webhooks: check it in constant time. */
export function signNotification(secret: string, body: string): string {
  return `sha256=${createHmac("sha256", secret).update(body).digest("hex")}`;
}

/** How long a notifier that answers 429 without Retry-After is left alone. */
const DEFAULT_RETRY_AFTER_MS = 30_000;

/**
 * Posts one notification. 2xx: sent. 429: rate-limited until Retry-After. 408, 5xx, a
 * timeout, a network error: transient (the sender retries with backoff). A redirect or
 * another 4xx: permanent (a removed webhook, a bad payload): given up and logged with what
 * to fix. The URL is never in a message (it is the notifier's credential).
 */
export async function sendNotification(notifier: Notifier, row: Pick<GithubOutboxRow, "id" | "payload">, signal: AbortSignal, timeoutMs: number): Promise<SendResult> {
  const { body, headers } = renderNotification(notifier, row.payload as unknown as NotifyPayload, row.id);
  let res: Response;
  try {
    res = await fetch(notifier.url!, { method: "POST", body, headers, redirect: "manual", signal: AbortSignal.any([signal, AbortSignal.timeout(timeoutMs)]) });
  } catch (err) {
    const timedOut = (err as { name?: string }).name === "TimeoutError";
    return { ok: false, kind: "transient", status: undefined, message: timedOut ? `no answer within ${timeoutMs} ms` : `could not reach it: ${errorMessage((err as { cause?: unknown }).cause ?? err)}` };
  }
  const said = firstLine(await res.text().catch(() => ""), 200);
  if (res.ok) return { ok: true };
  const answered = `it answered ${res.status}${said ? ` "${said}"` : ""}`;
  if (res.status === 429) {
    const after = res.headers.get("retry-after");
    const seconds = after && /^\d+$/.test(after) ? Number(after) * 1000 : after ? Date.parse(after) - Date.now() : Number.NaN;
    return { ok: false, kind: "rate-limited", status: 429, retryAt: Date.now() + (Number.isFinite(seconds) && seconds > 0 ? seconds : DEFAULT_RETRY_AFTER_MS), message: answered };
  }
  if (res.status === 408 || res.status >= 500) return { ok: false, kind: "transient", status: res.status, message: answered };
  const fix = res.status >= 300 && res.status < 400 ? `set ${notifier.name} to the address it redirects to` : res.status === 404 || res.status === 410 || res.status === 403 || res.status === 401 ? `check ${notifier.name}: the webhook may have been removed or its URL mistyped` : `the notification was refused as it is`;
  return { ok: false, kind: "permanent", status: res.status, message: `${answered}: ${fix}` };
}
