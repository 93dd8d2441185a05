import { readdir } from "node:fs/promises";
import path from "node:path";
import { advanceEntryClock, isEntryName } from "./entry-name.ts";
import type { QueueLayout } from "./layout.ts";

/** The newest entry name in a directory, or undefined (a missing directory has none). */
async function newestIn(dir: string): Promise<string | undefined> {
  let newest: string | undefined;
  try {
    for (const name of await readdir(dir)) if (isEntryName(name) && (newest === undefined || name > newest)) newest = name;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT" && (err as NodeJS.ErrnoException).code !== "ENOTDIR") throw err;
  }
  return newest;
}

async function subdirs(dir: string): Promise<string[]> {
  try {
    return (await readdir(dir, { withFileTypes: true })).filter((d) => d.isDirectory()).map((d) => path.join(dir, d.name));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw err;
  }
}

/**
 * Before a process names entries: start its clock after the newest name in any queue of
 * this root (router/, every deployment's, every dead letter), and after `alsoIssued` (the
 * newest names the database recorded, for entries already handled and gone from disk).
 * Entry names are arrival order only if a restarted process, whose clock may be behind
 * (an NTP step, a VM restored from a snapshot), never names an entry before one already
 * issued.
 */
export async function seedEntryClock(layout: QueueLayout, alsoIssued: Array<string | null | undefined> = []): Promise<void> {
  const dirs = [layout.router, ...(await subdirs(path.join(layout.root, "deployments"))), ...(await subdirs(path.join(layout.root, "dead-letter")))];
  for (const name of [...(await Promise.all(dirs.map(newestIn))), ...alsoIssued]) advanceEntryClock(name);
}
