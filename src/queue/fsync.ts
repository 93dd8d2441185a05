import { open } from "node:fs/promises";

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
