import { readdir } from "node:fs/promises";
import { isEntryName } from "./entry-name.ts";

/**
 * The entries of a queue directory in name (= arrival) order. Anything that is not a
 * complete entry (dot files, temporaries, editor backups ending in ~) is ignored.
 * A missing directory is an empty queue.
 */
export async function scanQueue(dir: string): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw err;
  }
  return names.filter(isEntryName).sort();
}
