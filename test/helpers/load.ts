import { randomUUID } from "node:crypto";
import { readFile, readdir } from "node:fs/promises";
import { createServer } from "node:net";
import path from "node:path";
import type { QueueEntry } from "../../src/queue/entry.ts";
import { isEntryName, parseEntryName } from "../../src/queue/entry-name.ts";
import { type SignedRequest, pushPayload, randomSha } from "./workspace.ts";

/** A port that was free a moment ago (listen on 0, read it, close). */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (typeof address !== "object" || address === null) throw new Error("no address");
  return address.port;
}

/**
 * Polls `condition` until it returns a truthy value (returned) or the deadline passes
 * (throws, with `describe()` for the message). The pause between polls is not a
 * synchronisation: the condition is what the test waits for.
 */
export async function waitUntil<T>(
  condition: () => Promise<T | undefined | false> | T | undefined | false,
  options: { timeoutMs?: number; intervalMs?: number; what: string; describe?: () => Promise<string> | string },
): Promise<T> {
  const deadline = Date.now() + (options.timeoutMs ?? 30_000);
  let lastError: unknown;
  for (;;) {
    try {
      const value = await condition();
      if (value) return value;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() > deadline) {
      const detail = options.describe ? `: ${await options.describe()}` : "";
      const cause = lastError ? ` (last error: ${String(lastError)})` : "";
      throw new Error(`timed out after ${options.timeoutMs ?? 30_000} ms waiting until ${options.what}${detail}${cause}`);
    }
    await new Promise((resolve) => setTimeout(resolve, options.intervalMs ?? 25));
  }
}

/** Resolves once GET `${url}/` answers 200 (the server is listening and serving). */
export async function waitForHttp(url: string, timeoutMs = 30_000): Promise<void> {
  await waitUntil(
    async () => {
      const res = await fetch(`${url}/`, { signal: AbortSignal.timeout(2_000) });
      await res.arrayBuffer();
      return res.status === 200;
    },
    { timeoutMs, what: `GET ${url}/ answers 200` },
  );
}

/** The complete entries of a queue directory (no dot files, temporaries), sorted; [] when it does not exist. */
export async function entryNames(dir: string): Promise<string[]> {
  try {
    return (await readdir(dir)).filter(isEntryName).sort();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw err;
  }
}

/** Every name in a directory, whatever it is; [] when it does not exist. */
export async function allNames(dir: string): Promise<string[]> {
  try {
    return (await readdir(dir)).sort();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw err;
  }
}

/** Reads every entry file of a directory and checks it is JSON whose delivery_id matches its name. */
export async function readEntries(dir: string): Promise<Array<{ name: string; deliveryId: string; entry: QueueEntry }>> {
  const names = await allNames(dir);
  const out: Array<{ name: string; deliveryId: string; entry: QueueEntry }> = [];
  for (const name of names) {
    const parsed = parseEntryName(name);
    if (!parsed) throw new Error(`${path.join(dir, name)} is not an entry name`);
    const text = await readFile(path.join(dir, name), "utf8");
    let entry: QueueEntry;
    try {
      entry = JSON.parse(text) as QueueEntry;
    } catch (err) {
      throw new Error(`${path.join(dir, name)} is not JSON: ${String(err)}`);
    }
    out.push({ name, deliveryId: parsed.deliveryId, entry });
  }
  return out;
}

/**
 * Entry names with strictly increasing 19-digit nanosecond prefixes (so name order is
 * known), starting a little in the past, each with a fresh delivery ID.
 */
export function plannedNames(count: number, startNs: bigint = BigInt(Date.now() - 60_000) * 1_000_000n): string[] {
  return Array.from({ length: count }, (_, i) => `${(startNs + BigInt(i) * 1_000n).toString().padStart(19, "0")}-${randomUUID()}.json`);
}

/** An entry as the receiver writes it: a push to `repository` `branch`. */
export function pushEntry(name: string, options: { repository?: string; branch?: string; hookId?: string } = {}): QueueEntry {
  const deliveryId = parseEntryName(name)?.deliveryId;
  if (!deliveryId) throw new Error(`not an entry name: ${name}`);
  return {
    event: "push",
    delivery_id: deliveryId,
    hook_id: options.hookId ?? "",
    received_at: new Date().toISOString(),
    source: "github",
    payload: pushPayload({ repository: options.repository ?? "octo-org/api", branch: options.branch ?? "main", after: randomSha() }),
  };
}

export type Outcome =
  | { kind: "status"; status: number; body: Record<string, unknown> }
  | { kind: "error"; error: string };

/** POSTs a signed delivery; a connection error (refused, reset, closed) is an outcome, not a throw. */
export async function tryPost(url: string, request: SignedRequest, timeoutMs = 30_000): Promise<Outcome> {
  try {
    const res = await fetch(`${url}/github-webhook`, {
      method: "POST",
      headers: request.headers,
      body: request.body as BodyInit, // Buffer is a valid body; the DOM types (preact pulls them in) do not say so
      signal: AbortSignal.timeout(timeoutMs),
    });
    const text = await res.text();
    let body: Record<string, unknown>;
    try {
      body = JSON.parse(text) as Record<string, unknown>;
    } catch {
      body = { raw: text };
    }
    return { kind: "status", status: res.status, body };
  } catch (err) {
    const cause = (err as { cause?: { code?: string; message?: string } }).cause;
    return { kind: "error", error: cause?.code ?? cause?.message ?? String(err) };
  }
}

/**
 * Sends `requests` with `concurrency` senders, each taking the next unsent one, until
 * all are sent or `stop()` is true (checked before each send). Calls `onOutcome` as
 * each answer (or connection error) arrives. Returns the outcome of each request sent.
 */
export async function runLoad(
  url: string,
  requests: readonly SignedRequest[],
  options: { concurrency: number; stop?: () => boolean; onOutcome?: (index: number, outcome: Outcome) => void },
): Promise<Map<number, Outcome>> {
  const outcomes = new Map<number, Outcome>();
  let next = 0;
  const sender = async () => {
    while (next < requests.length && !(options.stop?.() ?? false)) {
      const index = next++;
      const outcome = await tryPost(url, requests[index]!);
      outcomes.set(index, outcome);
      options.onOutcome?.(index, outcome);
    }
  };
  await Promise.all(Array.from({ length: options.concurrency }, sender));
  return outcomes;
}
