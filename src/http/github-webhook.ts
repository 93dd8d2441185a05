import { isUtf8 } from "node:buffer";
import path from "node:path";
import type { Request, Response } from "express";
import type { Logger } from "pino";
import type { Deployment } from "../config/load.ts";
import type { Db } from "../db/client.ts";
import { type DeliveryRow, deliveryKey, recordAllIfMissing } from "../db/queries/record-delivery.ts";
import { RequestError, errorMessage } from "../errors.ts";
import { MAX_PAYLOAD_DEPTH, type QueueEntry, nestsDeeperThan, parseEntry, serializeEntry, summarizePayload } from "../queue/entry.ts";
import { entryName, isDeliveryId, parseEntryName } from "../queue/entry-name.ts";
import type { QueueLayout } from "../queue/layout.ts";
import { readEntryFile } from "../queue/read.ts";
import { routeEvent } from "../queue/route.ts";
import { CommitUncertain, DeadlineExceeded, createEnqueueBatcher } from "./enqueue-batch.ts";
import { Readiness } from "./readiness.ts";
import { type Events, noEvents } from "../events/bus.ts";
import { verifySignature } from "./signature.ts";

export interface WebhookDeps {
  secrets: readonly string[];
  db: Db;
  layout: QueueLayout;
  logger: Logger;
  /** The configured deployments: the answer says which ones a delivery is for (the router's own matching). */
  deployments: readonly Deployment[];
  /** Deliveries known before their rows are (entries a previous receiver left); see recordOrphanedEntries. */
  readiness?: Readiness | undefined;
  /** Where received, duplicate and voided deliveries are told (none by default). */
  events?: Events | undefined;
}

const EVENT_NAME = /^[a-z_]{1,64}$/;
const HOOK_ID = /^\d{1,20}$/;

interface Delivery {
  event: string;
  deliveryId: string;
  hookId: string;
  payload: Record<string, unknown>;
}

/** Steps 1–2 of the contract: signature (401), then headers and body (400/415). Nothing is written. */
export function readDelivery(req: Request, secrets: readonly string[]): Delivery {
  const body: unknown = req.body;
  if (!Buffer.isBuffer(body)) throw new RequestError("BAD_REQUEST", 400, "no request body");
  const signature = req.get("x-hub-signature-256");
  if (!signature) {
    const hint = req.get("x-hub-signature")
      ? " (only the SHA-1 X-Hub-Signature was sent, which deployq does not accept)"
      : "";
    throw new RequestError("SIGNATURE", 401, `X-Hub-Signature-256 is missing${hint}: set a secret on the GitHub webhook`);
  }
  if (!verifySignature(secrets, body, signature)) {
    throw new RequestError("SIGNATURE", 401, "X-Hub-Signature-256 does not match: the webhook secret differs from GITHUB_WEBHOOK_SECRET");
  }
  const event = req.get("x-github-event");
  if (!event || !EVENT_NAME.test(event)) throw new RequestError("BAD_REQUEST", 400, "X-GitHub-Event is missing or not an event name");
  const deliveryId = req.get("x-github-delivery");
  if (!isDeliveryId(deliveryId)) throw new RequestError("BAD_REQUEST", 400, "X-GitHub-Delivery is missing or not a GUID");
  const hookId = req.get("x-github-hook-id") ?? "";
  if (hookId !== "" && !HOOK_ID.test(hookId)) throw new RequestError("BAD_REQUEST", 400, "X-GitHub-Hook-ID is not a number");
  return { event, deliveryId: deliveryId.toLowerCase(), hookId, payload: parsePayload(req, body) };
}

function parsePayload(req: Request, body: Buffer): Record<string, unknown> {
  if (!isUtf8(body)) throw new RequestError("BAD_REQUEST", 400, "the body is not valid UTF-8");
  let text = body.toString("utf8");
  const type = (req.get("content-type") ?? "application/json").split(";")[0]!.trim().toLowerCase();
  if (type === "application/x-www-form-urlencoded") {
    // GitHub's "application/x-www-form-urlencoded" content type: the JSON is in the payload field.
    const payload = new URLSearchParams(text).get("payload");
    if (payload === null) throw new RequestError("BAD_REQUEST", 400, "form-encoded delivery without a payload field");
    text = payload;
  } else if (type !== "application/json" && !type.endsWith("+json")) {
    throw new RequestError(
      "UNSUPPORTED_MEDIA_TYPE",
      415,
      `content type ${type} is not supported: set the GitHub webhook's content type to application/json`,
    );
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new RequestError("BAD_REQUEST", 400, `the body is not JSON: ${errorMessage(err)}`);
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new RequestError("BAD_REQUEST", 400, "the body is not a JSON object");
  }
  if (nestsDeeperThan(json, MAX_PAYLOAD_DEPTH)) {
    throw new RequestError("BAD_REQUEST", 400, `the body nests deeper than ${MAX_PAYLOAD_DEPTH} levels, which no webhook payload does`);
  }
  return json as Record<string, unknown>;
}

/**
 * POST /github-webhook. Answers 2xx only once the delivery is durably recorded:
 * the dedupe row and the file are committed together (the row's transaction stays open
 * while the file is written and fsync'd; concurrent deliveries share one, see
 * enqueue-batch.ts), so a delivery whose file could not be written leaves no row behind,
 * and its redelivery is queued rather than called a duplicate.
 *
 * The receiver decides with the router's own matching (routeEvent) whether any deployment
 * follows the delivery. One that none does (another repository, an unfollowed branch, a
 * tag, another event) gets no entry: its row is recorded `voided` with the reason the
 * router would have recorded, and the answer says so. It is still 2xx, so that GitHub
 * does not show a failure for a push that was meant to do nothing; a redelivery of it is
 * a duplicate.
 */
export function githubWebhookHandler(deps: WebhookDeps) {
  const { db, layout, logger, deployments } = deps;
  // Without a daemon's (tests of the app alone): one that takes deliveries from the start.
  const readiness = deps.readiness ?? new Readiness(undefined);
  const batcher = createEnqueueBatcher(db, layout, { onUncertain: (rows) => recordUncertain(db, rows, readiness, logger) });
  return async (req: Request, res: Response): Promise<void> => {
    const delivery = readDelivery(req, deps.secrets);
    if (readiness.isUnrecorded(delivery.deliveryId)) {
      (deps.events ?? noEvents).emit({ kind: "delivery", name: "duplicate", deliveryId: delivery.deliveryId, hookId: delivery.hookId, event: delivery.event });
      logger.info({ delivery: delivery.deliveryId, hook: delivery.hookId, event: delivery.event }, "duplicate delivery ignored (its entry, left by the previous receiver, is being recorded)");
      res.status(200).json({ duplicate: true });
      return;
    }
    const summary = summarizePayload(delivery.payload);
    const receivedAt = new Date();
    const row = {
      hookId: delivery.hookId,
      deliveryId: delivery.deliveryId,
      event: delivery.event,
      repository: summary.repository,
      ref: summary.ref,
      afterSha: summary.after,
      receivedAt,
    };
    const log = { delivery: delivery.deliveryId, hook: delivery.hookId, event: delivery.event, repository: summary.repository, ref: summary.ref };
    if (delivery.event === "ping") {
      try {
        await batcher.record({ ...row, entry: undefined, outcome: "ping" });
      } catch (err) {
        throw unavailable("record the ping", err);
      }
      logger.info(log, "ping received");
      res.status(200).json({ ok: true, event: "ping" });
      return;
    }
    const decision = routeEvent(delivery, deployments);
    // A delivery a deployment follows gets its entry; one that none follows only its row.
    const name = decision.kind !== "void" ? entryName(delivery.deliveryId) : undefined;
    let outcome: "inserted" | "duplicate";
    try {
      if (decision.kind === "void") {
        outcome = await batcher.record({ ...row, entry: undefined, outcome: "voided", reason: decision.reason });
      } else {
        const entry: QueueEntry = {
          event: delivery.event,
          delivery_id: delivery.deliveryId,
          hook_id: delivery.hookId,
          received_at: receivedAt.toISOString(),
          source: "github",
          payload: delivery.payload,
        };
        // Serialized here, so that whatever this one delivery's payload does, it fails alone, not its batch.
        outcome = await batcher.enqueue({ ...row, entry: name, outcome: "queued" }, name!, Buffer.from(serializeEntry(entry)));
      }
    } catch (err) {
      throw unavailable(decision.kind === "void" ? "record the delivery" : "queue the delivery", err);
    }
    const about = { kind: "delivery", deliveryId: delivery.deliveryId, hookId: delivery.hookId, event: delivery.event, repository: summary.repository, ref: summary.ref } as const;
    const events = deps.events ?? noEvents;
    if (outcome === "duplicate") {
      events.emit({ ...about, name: "duplicate" });
      logger.info(log, "duplicate delivery ignored");
      res.status(200).json({ duplicate: true });
    } else if (decision.kind === "void") {
      events.emit({ ...about, name: "voided", reason: decision.reason });
      logger.warn({ ...log, reason: decision.reason }, "delivery voided: no deployment follows it");
      res.status(200).json({ voided: true, reason: decision.reason, deployments: [] });
    } else {
      events.emit({ ...about, name: "received", entry: name, deployments: decision.deployments });
      logger.info({ ...log, entry: name, deployments: decision.deployments }, "delivery queued");
      res.status(202).json({ queued: name, deployments: decision.deployments });
    }
  };
}

function unavailable(what: string, err: unknown): RequestError {
  if (err instanceof CommitUncertain) {
    return new RequestError("UNAVAILABLE", 503, `could not be sure to ${what}: ${err.message}; it may be queued: redelivered, it is queued or recognized as a duplicate`, { cause: err });
  }
  const why = err instanceof DeadlineExceeded ? `${err.message} (is Postgres down or overloaded?)` : errorMessage(err);
  return new RequestError("UNAVAILABLE", 503, `could not ${what}: ${why}; nothing was queued: ${REDELIVER}`, { cause: err });
}

/**
 * Deliveries whose COMMIT was lost: their entries stay in router/, and until their rows are
 * recorded (retried here, 1 s doubling to 30 s, for as long as the process lives; else by
 * the next start's recordOrphanedEntries) a redelivery of one is a duplicate.
 */
function recordUncertain(db: Db, rows: DeliveryRow[], readiness: Readiness, logger: Logger): void {
  const ids = rows.map((r) => r.deliveryId);
  readiness.expectUnrecorded(ids);
  logger.warn({ deliveries: ids }, "the COMMIT of these deliveries was lost with the database connection: their entries stay, and get their rows once the database answers");
  const attempt = (delayMs: number) => {
    recordAllIfMissing(db, rows).then(
      () => readiness.recorded(ids),
      () => setTimeout(() => attempt(Math.min(delayMs * 2, 30_000)), delayMs).unref(),
    );
  };
  attempt(1000);
}

/** What a 503 asks of whoever sent the delivery. */
export const REDELIVER = "redeliver it (GitHub does not retry by itself: Recent Deliveries → Redeliver, or the API)";

/** The deliveries these entry names are for. */
export function orphanDeliveryIds(names: readonly string[]): string[] {
  return names.map((name) => parseEntryName(name)?.deliveryId).filter((id): id is string => id !== undefined);
}

/** Orphans recorded per statement. */
const ADOPT_BATCH = 500;

/**
 * The receiver's file is durable before its dedupe row commits, so a receiver killed in
 * between leaves an entry in router/ with no row: GitHub, never having had an answer,
 * may be asked to redeliver, and without a row the redelivery would be queued a second time.
 * At start every entry still in router/ (`names`, scanned before the receiver takes
 * deliveries) gets its row, a statement per 500. The receiver already serves meanwhile:
 * `readiness` knows each of these deliveries from its entry's name (orphanDeliveryIds),
 * so that a redelivery is a duplicate before its row is recorded too.
 */
export async function recordOrphanedEntries(db: Db, layout: QueueLayout, logger: Logger, names: readonly string[], readiness?: Readiness): Promise<number> {
  let adopted = 0;
  for (let i = 0; i < names.length; i += ADOPT_BATCH) {
    const chunk = names.slice(i, i + ADOPT_BATCH);
    const rows: DeliveryRow[] = [];
    for (const name of chunk) {
      const read = await readEntryFile(path.join(layout.router, name));
      if (!read.ok) continue; // routed meanwhile, or not an entry (the router moves it aside)
      const parsed = parseEntry(read.text);
      if (!parsed.ok) continue; // the router dead-letters it
      const { entry } = parsed;
      const summary = summarizePayload(entry.payload);
      const receivedAt = new Date(entry.received_at);
      rows.push({
        hookId: entry.hook_id,
        deliveryId: entry.delivery_id,
        event: entry.event,
        repository: summary.repository,
        ref: summary.ref,
        afterSha: summary.after,
        receivedAt: Number.isNaN(receivedAt.getTime()) ? new Date() : receivedAt,
        entry: name,
        outcome: "queued",
      });
    }
    // Copies of one delivery (an admin's cp) are one row.
    const unique = [...new Map(rows.map((r) => [deliveryKey(r.hookId, r.deliveryId), r])).values()];
    adopted += await recordAllIfMissing(db, unique);
    readiness?.recorded(orphanDeliveryIds(chunk));
  }
  if (adopted > 0) logger.warn({ entries: adopted }, "recorded entries a previous receiver wrote but did not commit; their redeliveries are duplicates");
  return adopted;
}
