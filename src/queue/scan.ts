import { readdir, stat } from "node:fs/promises";
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
  scanStats.set(dir, (scanStats.get(dir) ?? 0) + names.length);
  return names.filter(isEntryName).sort();
}

/** How many names scanQueue has read from each directory, in this process: for tests and the bench (one number per queue directory). */
export const scanStats = new Map<string, number>();

/** What a queue directory held when it was last read, and how to tell it has not changed since. */
interface Summary {
  entries: number;
  oldest: string | undefined;
}
interface Cached extends Summary {
  dev: bigint;
  ino: bigint;
  mtimeNs: bigint;
  ctimeNs: bigint;
}

/**
 * A directory whose last change is at least this much older than the moment it was read can
 * be trusted to be unchanged while its times stay the same. A change within the same tick of
 * the file system's clock (a few ms; a second on some) as the read leaves the times as they
 * were: a directory that changed that recently is read again at the next call (git's "racy
 * clean" rule).
 */
const QUIET_NS = 2_000_000_000n;
/** At most this many directories remembered (a queue root has two per deployment, and router/). */
const CACHED_MAX = 10_000;
const cache = new Map<string, Cached>();
/** How many directories queueSummary actually listed (the rest were unchanged): for tests and the bench. */
export const queueSummaryStats = { listed: 0 };

/**
 * How many entries a queue directory holds and its oldest one's name, without sorting them
 * all (status, the dashboard and /metrics read every queue at each request; only this is
 * needed). The directory is the truth at every call: it is stat'ed each time, and listed
 * again whenever its modification or change time (or inode) differs from the last listing,
 * or that listing was made too soon after a change to be trusted (QUIET_NS). Listing 100
 * queues of 100 entries at each page view and scrape was most of their time.
 * A missing directory is an empty queue.
 */
export async function queueSummary(dir: string): Promise<Summary> {
  let before;
  try {
    before = await stat(dir, { bigint: true });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") {
      cache.delete(dir);
      return { entries: 0, oldest: undefined };
    }
    throw err;
  }
  const known = cache.get(dir);
  if (known && known.dev === before.dev && known.ino === before.ino && known.mtimeNs === before.mtimeNs && known.ctimeNs === before.ctimeNs) {
    return { entries: known.entries, oldest: known.oldest };
  }
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return { entries: 0, oldest: undefined };
    throw err;
  }
  queueSummaryStats.listed++;
  let entries = 0;
  let oldest: string | undefined;
  for (const name of names) {
    if (!isEntryName(name)) continue;
    entries++;
    if (oldest === undefined || name < oldest) oldest = name;
  }
  // Remembered only if the directory had been quiet for a while before it was listed (its
  // times, stat'ed before the listing, then describe what the listing saw).
  const listedAt = BigInt(Date.now()) * 1_000_000n;
  const lastChange = before.mtimeNs > before.ctimeNs ? before.mtimeNs : before.ctimeNs;
  if (listedAt - lastChange >= QUIET_NS) {
    if (cache.size >= CACHED_MAX && !cache.has(dir)) cache.delete(cache.keys().next().value!);
    cache.set(dir, { entries, oldest, dev: before.dev, ino: before.ino, mtimeNs: before.mtimeNs, ctimeNs: before.ctimeNs });
  } else {
    cache.delete(dir);
  }
  return { entries, oldest };
}
