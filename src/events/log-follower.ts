import { type FSWatcher, watch } from "node:fs";
import { type FileHandle, open } from "node:fs/promises";

/** A line longer than this is handed on in pieces (a build that prints megabytes without a newline). */
export const MAX_LINE_BYTES = 16 * 1024;
const CHUNK_BYTES = 64 * 1024;
/** fs.watch is a hint (it can miss a change, and the file may not exist yet): the file is looked at this often anyway. */
const POLL_MS = 250;

export interface LogFollower {
  /** The deploy finished: read the file to its end, hand on its last line, then stop. */
  finish(): void;
  /** Stops at once. */
  close(): void;
  /** Resolves once the follower stopped (finished and read to the end, or closed). */
  readonly done: Promise<void>;
}

/**
 * Follows a deploy's log file as it grows, from a byte offset: each complete line is handed
 * to `onLine` with the offset of its first byte (its position in the file, which a client
 * can resume from), without its newline. The file is read on fs.watch changes and every
 * POLL_MS; it may not exist yet when following starts. The deploy writes the file; this
 * only reads it, so no number of followers slows the deploy.
 */
export function followLog(file: string, options: { from?: number; onLine(line: string, offset: number): void; onError?(err: unknown): void }): LogFollower {
  let position = options.from ?? 0;
  /** Bytes of a line not complete yet, and where it starts. */
  let pending: Buffer = Buffer.alloc(0);
  let pendingAt = position;
  let handle: FileHandle | undefined;
  let watcher: FSWatcher | undefined;
  let reading: Promise<void> | undefined;
  let again = false;
  let finishing = false;
  let stopped = false;
  let resolveDone!: () => void;
  const done = new Promise<void>((resolve) => (resolveDone = resolve));
  const buffer = Buffer.alloc(CHUNK_BYTES);
  const timer = setInterval(() => wake(), POLL_MS);
  timer.unref();

  function stop(): void {
    if (stopped) return;
    stopped = true;
    clearInterval(timer);
    watcher?.close();
    const h = handle;
    handle = undefined;
    void h?.close().catch(() => {});
    resolveDone();
  }

  function emit(bytes: Buffer, at: number): void {
    let line = bytes.toString("utf8");
    if (line.endsWith("\r")) line = line.slice(0, -1);
    options.onLine(line, at);
  }

  function take(chunk: Buffer): void {
    let data = pending.length > 0 ? Buffer.concat([pending, chunk]) : chunk;
    let at = pendingAt;
    for (;;) {
      const nl = data.indexOf(0x0a);
      if (nl < 0) break;
      if (nl > MAX_LINE_BYTES) {
        emit(data.subarray(0, MAX_LINE_BYTES), at);
        at += MAX_LINE_BYTES;
        data = data.subarray(MAX_LINE_BYTES);
        continue;
      }
      emit(data.subarray(0, nl), at);
      at += nl + 1;
      data = data.subarray(nl + 1);
    }
    while (data.length >= MAX_LINE_BYTES) {
      emit(data.subarray(0, MAX_LINE_BYTES), at);
      at += MAX_LINE_BYTES;
      data = data.subarray(MAX_LINE_BYTES);
    }
    pending = Buffer.from(data);
    pendingAt = at;
  }

  async function read(): Promise<void> {
    if (!handle) {
      try {
        handle = await open(file, "r");
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
        if (finishing) stop(); // finished without a log: nothing to read
        return;
      }
      if (stopped) {
        await handle.close();
        return;
      }
      try {
        watcher = watch(file, () => wake());
        watcher.on("error", () => {});
      } catch {
        // No watcher (an unsupported filesystem): the poll reads it.
      }
    }
    for (;;) {
      if (stopped || !handle) return;
      const { bytesRead } = await handle.read(buffer, 0, CHUNK_BYTES, position);
      if (bytesRead === 0) break;
      position += bytesRead;
      take(buffer.subarray(0, bytesRead));
      // Let the lines just handed on be written to their sockets before reading more.
      await new Promise((resolve) => setImmediate(resolve));
    }
    if (finishing) {
      if (pending.length > 0) emit(pending, pendingAt);
      pending = Buffer.alloc(0);
      stop();
    }
  }

  function wake(): void {
    if (stopped) return;
    if (reading) {
      again = true;
      return;
    }
    reading = read()
      .catch((err: unknown) => {
        options.onError?.(err);
        stop();
      })
      .finally(() => {
        reading = undefined;
        if (again) {
          again = false;
          wake();
        }
      });
  }

  wake();
  return {
    finish() {
      finishing = true;
      wake();
    },
    close: stop,
    done,
  };
}
