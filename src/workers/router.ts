import { readFile } from "node:fs/promises";
import path from "node:path";
import type { Logger } from "pino";
import type { Settings } from "../config/load.ts";
import type { Db } from "../db/client.ts";
import { recordOutcome } from "../db/queries/record-delivery.ts";
import { errorMessage } from "../errors.ts";
import { QueueEntry, summarizePayload } from "../queue/entry.ts";
import { parseEntryName } from "../queue/entry-name.ts";
import type { QueueLayout } from "../queue/layout.ts";
import { deadLetterEntry } from "../queue/dead-letter.ts";
import { linkInto, removeEntry } from "../queue/move.ts";
import { QueueWorker } from "../queue/watch.ts";
import { routeEvent } from "./match.ts";

export interface RouterDeps {
  settings: Pick<Settings, "deployments" | "rescanIntervalMs">;
  layout: QueueLayout;
  db: Db;
  logger: Logger;
  watch: boolean;
}

/**
 * Takes each entry in router/, oldest first: hands it to every deployment that follows
 * its repository and branch (or voids it, with the reason), records that, then removes it.
 * Each step is idempotent, so a crash anywhere repeats work and never loses an event.
 */
export function createRouter(deps: RouterDeps): QueueWorker {
  const { layout, db, logger } = deps;
  const deployments = [...deps.settings.deployments.values()];

  async function handle(name: string): Promise<void> {
    const file = path.join(layout.router, name);
    let text: string;
    try {
      text = await readFile(file, "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return; // handled by a pass that raced this one
      throw err;
    }
    const parsed = parseEntry(text);
    if (!parsed.ok) {
      await deadLetter(file, name, parsed.error, parsed.json);
      return;
    }
    const entry = parsed.entry;
    const summary = summarizePayload(entry.payload);
    const decision = routeEvent(entry, deployments);
    const base = {
      hookId: entry.hook_id,
      deliveryId: entry.delivery_id,
      event: entry.event,
      repository: summary.repository,
      ref: summary.ref,
      afterSha: summary.after,
      receivedAt: validDate(entry.received_at),
      entry: name,
    };
    // Record first: if the database is down nothing has moved yet, and the pass is retried.
    if (decision.kind === "void") {
      await recordOutcome(db, { ...base, outcome: "voided", reason: decision.reason });
      await removeEntry(file);
      logger.info({ entry: name, event: entry.event, repository: summary.repository, ref: summary.ref, reason: decision.reason }, "event voided");
      return;
    }
    await recordOutcome(db, { ...base, outcome: "routed", routedTo: decision.deployments });
    for (const deployment of decision.deployments) await linkInto(file, layout.deployment(deployment));
    await removeEntry(file);
    logger.info({ entry: name, repository: decision.repository, ref: decision.ref, sha: decision.after, deployments: decision.deployments }, "event routed");
  }

  /** A malformed entry is moved aside with its error, never deleted: an admin can fix and requeue it. */
  async function deadLetter(file: string, name: string, error: string, json: Record<string, unknown> | undefined): Promise<void> {
    const dir = layout.deadLetter("router");
    const deliveryId = parseEntryName(name)?.deliveryId ?? name;
    await recordOutcome(db, {
      hookId: typeof json?.hook_id === "string" ? json.hook_id : "",
      deliveryId: typeof json?.delivery_id === "string" ? json.delivery_id : deliveryId,
      event: typeof json?.event === "string" ? json.event : "(malformed)",
      repository: undefined,
      ref: undefined,
      afterSha: undefined,
      receivedAt: new Date(),
      entry: name,
      outcome: "dead-letter",
      reason: error,
    });
    await deadLetterEntry(layout, file, "router", json, error);
    logger.error({ entry: name, err: error }, `malformed entry moved to ${path.relative(layout.root, dir)}/; fix it, then \`deployq queue requeue router --entry ${name}\``);
  }

  return new QueueWorker({
    name: "router",
    dir: layout.router,
    handle,
    rescanIntervalMs: deps.settings.rescanIntervalMs,
    watch: deps.watch,
    logger,
  });
}

type ParsedEntry = { ok: true; entry: QueueEntry } | { ok: false; error: string; json: Record<string, unknown> | undefined };

export function parseEntry(text: string): ParsedEntry {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    return { ok: false, error: `not valid JSON: ${errorMessage(err)}`, json: undefined };
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    return { ok: false, error: "not a JSON object", json: undefined };
  }
  const result = QueueEntry.safeParse(json);
  if (!result.success) {
    const problems = result.error.issues.map((i) => `${i.path.join(".") || "(entry)"}: ${i.message}`).join("; ");
    return { ok: false, error: `not a deployq entry: ${problems}`, json: json as Record<string, unknown> };
  }
  return { ok: true, entry: result.data };
}

function validDate(value: string): Date {
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? new Date() : d;
}
