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

/**
 * How many entries a queue directory holds and its oldest one's name, without sorting them
 * all (status and /metrics read every queue at each request; only this is needed).
 * A missing directory is an empty queue.
 */
export async function queueSummary(dir: string): Promise<{ entries: number; oldest: string | undefined }> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return { entries: 0, oldest: undefined };
    throw err;
  }
  let entries = 0;
  let oldest: string | undefined;
  for (const name of names) {
    if (!isEntryName(name)) continue;
    entries++;
    if (oldest === undefined || name < oldest) oldest = name;
  }
  return { entries, oldest };
}
