import { readFile, readdir, unlink } from "node:fs/promises";
import path from "node:path";
import { DEPLOYMENT_NAME } from "../config/schema.ts";
import { DeployqError } from "../errors.ts";
import { type QueueEntry, summarizePayload } from "./entry.ts";
import { parseEntryName } from "./entry-name.ts";
import { type QueueLayout, ROUTER } from "./layout.ts";
import { moveEntry, removeEntry, rewriteInto } from "./move.ts";
import { scanQueue } from "./scan.ts";

/** A queue as admins name it: `router`, a deployment name, or `dead-letter/<router|name>`. */
export interface QueueRef {
  label: string;
  dir: string;
}

export function resolveQueue(layout: QueueLayout, spec: string): QueueRef {
  const dead = /^dead-letter\/(.+)$/.exec(spec);
  const name = dead ? dead[1]! : spec.replace(/^deployments\//, "");
  if (name !== ROUTER && !DEPLOYMENT_NAME.test(name)) {
    throw new DeployqError("ENTRY", `no queue called ${JSON.stringify(spec)}: use router, a deployment name, or dead-letter/<router|deployment>`);
  }
  if (dead) return { label: `dead-letter/${name}`, dir: layout.deadLetter(name) };
  if (name === ROUTER) return { label: ROUTER, dir: layout.router };
  return { label: name, dir: layout.deployment(name) };
}

async function subdirs(dir: string): Promise<string[]> {
  try {
    return (await readdir(dir, { withFileTypes: true }))
      .filter((d) => d.isDirectory() && (d.name === ROUTER || DEPLOYMENT_NAME.test(d.name)))
      .map((d) => d.name)
      .sort();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw err;
  }
}

/** Every queue that exists on disk, plus the configured deployments' (which may not exist yet). */
export async function allQueues(layout: QueueLayout, configured: Iterable<string> = []): Promise<QueueRef[]> {
  const deployments = new Set([...configured, ...(await subdirs(path.join(layout.root, "deployments")))]);
  const dead = await subdirs(path.join(layout.root, "dead-letter"));
  return [
    resolveQueue(layout, ROUTER),
    ...[...deployments].sort().map((d) => resolveQueue(layout, d)),
    ...dead.map((d) => resolveQueue(layout, `dead-letter/${d}`)),
  ];
}

export interface EntryInfo {
  queue: string;
  entry: string;
  file: string;
  receivedAt: string;
  ageSeconds: number;
  event: string | undefined;
  deliveryId: string | undefined;
  repository: string | undefined;
  ref: string | undefined;
  sha: string | undefined;
  attempts: number | undefined;
  lastError: string | undefined;
  /** Set when the file cannot be read as an entry. */
  problem?: string;
}

export async function describeEntry(queue: QueueRef, name: string, now = Date.now()): Promise<EntryInfo> {
  const file = path.join(queue.dir, name);
  const epochMs = parseEntryName(name)?.epochMs ?? now;
  const info: EntryInfo = {
    queue: queue.label,
    entry: name,
    file,
    receivedAt: new Date(epochMs).toISOString(),
    ageSeconds: Math.max(0, Math.round((now - epochMs) / 1000)),
    event: undefined,
    deliveryId: parseEntryName(name)?.deliveryId,
    repository: undefined,
    ref: undefined,
    sha: undefined,
    attempts: undefined,
    lastError: undefined,
  };
  try {
    const json = JSON.parse(await readFile(file, "utf8")) as Partial<QueueEntry>;
    const summary = summarizePayload(json.payload);
    Object.assign(info, {
      event: json.event,
      repository: summary.repository,
      ref: summary.ref,
      sha: summary.after,
      attempts: json.attempts,
      lastError: json.last_error,
    });
  } catch (err) {
    info.problem = (err as NodeJS.ErrnoException).code === "ENOENT" ? "gone (handled meanwhile)" : "not a readable entry";
    try {
      info.lastError = (await readFile(`${file}.error`, "utf8")).trim();
    } catch {
      // no sidecar
    }
  }
  return info;
}

export async function listQueue(queue: QueueRef): Promise<EntryInfo[]> {
  const now = Date.now();
  const names = await scanQueue(queue.dir);
  return Promise.all(names.map((n) => describeEntry(queue, n, now)));
}

/** Finds an entry by file name or delivery ID in every queue. */
export async function findEntry(layout: QueueLayout, id: string, configured: Iterable<string> = []): Promise<EntryInfo[]> {
  const needle = path.basename(id).toLowerCase();
  const found: EntryInfo[] = [];
  for (const queue of await allQueues(layout, configured)) {
    for (const name of await scanQueue(queue.dir)) {
      if (name.toLowerCase() === needle || parseEntryName(name)?.deliveryId === needle) found.push(await describeEntry(queue, name));
    }
  }
  return found;
}

/**
 * Puts dead-lettered entries back into their queue (all of them, or one by name or
 * delivery ID), without their attempts and error, so they are tried afresh. A bulk
 * requeue into a deployment's queue follows the rule of a burst: only its newest entry
 * runs; the others go back marked `superseded_by` it, and the worker records them as
 * superseded (so that requeuing three dead letters never runs two stale ones first).
 */
export async function requeue(layout: QueueLayout, name: string, only?: string): Promise<string[]> {
  const from = resolveQueue(layout, `dead-letter/${name}`);
  const to = resolveQueue(layout, name);
  const needle = only?.toLowerCase();
  const names = (await scanQueue(from.dir)).filter(
    (n) => needle === undefined || n.toLowerCase() === needle || parseEntryName(n)?.deliveryId === needle,
  );
  if (only !== undefined && names.length === 0) {
    throw new DeployqError("ENTRY", `no entry ${JSON.stringify(only)} in ${from.label}: \`deployq queue ls ${from.label}\` lists them`);
  }
  const winner = only === undefined && to.dir !== layout.router ? names.at(-1) : undefined;
  for (const n of names) {
    const file = path.join(from.dir, n);
    let json: Record<string, unknown> | undefined;
    try {
      const parsed: unknown = JSON.parse(await readFile(file, "utf8"));
      if (typeof parsed === "object" && parsed !== null && !Array.isArray(parsed)) json = parsed as Record<string, unknown>;
    } catch {
      // unparseable: moved back as it is (an admin may have fixed it; the router says if not)
    }
    if (json) {
      const { attempts: _a, last_error: _e, failed_at: _f, retry_at: _r, superseded_by: _s, checks_waiting: _c, ...fresh } = json;
      const requeues = (typeof fresh.requeues === "number" ? fresh.requeues : 0) + 1;
      await rewriteInto(layout, file, to.dir, { ...fresh, requeues, ...(winner !== undefined && n !== winner ? { superseded_by: winner } : {}) } as QueueEntry);
    } else {
      await moveEntry(file, to.dir);
    }
    await unlink(`${file}.error`).catch(() => {});
  }
  return names;
}

/** Deletes every entry of a queue (and error notes beside them). Returns what it deleted. */
export async function flush(queue: QueueRef): Promise<string[]> {
  const names = await scanQueue(queue.dir);
  for (const n of names) {
    await removeEntry(path.join(queue.dir, n));
    await unlink(path.join(queue.dir, `${n}.error`)).catch(() => {});
  }
  return names;
}
