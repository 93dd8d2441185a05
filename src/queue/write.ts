import { randomBytes } from "node:crypto";
import { mkdir, open, readdir, rename, unlink } from "node:fs/promises";
import path from "node:path";
import { type QueueEntry, serializeEntry } from "./entry.ts";
import { fsyncDir } from "./fsync.ts";
import type { QueueLayout } from "./layout.ts";
import { isProcessAlive } from "../pid-lock.ts";

/** Temporary names carry the writer's pid, so a sweep removes only what a dead process left. */
function tmpName(name: string): string {
  return `${name}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`;
}

/**
 * Writes an entry so that it appears in `dir` only whole and survives a crash:
 * write into .tmp/, fsync the file, rename into the queue, fsync the queue directory.
 * When this resolves, the entry is durable.
 */
export async function writeEntryDurably(layout: QueueLayout, dir: string, name: string, entry: QueueEntry): Promise<string> {
  const target = await writeEntryFile(layout, dir, name, entry);
  await fsyncDir(dir);
  return target;
}

/**
 * The first half of writeEntryDurably: the entry is whole in `dir`, but durable only once
 * the caller has fsync'd `dir` (one fsync can then serve many entries).
 */
export async function writeEntryFile(layout: QueueLayout, dir: string, name: string, entry: QueueEntry): Promise<string> {
  const tmp = path.join(layout.tmp, tmpName(name));
  const target = path.join(dir, name);
  const fh = await open(tmp, "wx", 0o640);
  try {
    await fh.writeFile(serializeEntry(entry));
    await fh.sync();
  } catch (err) {
    await fh.close().catch(() => {});
    await unlink(tmp).catch(() => {});
    throw err;
  } finally {
    await fh.close().catch(() => {});
  }
  try {
    await rename(tmp, target);
  } catch (err) {
    await unlink(tmp).catch(() => {});
    throw err;
  }
  return target;
}

export async function ensureQueueDirs(layout: QueueLayout, deployments: Iterable<string> = []): Promise<void> {
  const dirs = [layout.tmp, layout.router, layout.deadLetter("router")];
  for (const name of deployments) dirs.push(layout.deployment(name), layout.deadLetter(name));
  for (const dir of dirs) await mkdir(dir, { recursive: true, mode: 0o750 });
}


/** Removes temporaries left in .tmp/ by processes that no longer run. Returns what it removed. */
export async function sweepTmp(layout: QueueLayout): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(layout.tmp);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw err;
  }
  const removed: string[] = [];
  for (const name of names) {
    const pid = Number(/\.(\d+)\.[0-9a-f]+\.tmp$/.exec(name)?.[1]);
    if (Number.isInteger(pid) && pid !== process.pid && isProcessAlive(pid)) continue;
    if (pid === process.pid) continue;
    await unlink(path.join(layout.tmp, name)).catch(() => {});
    removed.push(name);
  }
  return removed;
}
