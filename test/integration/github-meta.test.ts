import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { pino } from "pino";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { GithubHookRanges, META_CACHE_FILE } from "../../src/github/meta.ts";
import { type FakeGithub, startFakeGithub } from "../helpers/fake-github.ts";
import { LogCollector } from "../helpers/log-collector.ts";
import { until } from "../helpers/wait.ts";

/** GitHub's webhook ranges over time: the daily refresh, retries after a failure, a cache shared by two receivers. */
describe("GithubHookRanges", () => {
  let fake: FakeGithub;
  let dir: string;
  const open: GithubHookRanges[] = [];
  const logs = new LogCollector();
  const ranges = (dataDir: string, options: { refreshIntervalMs?: number; firstRetryMs?: number } = {}) => {
    const r = new GithubHookRanges({ apiUrl: fake.url, token: undefined, timeoutMs: 2000, dataDir, logger: pino({ level: "debug" }, logs), ...options });
    open.push(r);
    return r;
  };

  beforeAll(async () => {
    fake = await startFakeGithub();
  });
  afterEach(async () => {
    for (const r of open.splice(0)) await r.close();
    fake.setMetaStatus(undefined);
    await rm(dir, { recursive: true, force: true });
  });
  afterAll(async () => {
    await fake?.close();
  });
  const fresh = async () => (dir = await mkdtemp(path.join(tmpdir(), "deployq-meta-")));

  it("asks GitHub again once the refresh interval has passed, with If-None-Match; the 304 keeps the ranges", async () => {
    const r = ranges(await fresh(), { refreshIntervalMs: 300 });
    const asked = fake.metaRequests().length;
    await r.start();
    expect(r.allows("127.0.0.2")).toBe(true);
    expect(r.allows("::ffff:127.0.0.2")).toBe(true);
    expect(r.allows("127.0.0.3")).toBe(false);
    await until("the refresh", async () => fake.metaRequests().length >= asked + 2, 10_000);
    expect(fake.metaRequests().slice(asked, asked + 2)).toMatchObject([
      { ifNoneMatch: undefined, answered: 200, authorization: undefined },
      { ifNoneMatch: fake.metaEtag(), answered: 304 },
    ]);
    expect(r.allows("127.0.0.2")).toBe(true);
    expect(r.state()).toMatchObject({ known: true, ranges: 2, lastError: undefined });
    // Written atomically: no temporary is left beside it (once the refresh under way, and its save, are done).
    await r.close();
    expect(await readdir(dir)).toEqual([META_CACHE_FILE]);
  });

  it("retries a failed first fetch with backoff, and takes deliveries once it gets through", async () => {
    fake.setMetaStatus(503);
    const r = ranges(await fresh(), { firstRetryMs: 100 });
    const asked = fake.metaRequests().length;
    await r.start();
    expect(r.allows("127.0.0.2")).toBeUndefined();
    expect(r.state()).toEqual({ known: false, reason: `the last fetch failed: ${fake.url}/meta answered 503` });
    await until("a retry", async () => fake.metaRequests().length >= asked + 2, 10_000);
    fake.setMetaStatus(undefined);
    await until("the ranges", async () => r.allows("127.0.0.2"), 10_000);
    expect(r.allows("127.0.0.3")).toBe(false);
    expect(r.state()).toMatchObject({ known: true, lastError: undefined });
  });

  it("two receivers sharing data_dir: the second starts from the first's file, and when its refresh is due, takes the first's fresher one instead of asking GitHub", async () => {
    const shared = await fresh();
    const first = ranges(shared, { refreshIntervalMs: 100 });
    await first.start();
    // The second sends a token of its own, to tell its requests from the first's.
    const second = new GithubHookRanges({ apiUrl: fake.url, token: "second", timeoutMs: 2000, dataDir: shared, logger: pino({ level: "silent" }), refreshIntervalMs: 400 });
    open.push(second);
    await second.start();
    expect(second.allows("127.0.0.2")).toBe(true);
    const startedWith = (second.state() as { fetchedAt: Date }).fetchedAt.getTime();
    // Its refresh came (after 400 ms) and found the file the first one keeps refreshing.
    await until("the second's refresh", async () => {
      const state = second.state();
      return state.known && state.fetchedAt.getTime() > startedWith;
    }, 10_000);
    expect(fake.metaRequests().filter((r) => r.authorization === "Bearer second")).toEqual([]);
    expect(fake.metaRequests().filter((r) => r.authorization === undefined).length).toBeGreaterThanOrEqual(3);
  });

  it("does not use a cache of another API (GITHUB_API_URL changed) and fetches instead", async () => {
    const d = await fresh();
    await ranges(d).start();
    fake.setMetaStatus(500);
    const other = new GithubHookRanges({ apiUrl: `${fake.url}/api/v3`, token: "t", timeoutMs: 2000, dataDir: d, logger: pino({ level: "silent" }) });
    open.push(other);
    await other.start();
    expect(other.allows("127.0.0.2")).toBeUndefined();
    expect(fake.requests.at(-1)).toMatchObject({ method: "GET", path: "/api/v3/meta", authorization: "Bearer t" });
  });
});
