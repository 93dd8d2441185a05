import { link, mkdir, rename, unlink } from "node:fs/promises";
import path from "node:path";
import { type QueueEntry } from "./entry.ts";
import { fsyncDir } from "./fsync.ts";
import type { QueueLayout } from "./layout.ts";
import { writeEntryDurably } from "./write.ts";

/**
 * Hands an entry to another queue under the same name with a hard link: atomic, and
 * idempotent (a link that already exists is a hand-over already done), so a crash
 * between two hand-overs repeats one at worst and never loses one. Entries are never
 * modified in place (always rewritten through .tmp/), so sharing an inode is safe.
 */
export async function linkAllInto(sources: readonly string[], dir: string): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o750 });
  for (const src of sources) {
    try {
      await link(src, path.join(dir, path.basename(src)));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
    }
  }
  // One fsync makes the whole batch durable.
  await fsyncDir(dir);
}

/** Removes entries from their queues, durably (one fsync per directory). Removing one that is already gone is fine. */
export async function removeEntries(files: readonly string[]): Promise<void> {
  for (const file of files) {
    try {
      await unlink(file);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    }
  }
  for (const dir of new Set(files.map((f) => path.dirname(f)))) await fsyncDir(dir);
}

export function removeEntry(file: string): Promise<void> {
  return removeEntries([file]);
}

/** Moves an entry, unchanged, to another queue (rename: atomic). */
export async function moveEntry(src: string, dir: string): Promise<string> {
  await mkdir(dir, { recursive: true, mode: 0o750 });
  const target = path.join(dir, path.basename(src));
  await rename(src, target);
  await fsyncDir(dir);
  await fsyncDir(path.dirname(src));
  return target;
}

/** Writes a changed entry (attempts, error) into `dir`, then removes the original. */
export async function rewriteInto(layout: QueueLayout, src: string, dir: string, entry: QueueEntry): Promise<string> {
  await mkdir(dir, { recursive: true, mode: 0o750 });
  const target = await writeEntryDurably(layout, dir, path.basename(src), entry);
  if (path.resolve(src) !== target) await removeEntry(src);
  return target;
}
