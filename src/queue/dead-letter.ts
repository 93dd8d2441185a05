import { mkdir, writeFile } from "node:fs/promises";
import path from "node:path";
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
