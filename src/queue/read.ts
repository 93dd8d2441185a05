import { constants as fsConstants } from "node:fs";
import { open } from "node:fs/promises";

/**
 * The most an entry file may hold. The receiver takes bodies up to GitHub's 25 MB and writes
 * them pretty-printed; anything far larger was not written by deployq.
 */
export const MAX_ENTRY_BYTES = 64 * 1024 * 1024;

export type EntryFile = { ok: true; text: string; modifiedMs: number } | { ok: false; problem: string } | { ok: false; gone: true };

/**
 * A file that does not parse and was modified less than this long ago may still be being
 * written in place (an admin's `cp` into a queue, where `mv` would be atomic): it is left
 * for the next pass, and moved aside only if it still does not parse after that.
 */
export const SETTLE_MS = 2000;

/** Whether an entry that did not parse may be one still being written (see SETTLE_MS). */
export const mayBeUnfinished = (read: { modifiedMs: number }, now = Date.now()) => now - read.modifiedMs < SETTLE_MS;

function kind(mode: number): string {
  switch (mode & fsConstants.S_IFMT) {
    case fsConstants.S_IFDIR:
      return "a directory";
    case fsConstants.S_IFIFO:
      return "a FIFO";
    case fsConstants.S_IFSOCK:
      return "a socket";
    case fsConstants.S_IFCHR:
    case fsConstants.S_IFBLK:
      return "a device";
    default:
      return "not a regular file";
  }
}

/**
 * Reads a queue entry the safe way: never through a symbolic link (O_NOFOLLOW: a link to
 * a file outside the queue root is neither followed nor quoted), never blocking on a FIFO
 * or a device (O_NONBLOCK, then regular files only), never more than MAX_ENTRY_BYTES. What
 * cannot be read says why in words of its own (`problem`), never in the file's content, so
 * the caller can move it aside and go on with the queue. `gone`: handled meanwhile.
 */
export async function readEntryFile(file: string): Promise<EntryFile> {
  let fh;
  try {
    fh = await open(file, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW | fsConstants.O_NONBLOCK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return { ok: false, gone: true };
    if (code === "ELOOP") return { ok: false, problem: "a symbolic link, not an entry (deployq never follows links in its queues)" };
    if (code === "EACCES" || code === "EPERM") {
      return { ok: false, problem: "unreadable by deployq's user (permission denied): an entry must be readable by the user the daemon runs as" };
    }
    if (code === "ENXIO") return { ok: false, problem: "a socket or FIFO, not an entry" };
    throw err;
  }
  try {
    const stat = await fh.stat();
    if (!stat.isFile()) return { ok: false, problem: `${kind(stat.mode)}, not an entry` };
    if (stat.size > MAX_ENTRY_BYTES) return { ok: false, problem: `${stat.size} bytes, more than an entry may hold (${MAX_ENTRY_BYTES})` };
    return { ok: true, text: await fh.readFile("utf8"), modifiedMs: stat.mtimeMs };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "EISDIR") return { ok: false, problem: "a directory, not an entry" };
    throw err;
  } finally {
    await fh.close();
  }
}
