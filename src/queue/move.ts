import { link, lstat, mkdir, rename, unlink } from "node:fs/promises";
import path from "node:path";
import { DeployqError } from "../errors.ts";
import { type QueueEntry } from "./entry.ts";
import { fsyncDir } from "./fsync.ts";
import type { QueueLayout } from "./layout.ts";
import { readEntryFile } from "./read.ts";
import { writeEntryDurably, writeEntryFile } from "./write.ts";

/**
 * What link() refuses where a copy may still work. EPERM: with fs.protected_hardlinks=1
 * (Debian's default) only a file's owner, or a user who may read and write it, may link it,
 * and an entry a post-receive hook wrote as another user (git, say) is that user's, mode
 * 0640 (https://docs.kernel.org/admin-guide/sysctl/fs.html#protected-hardlinks). EACCES:
 * what a security module (SELinux, AppArmor) answers for a link it refuses (a directory
 * deployq may not write fails the copy too). EXDEV: router/ on another mount than the
 * deployment's queue (a bind mount counts).
 */
const COPY_WHEN_LINK_FAILS = new Set(["EPERM", "EACCES", "EXDEV"]);

/**
 * Hands entries to another queue under the same name: a hard link (atomic, one inode), or,
 * when the link is refused, a copy written through .tmp/ (fsync'd, renamed in whole, and
 * then the daemon's own file). Idempotent either way (an entry already there is a hand-over
 * already done), so a crash between two hand-overs repeats one at worst and never loses
 * one. Entries are never modified in place (always rewritten through .tmp/), so sharing an
 * inode is safe.
 */
export async function handOverInto(layout: QueueLayout, sources: readonly string[], dir: string): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o750 });
  for (const src of sources) {
    try {
      await link(src, path.join(dir, path.basename(src)));
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "EEXIST") continue;
      if (!COPY_WHEN_LINK_FAILS.has(code ?? "")) throw err;
      await copyInto(layout, src, dir);
    }
  }
  // One fsync makes the whole batch durable, links and copies alike (each copy's data is fsync'd already).
  await fsyncDir(dir);
}

async function copyInto(layout: QueueLayout, src: string, dir: string): Promise<void> {
  const name = path.basename(src);
  if (await exists(path.join(dir, name))) return;
  const read = await readEntryFile(src);
  if (!read.ok) {
    // The caller has just read it, so it was removed or replaced meanwhile: this pass fails, and the next one routes what is there.
    const why = "gone" in read ? "it is gone" : read.problem;
    throw new DeployqError("ENTRY", `cannot copy ${src} into ${dir}: ${why} (removed or replaced while being routed; the next pass routes what is there)`);
  }
  await writeEntryFile(layout, dir, name, Buffer.from(read.text));
}

async function exists(file: string): Promise<boolean> {
  try {
    await lstat(file);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return false;
    throw err;
  }
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
