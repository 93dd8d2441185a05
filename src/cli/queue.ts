import { readFile } from "node:fs/promises";
import type { Settings } from "../config/load.ts";
import { DeployqError } from "../errors.ts";
import { type EntryInfo, allQueues, findEntry, flush, listQueue, requeue } from "../queue/admin.ts";
import { queueLayout } from "../queue/layout.ts";
import { existingQueue } from "./names.ts";
import { formatAge, printJson, table } from "./output.ts";

function short(value: string | undefined, n: number): string {
  if (!value) return "-";
  return value.length > n ? value.slice(0, n) : value;
}

function entryRows(entries: EntryInfo[]): string[][] {
  return entries.map((e) => [
    e.entry,
    formatAge(e.ageSeconds),
    e.problem ?? e.event ?? "-",
    e.repository ?? "-",
    (e.ref ?? "-").replace(/^refs\/heads\//, ""),
    short(e.sha, 7),
    e.lastError ? short(e.lastError.replace(/\s+/g, " "), 60) : "",
  ]);
}

export async function queueLs(settings: Settings, spec: string | undefined, json: boolean): Promise<void> {
  const layout = queueLayout(settings.queuesDir);
  if (spec === undefined) {
    const queues = await allQueues(layout, settings.deployments.keys());
    const summary = await Promise.all(
      queues.map(async (q) => {
        const entries = await listQueue(q);
        return { queue: q.label, dir: q.dir, entries: entries.length, oldestAgeSeconds: entries[0]?.ageSeconds ?? null };
      }),
    );
    if (json) return printJson(summary);
    process.stdout.write(
      `${table(
        ["QUEUE", "ENTRIES", "OLDEST", "DIRECTORY"],
        summary.map((s) => [s.queue, String(s.entries), s.oldestAgeSeconds === null ? "-" : formatAge(s.oldestAgeSeconds), s.dir]),
      )}\n`,
    );
    return;
  }
  const queue = await existingQueue(settings, spec);
  const entries = await listQueue(queue);
  if (json) return printJson(entries);
  if (entries.length === 0) {
    process.stdout.write(`${queue.label} is empty (${queue.dir})\n`);
    return;
  }
  process.stdout.write(`${table(["ENTRY", "AGE", "EVENT", "REPOSITORY", "REF", "SHA", "ERROR"], entryRows(entries))}\n`);
}

export async function queueShow(settings: Settings, id: string, json: boolean): Promise<void> {
  const found = await findEntry(queueLayout(settings.queuesDir), id, settings.deployments.keys());
  if (found.length === 0) {
    throw new DeployqError("ENTRY", `no entry ${JSON.stringify(id)} in any queue: \`deployq queue ls <queue>\` lists entries`);
  }
  if (json) {
    const withContent = await Promise.all(
      found.map(async (f) => ({ ...f, content: await readFile(f.file, "utf8").then((t) => JSON.parse(t) as unknown).catch(() => null) })),
    );
    return printJson(withContent);
  }
  for (const f of found) {
    process.stdout.write(`# ${f.queue}: ${f.file}\n`);
    process.stdout.write(await readFile(f.file, "utf8").catch((err: NodeJS.ErrnoException) => `(${err.code ?? "unreadable"})\n`));
  }
}

/** Puts dead-lettered entries of `name` (router or a deployment) back into its queue: `deployq queue requeue` and the dashboard. */
export async function requeueDeadLetters(settings: Settings, name: string, entry: string | undefined): Promise<string[]> {
  if (name !== "router" && !settings.deployments.has(name)) {
    throw new DeployqError("ENTRY", `"${name}" is neither router nor a configured deployment: see \`deployq queue ls\``);
  }
  return requeue(queueLayout(settings.queuesDir), name, entry);
}

/** Deletes every entry of a queue for good: `deployq queue flush --yes` and the dashboard. */
export async function flushQueue(settings: Settings, spec: string): Promise<{ queue: string; removed: string[] }> {
  const queue = await existingQueue(settings, spec);
  return { queue: queue.label, removed: await flush(queue) };
}

export async function queueRequeue(settings: Settings, name: string, entry: string | undefined, json: boolean): Promise<void> {
  const moved = await requeueDeadLetters(settings, name, entry);
  if (json) return printJson({ requeued: moved, into: name });
  process.stdout.write(moved.length === 0 ? `dead-letter/${name} is empty: nothing to requeue\n` : `requeued ${moved.length} entr${moved.length === 1 ? "y" : "ies"} into ${name}:\n${moved.map((m) => `  ${m}\n`).join("")}`);
}

export async function queueFlush(settings: Settings, spec: string, yes: boolean, json: boolean): Promise<number> {
  if (!yes) {
    const queue = await existingQueue(settings, spec);
    const count = (await listQueue(queue)).length;
    process.stderr.write(`this deletes all ${count} entries of ${queue.label} (${queue.dir}) for good: add --yes to do it\n`);
    return 2;
  }
  const { queue, removed } = await flushQueue(settings, spec);
  if (json) printJson({ flushed: removed, queue });
  else process.stdout.write(`deleted ${removed.length} entr${removed.length === 1 ? "y" : "ies"} from ${queue}\n`);
  return 0;
}
