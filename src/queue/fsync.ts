import { randomBytes } from "node:crypto";
import { constants as fsConstants } from "node:fs";
import { open, rename, rm } from "node:fs/promises";
import path from "node:path";

/**
 * fsync a directory so that a rename or unlink in it survives a power cut. Concurrent
 * callers share fsyncs: a caller that arrives while one is in flight waits for the next
 * one (which starts after its rename), together with everyone else who arrived meanwhile.
 */
const state = new Map<string, { running: Promise<void>; next?: Promise<void> }>();

async function fsyncDirNow(dir: string): Promise<void> {
  const fh = await open(dir, "r");
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export function fsyncDir(dir: string): Promise<void> {
  const current = state.get(dir);
  if (!current) {
    const running = fsyncDirNow(dir).finally(() => advance(dir, running));
    state.set(dir, { running });
    return running;
  }
  if (!current.next) {
    const next = current.running.catch(() => {}).then(() => fsyncDirNow(dir));
    current.next = next;
  }
  return current.next;
}

function advance(dir: string, finished: Promise<void>): void {
  const current = state.get(dir);
  if (!current || current.running !== finished) return;
  if (current.next) {
    const running = current.next;
    state.set(dir, { running });
    void running.then(
      () => advance(dir, running),
      () => advance(dir, running),
    );
  } else {
    state.delete(dir);
  }
}

/** How writeFileDurably's temporaries end, for a sweep of those a dead process left. */
export const DURABLE_TEMP_SUFFIX = ".tmp";

/**
 * Writes `data` to a temporary `<tempStem>.<pid>.<random>.tmp` next to `target` (never
 * following a symlink there), fsyncs it and renames it over `target`: after a crash the
 * file is the old one or the new one, never half. The caller fsyncs the directory (fsyncDir)
 * once for all its renames.
 */
export async function writeFileDurably(target: string, data: Buffer, mode: number, tempStem: string): Promise<void> {
  const temp = path.join(path.dirname(target), `${tempStem}.${process.pid}.${randomBytes(6).toString("hex")}${DURABLE_TEMP_SUFFIX}`);
  const fh = await open(temp, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_NOFOLLOW, mode);
  try {
    await fh.writeFile(data);
    await fh.chmod(mode); // the umask may have taken bits away
    await fh.sync();
  } catch (err) {
    await fh.close().catch(() => {});
    await rm(temp, { force: true });
    throw err;
  }
  await fh.close();
  try {
    await rename(temp, target);
  } catch (err) {
    await rm(temp, { force: true });
    throw err;
  }
}
