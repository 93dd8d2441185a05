import { randomUUID } from "node:crypto";
import { mkdir, readFile, rename, unlink, writeFile } from "node:fs/promises";
import path from "node:path";
import type { Logger } from "pino";
import { errorMessage } from "../errors.ts";
import { type AddressRange, AddressRanges, parseRange } from "../http/address-range.ts";

/**
 * GitHub's webhook source ranges: `hooks` of the public `GET /meta`
 * (https://docs.github.com/rest/meta/meta#get-github-meta-information), for
 * [github] allowlist. They are kept with GitHub's ETag in data_dir/github-meta.json, so that
 * a restart needs no GitHub (and the receivers of a pm2 cluster share one copy), and asked
 * for again once a day with If-None-Match (a 304 keeps them). A failed fetch keeps the last
 * ranges known and is retried with backoff; with none known at all, deliveries get 503.
 */

export const META_CACHE_FILE = "github-meta.json";
const DAY_MS = 86_400_000;
const FIRST_RETRY_MS = 30_000;
const MAX_RETRY_MS = 3_600_000;

/** What the cache file holds. */
interface MetaCache {
  version: 1;
  /** Ranges of another API (GITHUB_API_URL changed) are not used. */
  apiUrl: string;
  etag: string | undefined;
  hooks: string[];
  /** When GitHub last confirmed them (a 200 or a 304). */
  fetchedAt: string;
}

export interface HookRangesOptions {
  apiUrl: string;
  token: string | undefined;
  timeoutMs: number;
  dataDir: string;
  logger: Logger;
  /** Between two confirmations by GitHub (default: a day). */
  refreshIntervalMs?: number;
  /** The first retry after a failed fetch (default 30 s); it doubles, up to an hour. */
  firstRetryMs?: number;
}

/** What /healthz and the 403/503 answers say. */
export type HookRangesState =
  | { known: false; reason: string }
  | { known: true; fetchedAt: Date; ranges: number; lastError: string | undefined };

/** The cached ranges of `apiUrl` as the file holds them (for `deployq check`), or undefined. */
export async function cachedHookRanges(dataDir: string, apiUrl: string): Promise<{ hooks: string[]; fetchedAt: string } | undefined> {
  try {
    const cache = JSON.parse(await readFile(path.join(dataDir, META_CACHE_FILE), "utf8")) as MetaCache;
    return cache.version === 1 && cache.apiUrl === apiUrl && Array.isArray(cache.hooks) ? { hooks: cache.hooks, fetchedAt: cache.fetchedAt } : undefined;
  } catch {
    return undefined;
  }
}

export class GithubHookRanges {
  private readonly file: string;
  private readonly interval: number;
  private ranges: AddressRanges | undefined;
  private cache: MetaCache | undefined;
  private lastError: string | undefined;
  private readonly firstRetryMs: number;
  private retryMs: number;
  private timer: NodeJS.Timeout | undefined;
  private readonly abort = new AbortController();
  private refreshing: Promise<void> | undefined;
  private closed = false;

  constructor(private readonly options: HookRangesOptions) {
    this.file = path.join(options.dataDir, META_CACHE_FILE);
    this.interval = options.refreshIntervalMs ?? DAY_MS;
    this.firstRetryMs = options.firstRetryMs ?? FIRST_RETRY_MS;
    this.retryMs = this.firstRetryMs;
  }

  /**
   * Loads the cached ranges, then, when there are none or they are older than the refresh
   * interval, makes one attempt at GitHub (bounded by timeoutMs), and schedules the next.
   * Never rejects: a failure is logged and retried.
   */
  async start(): Promise<void> {
    await this.loadCache();
    const age = this.cache ? Date.now() - Date.parse(this.cache.fetchedAt) : Number.POSITIVE_INFINITY;
    if (age >= this.interval || !(age >= 0)) await this.refresh();
    else this.schedule(this.interval - age);
  }

  /** Whether `address` may post deliveries: undefined while no ranges are known. */
  allows(address: string): boolean | undefined {
    return this.ranges?.contains(address);
  }

  state(): HookRangesState {
    if (!this.ranges || !this.cache) {
      return { known: false, reason: this.lastError ? `the last fetch failed: ${this.lastError}` : "they have not been fetched yet" };
    }
    return { known: true, fetchedAt: new Date(this.cache.fetchedAt), ranges: this.ranges.ranges.length, lastError: this.lastError };
  }

  /** Asks GitHub (with If-None-Match when ranges are cached); one attempt at a time. */
  refresh(): Promise<void> {
    this.refreshing ??= this.fetchOnce().finally(() => {
      this.refreshing = undefined;
    });
    return this.refreshing;
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    this.abort.abort();
    await this.refreshing;
  }

  private schedule(ms: number): void {
    if (this.closed) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.scheduled(), ms);
    this.timer.unref();
  }

  /** Another receiver sharing data_dir may have refreshed the file meanwhile: then no request is needed. */
  private async scheduled(): Promise<void> {
    const before = this.cache?.fetchedAt;
    await this.loadCache();
    const fetchedAt = this.cache ? Date.parse(this.cache.fetchedAt) : Number.NaN;
    if (this.cache?.fetchedAt !== before && Date.now() - fetchedAt < this.interval) {
      this.lastError = undefined;
      this.retryMs = this.firstRetryMs;
      this.schedule(this.interval - (Date.now() - fetchedAt));
      return;
    }
    await this.refresh();
  }

  private async fetchOnce(): Promise<void> {
    const { apiUrl, token, timeoutMs, logger } = this.options;
    const url = `${apiUrl}/meta`;
    const etag = this.cache?.etag;
    try {
      const headers: Record<string, string> = { accept: "application/vnd.github+json", "user-agent": "deployq", "x-github-api-version": "2022-11-28" };
      if (token) headers.authorization = `Bearer ${token}`;
      if (etag && this.ranges) headers["if-none-match"] = etag;
      const res = await fetch(url, { headers, signal: AbortSignal.any([this.abort.signal, AbortSignal.timeout(timeoutMs)]) });
      if (res.status === 304 && this.cache && this.ranges) {
        await res.arrayBuffer();
        await this.save({ ...this.cache, fetchedAt: new Date().toISOString() });
        logger.debug({ ranges: this.ranges.ranges.length }, "GitHub's webhook ranges are unchanged (304)");
      } else if (res.ok) {
        const body = (await res.json()) as { hooks?: unknown };
        const hooks = Array.isArray(body.hooks) ? body.hooks.filter((h): h is string => typeof h === "string") : [];
        const parsed = hooks.map((h) => ({ text: h, range: parseRange(h) }));
        const bad = parsed.filter((p) => !p.range).map((p) => p.text);
        if (bad.length > 0) logger.warn({ ignored: bad }, "GitHub's /meta lists hook ranges deployq cannot read: ignored");
        const good = parsed.filter((p): p is { text: string; range: AddressRange } => p.range !== undefined);
        if (good.length === 0) throw new Error(`${url} answered ${res.status} without any \`hooks\` ranges (GitHub Enterprise Server may not list them: turn [github] allowlist off there)`);
        this.ranges = new AddressRanges(good.map((g) => g.range));
        // In use from now on, so no longer failing (a failed save below says so again).
        this.lastError = undefined;
        await this.save({ version: 1, apiUrl, etag: res.headers.get("etag") ?? undefined, hooks: good.map((g) => g.text), fetchedAt: new Date().toISOString() });
        logger.info({ ranges: good.length }, "fetched GitHub's webhook source ranges (GET /meta hooks)");
      } else {
        await res.arrayBuffer();
        throw new Error(`${url} answered ${res.status}`);
      }
      this.lastError = undefined;
      this.retryMs = this.firstRetryMs;
      this.schedule(this.interval);
    } catch (err) {
      if (this.closed) return;
      const why = (err as { name?: string }).name === "TimeoutError" ? `${url} did not answer within ${timeoutMs} ms` : errorMessage(err);
      this.lastError = why;
      const retryInMs = this.retryMs;
      this.retryMs = Math.min(this.retryMs * 2, MAX_RETRY_MS);
      if (this.ranges) {
        logger.warn({ retryInMs, cachedFrom: this.cache?.fetchedAt }, `cannot refresh GitHub's webhook ranges (${why}); the cached ranges are still used. Check that this host reaches ${apiUrl}`);
      } else {
        logger.error({ retryInMs }, `cannot fetch GitHub's webhook ranges (${why}): with [github] allowlist on, every delivery gets 503 until they are known. Check that this host reaches ${apiUrl} (GITHUB_API_URL), or turn allowlist off`);
      }
      this.schedule(retryInMs);
    }
  }

  private async loadCache(): Promise<void> {
    let text: string;
    try {
      text = await readFile(this.file, "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") this.options.logger.warn({ file: this.file, err: errorMessage(err) }, "cannot read the cached GitHub webhook ranges: fetching them");
      return;
    }
    try {
      const cache = JSON.parse(text) as MetaCache;
      if (cache.version !== 1 || cache.apiUrl !== this.options.apiUrl || !Array.isArray(cache.hooks) || Number.isNaN(Date.parse(cache.fetchedAt))) return;
      const ranges = cache.hooks.map(parseRange);
      if (ranges.length === 0 || ranges.some((r) => r === undefined)) return;
      this.ranges = new AddressRanges(ranges as AddressRange[]);
      this.cache = cache;
    } catch (err) {
      this.options.logger.warn({ file: this.file, err: errorMessage(err) }, "the cached GitHub webhook ranges are not readable JSON: fetching them again");
    }
  }

  /** Atomically (a temporary file renamed over it): several receivers of a pm2 cluster may write it at once. */
  private async save(cache: MetaCache): Promise<void> {
    this.cache = cache;
    await mkdir(path.dirname(this.file), { recursive: true });
    const tmp = `${this.file}.${process.pid}.${randomUUID().slice(0, 8)}.tmp`;
    try {
      await writeFile(tmp, `${JSON.stringify(cache, null, 2)}\n`);
      await rename(tmp, this.file);
    } catch (err) {
      await unlink(tmp).catch(() => {});
      // The ranges are in memory: only the next start would have to fetch them again.
      this.options.logger.warn({ file: this.file, err: errorMessage(err) }, "cannot write the cache of GitHub's webhook ranges: a restart will fetch them again; make data_dir writable");
    }
  }
}
