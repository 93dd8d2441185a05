import { type FSWatcher, watch } from "node:fs";
import type { Logger } from "pino";
import { errorMessage } from "../errors.ts";
import { isEntryName } from "./entry-name.ts";
import { scanQueue } from "./scan.ts";

export interface QueueWorkerOptions {
  /** For logs: "router" or the deployment name. */
  name: string;
  dir: string;
  /**
   * Called once per pass with the queue's entries in name order (never twice at once).
   * It may stop early when `stopping()` turns true; what it leaves is handled next pass.
   * Must be idempotent: a pass can repeat work a crash interrupted.
   */
  handle: (entryNames: string[], stopping: () => boolean) => Promise<void>;
  rescanIntervalMs: number;
  /**
   * Whether a pass now would do nothing (a paused deployment): then the directory is not even
   * read. Without it, a paused queue being filled (the router hands over a batch at a time)
   * was listed and sorted whole once per batch: quadratic in its backlog.
   */
  skip?: () => Promise<boolean>;
  /** The directory watcher turns arrivals into work at once; off, the rescan alone finds them. */
  watch: boolean;
  logger: Logger;
}

/**
 * Drives one queue directory: scans it in name order at start, on every watcher event and
 * every `rescanIntervalMs`. Watcher events are only hints (they can be missed, repeated or
 * coalesced, and the kernel drops inotify overflow silently): the directory is the truth.
 * Passes never overlap; a handler that throws (the database is down, say) ends the pass,
 * and the next pass starts again from the oldest entry, so order is kept.
 */
export class QueueWorker {
  private watcher: FSWatcher | undefined;
  private timer: NodeJS.Timeout | undefined;
  private draining: Promise<void> | undefined;
  private again = false;
  private closed = false;
  private closing: Promise<void> | undefined;
  private failing = false;
  private readonly opts: QueueWorkerOptions;

  constructor(opts: QueueWorkerOptions) {
    this.opts = opts;
  }

  async start(): Promise<void> {
    if (this.opts.watch) {
      // One inotify watch on the directory; every event naming an entry is a hint to scan.
      // (chokidar, which the design first named, re-reads and stats the whole directory on
      // every change: a 5,000-entry backlog took minutes to drain instead of seconds.)
      const watcher = watch(this.opts.dir, (_event, name) => {
        if (name === null || isEntryName(String(name))) void this.kick();
      });
      this.watcher = watcher;
      watcher.on("error", (err) => this.opts.logger.warn({ queue: this.opts.name, err: errorMessage(err) }, "queue watcher error; the periodic rescan continues"));
    }
    this.timer = setInterval(() => this.kick(), this.opts.rescanIntervalMs);
    this.timer.unref();
    // The first pass starts now; start() does not wait for it (a deploy can take minutes).
    void this.kick();
  }

  /** Asks for a pass over the queue; resolves when a pass that started after this call ends. */
  kick(): Promise<void> {
    if (this.closed) return Promise.resolve();
    if (this.draining) {
      this.again = true;
      return this.draining;
    }
    this.draining = this.drainLoop().finally(() => {
      this.draining = undefined;
    });
    return this.draining;
  }

  /** Resolves once the queue is empty or the worker is closed (for tests and `deployq` one-shots). */
  get idle(): Promise<void> {
    return this.draining ?? Promise.resolve();
  }

  private async drainLoop(): Promise<void> {
    do {
      this.again = false;
      await this.drainOnce();
    } while (this.again && !this.closed);
  }

  private async drainOnce(): Promise<void> {
    let names: string[];
    try {
      if (this.opts.skip && (await this.opts.skip())) return this.recovered();
      names = await scanQueue(this.opts.dir);
    } catch (err) {
      this.reportFailure(err);
      return;
    }
    if (this.closed) return;
    if (names.length === 0) return this.recovered();
    try {
      await this.opts.handle(names, () => this.closed);
    } catch (err) {
      this.reportFailure(err);
      return;
    }
    this.recovered();
  }

  private recovered(): void {
    if (this.failing) {
      this.failing = false;
      this.opts.logger.info({ queue: this.opts.name }, "queue is being processed again");
    }
  }

  /** Logged once per outage, not once per retry. */
  private reportFailure(err: unknown): void {
    if (this.failing) return;
    this.failing = true;
    this.opts.logger.error(
      { queue: this.opts.name, err: errorMessage(err) },
      `cannot process queue ${this.opts.name}; entries stay queued and are retried every ${this.opts.rescanIntervalMs} ms`,
    );
  }

  /** Whether the last pass failed (reported by /healthz). */
  get healthy(): boolean {
    return !this.failing;
  }

  /** Stops watching; the entry being handled finishes, later ones stay queued. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.closed = true;
      if (this.timer) clearInterval(this.timer);
      this.watcher?.close();
      await this.draining;
    })();
    return this.closing;
  }
}
