import { watch } from "node:fs";
import { open } from "node:fs/promises";

/**
 * Follows a deploy's log file from a byte offset and hands on whole lines as they are
 * written, each batch with the offset just past it (what an SSE client resumes from). A
 * small stand-in, kept apart so that src/events/log-follower.ts can replace it: fs.watch
 * for promptness, a poll in case a change notice is lost, reads from the offset only.
 */
export interface LogFollower {
  /** Reads what was written since the last read (whole lines only); called by the watcher and the poll. */
  readNow(): Promise<void>;
  close(): void;
}

export interface FollowOptions {
  file: string;
  offset: number;
  onLines(text: string, offset: number): void;
  pollMs?: number;
}

/** At most this much per read: a build printing fast is sent in several batches. */
const CHUNK = 64 * 1024;

export function followLogFile(options: FollowOptions): LogFollower {
  let offset = options.offset;
  let closed = false;
  let reading: Promise<void> | undefined;
  let again = false;

  const readOnce = async () => {
    const handle = await open(options.file, "r").catch(() => undefined);
    if (!handle) return;
    try {
      for (;;) {
        const buffer = Buffer.alloc(CHUNK);
        const { bytesRead } = await handle.read(buffer, 0, CHUNK, offset);
        if (bytesRead === 0 || closed) return;
        const got = buffer.subarray(0, bytesRead);
        const end = got.lastIndexOf(0x0a);
        // A line still being written waits for its newline (unless it alone fills a chunk).
        const take = end >= 0 ? end + 1 : bytesRead === CHUNK ? bytesRead : 0;
        if (take === 0) return;
        offset += take;
        options.onLines(got.subarray(0, take).toString("utf8"), offset);
        if (bytesRead < CHUNK) return;
      }
    } finally {
      await handle.close();
    }
  };

  const readNow = (): Promise<void> => {
    if (closed) return Promise.resolve();
    if (reading) {
      again = true;
      return reading;
    }
    reading = (async () => {
      do {
        again = false;
        await readOnce();
      } while (again && !closed);
    })().finally(() => {
      reading = undefined;
    });
    return reading;
  };

  let watcher: ReturnType<typeof watch> | undefined;
  try {
    watcher = watch(options.file, () => void readNow().catch(() => {}));
    watcher.on("error", () => {});
  } catch {
    // no watch (the file is gone, or inotify is out of watches): the poll does it
  }
  const poll = setInterval(() => void readNow().catch(() => {}), options.pollMs ?? 1000);
  poll.unref();
  return {
    readNow,
    close() {
      closed = true;
      clearInterval(poll);
      watcher?.close();
    },
  };
}
