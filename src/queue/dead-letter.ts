import { mkdir, writeFile } from "node:fs/promises";
import path from "node:path";
import type { Logger } from "pino";
import type { QueueEntry } from "./entry.ts";
import type { QueueLayout } from "./layout.ts";
import { moveEntry, rewriteInto } from "./move.ts";

/**
 * Moves an entry to dead-letter/<queue>/ with its error, never deleting it: an entry that
 * is JSON gets `last_error`, `failed_at` (and `attempts`) written into it; one that is not
 * JSON at all is kept byte for byte, with the error in `<entry>.error` beside it.
 */
export async function deadLetterEntry(
  layout: QueueLayout,
  file: string,
  queue: string,
  entry: Record<string, unknown> | undefined,
  error: string,
  attempts?: number,
): Promise<string> {
  const dir = layout.deadLetter(queue);
  const failedAt = new Date().toISOString();
  if (entry) {
    const { retry_at: _r, ...rest } = entry;
    return rewriteInto(layout, file, dir, {
      ...(rest as QueueEntry),
      ...(attempts !== undefined ? { attempts } : {}),
      last_error: error.slice(0, 8000),
      failed_at: failedAt,
    });
  }
  // The error first: an entry is never seen in dead-letter/ without it (a crash between the
  // two leaves the entry where it was, dead-lettered again, and its .error rewritten).
  await mkdir(dir, { recursive: true, mode: 0o750 });
  await writeFile(path.join(dir, `${path.basename(file)}.error`), `${failedAt} ${error}\n`);
  return moveEntry(file, dir);
}

/**
 * What a rename into dead-letter/ can meet that no retry will change: a directory another
 * user owns (moving a directory rewrites its "..", which needs write permission on it), a
 * file under a security module's or the file system's refusal, a mount point, a name
 * already taken in dead-letter/ by a directory.
 */
const CANNOT_MOVE = new Set(["EACCES", "EPERM", "EBUSY", "ENOTEMPTY", "EEXIST", "EISDIR", "ENOTDIR"]);

/**
 * Files that are not entries and cannot be moved aside either: each is left where it is and
 * skipped by every pass (so it holds up nothing behind it), reported once with what to do,
 * not once per pass. Anything else that fails the move (the disk is full, the database is
 * down) is thrown, and the pass retried, as before.
 */
export class Unmovable {
  private readonly reported = new Set<string>();

  constructor(
    private readonly logger: Logger,
    private readonly queue: string,
  ) {}

  /** Runs `moveAside` (the dead-letter move and what follows it); false when the file could not be moved and stays. */
  async attempt(file: string, problem: string, moveAside: () => Promise<void>): Promise<boolean> {
    try {
      await moveAside();
      this.reported.delete(file);
      return true;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? "";
      if (!CANNOT_MOVE.has(code)) throw err;
      if (!this.reported.has(file)) {
        this.reported.add(file);
        this.logger.error(
          { queue: this.queue, entry: path.basename(file), err: problem, code },
          `${file} is not an entry (${problem}) and cannot be moved to dead-letter/${this.queue}/ (${code}); it is skipped and holds up nothing, but stays until you remove it by hand as its owner or root`,
        );
      }
      return false;
    }
  }
}
