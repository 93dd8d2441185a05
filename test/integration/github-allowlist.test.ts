import { randomUUID } from "node:crypto";
import { readFile, readdir, writeFile } from "node:fs/promises";
import { request } from "node:http";
import path from "node:path";
import { eq } from "drizzle-orm";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Daemon, startDaemon } from "../../src/daemon.ts";
import { deliveries } from "../../src/db/schema.ts";
import { META_CACHE_FILE } from "../../src/github/meta.ts";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import { type FakeGithub, startFakeGithub } from "../helpers/fake-github.ts";
import { LogCollector } from "../helpers/log-collector.ts";
import { runDeployq } from "../helpers/processes.ts";
import { DEFAULT_DEPLOYMENTS, type Workspace, createWorkspace, pushPayload, randomSha, signedDelivery } from "../helpers/workspace.ts";

/**
 * [github] allowlist and [server] trust_proxy against a real receiver and the fake GitHub's
 * GET /meta. Loopback answers all of 127.0.0.0/8 on Linux, so each request picks its source
 * address: 127.0.0.2 is within the fake's hook ranges, 127.0.0.3 is not, 127.0.0.4 is the
 * configured reverse proxy.
 */
const GITHUB = "127.0.0.2";
const STRANGER = "127.0.0.3";
const PROXY = "127.0.0.4";

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Record<string, unknown>;
}

/** A request from `from` (its source address), as http.request sends it. */
function send(url: string, from: string, options: { method?: string; path?: string; headers?: Record<string, string>; body?: string } = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request(`${url}${options.path ?? "/github-webhook"}`, { method: options.method ?? "POST", localAddress: from, headers: options.headers, agent: false }, (res) => {
      let text = "";
      res.on("data", (c: Buffer) => (text += c.toString()));
      res.on("end", () => {
        let body: Record<string, unknown>;
        try {
          body = JSON.parse(text) as Record<string, unknown>;
        } catch {
          body = { raw: text };
        }
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body });
      });
    });
    req.on("error", reject);
    req.end(options.body);
  });
}

async function deliver(url: string, from: string, forwardedFor?: string): Promise<Answer & { delivery: string }> {
  const signed = await signedDelivery(pushPayload({ repository: "octo-org/api", branch: "main", after: randomSha() }));
  const headers = { ...signed.headers, ...(forwardedFor ? { "x-forwarded-for": forwardedFor } : {}) };
  const answer = await send(url, from, { headers, body: signed.body as string });
  return { ...answer, delivery: signed.headers["x-github-delivery"]! };
}

const allowlistOn = (trustProxy: string) => `trust_proxy = ${trustProxy}\n\n[github]\nallowlist = true\n${DEFAULT_DEPLOYMENTS}`;

describe("[github] allowlist", () => {
  let fake: FakeGithub;
  let tdb: TestDatabase;
  const workspaces: Workspace[] = [];
  const daemons: Daemon[] = [];
  const logs = new LogCollector();
  const logLines = () => logs.text.trim().split("\n").filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);

  const start = async (ws: Workspace) => {
    const daemon = await startDaemon({ settings: ws.settings, role: "receiver", logger: pino({ level: "warn" }, logs), database: tdb.database });
    daemons.push(daemon);
    return daemon;
  };
  const stop = async (daemon: Daemon) => {
    await daemon.close();
    daemons.splice(daemons.indexOf(daemon), 1);
  };
  const workspace = async (deployments: string, env: NodeJS.ProcessEnv = {}) => {
    const ws = await createWorkspace({ deployments, env: { GITHUB_API_URL: fake.url, ...env } });
    workspaces.push(ws);
    return ws;
  };
  const routerFiles = (ws: Workspace) => readdir(path.join(ws.queuesDir, "router"));
  const rowsOf = (delivery: string) => tdb.database.db.select().from(deliveries).where(eq(deliveries.deliveryId, delivery));
  const cacheOf = async (ws: Workspace) => JSON.parse(await readFile(path.join(ws.settings.dataDir, META_CACHE_FILE), "utf8")) as { etag: string; hooks: string[]; fetchedAt: string; apiUrl: string };
  /** The cache as if GitHub had last confirmed it two days ago: the next start asks again. */
  const backdate = async (ws: Workspace) => {
    const cache = await cacheOf(ws);
    await writeFile(path.join(ws.settings.dataDir, META_CACHE_FILE), JSON.stringify({ ...cache, fetchedAt: new Date(Date.now() - 2 * 86_400_000).toISOString() }));
  };
  /** `deployq check --json`'s allowlist and trust_proxy lines. */
  const check = async (ws: Workspace) => {
    const run = await runDeployq(["check", "--json"], { ...ws.env, DEPLOYQ_CONFIG: ws.configPath });
    const results = JSON.parse(run.stdout) as Array<{ name: string; ok: boolean; detail: string }>;
    return results.filter((r) => r.name === "allowlist" || r.name === "trust_proxy");
  };
  const health = async (daemon: Daemon) => {
    // Not fetch(): its keep-alive connection would hold the daemon's close() until it times out.
    const res = await send(daemon.url!, "127.0.0.1", { method: "GET", path: "/healthz" });
    return { status: res.status, body: res.body as { checks: Record<string, string> } };
  };

  beforeAll(async () => {
    fake = await startFakeGithub();
    tdb = await createTestDatabase("postgres");
  });
  afterAll(async () => {
    for (const d of [...daemons]) await d.close();
    await fake?.close();
    await tdb?.dispose();
    for (const ws of workspaces) await ws.dispose();
  });

  describe("with GitHub's ranges fetched at start, and a trusted proxy", () => {
    let ws: Workspace;
    let daemon: Daemon;
    beforeAll(async () => {
      ws = await workspace(allowlistOn(`["${PROXY}"]`), { GITHUB_TOKEN: fake.token });
      daemon = await start(ws);
    });

    it("fetched GET /meta once at start, with the token, and cached the hook ranges with GitHub's ETag in data_dir", async () => {
      const asked = fake.metaRequests();
      expect(asked).toHaveLength(1);
      expect(asked[0]).toMatchObject({ method: "GET", path: "/meta", authorization: `Bearer ${fake.token}`, ifNoneMatch: undefined, answered: 200 });
      expect(await cacheOf(ws)).toMatchObject({ apiUrl: fake.url, etag: fake.metaEtag(), hooks: ["127.0.0.2/32", "::ffff:127.0.0.2/128"] });
      const { status, body } = await health(daemon);
      expect(status).toBe(200);
      expect(body.checks["github allowlist"]).toMatch(/^ok: 2 ranges from GitHub, \d{4}-/);
    });

    it("queues a signed delivery from inside GitHub's ranges (202)", async () => {
      const res = await deliver(daemon.url!, GITHUB);
      expect(res.status, JSON.stringify(res.body)).toBe(202);
      expect(await routerFiles(ws)).toContain(res.body.queued);
    });

    it("refuses one from outside them with 403 naming the address, and reads, queues and records nothing", async () => {
      const before = await routerFiles(ws);
      const res = await deliver(daemon.url!, STRANGER);
      expect(res.status).toBe(403);
      expect(res.body.error).toBe(`${STRANGER} is not within GitHub's webhook source ranges (GET /meta hooks), and [github] allowlist is on: refused, nothing was read`);
      expect(await routerFiles(ws)).toEqual(before);
      expect(await rowsOf(res.delivery)).toEqual([]);
      expect(logLines().some((l) => l.msg === "refused a webhook delivery from outside GitHub's webhook ranges" && l.address === STRANGER)).toBe(true);
    });

    it("does not believe X-Forwarded-For from a peer that is not in trust_proxy, and says where to add it", async () => {
      const before = await routerFiles(ws);
      const res = await deliver(daemon.url!, STRANGER, GITHUB);
      expect(res.status).toBe(403);
      expect(res.body.error).toMatch(new RegExp(`^${STRANGER.replace(/\./g, "\\.")} is not within GitHub's webhook source ranges`));
      expect(res.body.error).toContain(`the request carries X-Forwarded-For but came from ${STRANGER}, which is not in [server] trust_proxy: if ${STRANGER} is your reverse proxy, add it there`);
      expect(await routerFiles(ws)).toEqual(before);
    });

    it("believes X-Forwarded-For from a configured proxy: GitHub's address through it is queued, another is refused", async () => {
      const inside = await deliver(daemon.url!, PROXY, GITHUB);
      expect(inside.status, JSON.stringify(inside.body)).toBe(202);
      expect(await routerFiles(ws)).toContain(inside.body.queued);
      // A client may put anything in front: the address the trusted proxy appended is the one that counts.
      const outside = await deliver(daemon.url!, PROXY, `${GITHUB}, ${STRANGER}`);
      expect(outside.status).toBe(403);
      expect(outside.body.error).toMatch(new RegExp(`^${STRANGER.replace(/\./g, "\\.")} is not within`));
      expect(outside.body.error).not.toContain("trust_proxy");
      expect(await rowsOf(outside.delivery)).toEqual([]);
      // The proxy's own address is not GitHub's either.
      expect((await deliver(daemon.url!, PROXY)).status).toBe(403);
    });

    it("counts the refusals in deployq_webhook_requests_total", async () => {
      const text = String((await send(daemon.url!, "127.0.0.1", { method: "GET", path: "/metrics" })).body.raw);
      const refused = /deployq_webhook_requests_total\{event="push",status="403"\} (\d+)/.exec(text);
      expect(Number(refused?.[1])).toBeGreaterThanOrEqual(4);
    });

    it("restarts from the cache without GitHub: GitHub's /meta down, no request, deliveries from its ranges still queued", async () => {
      await stop(daemon);
      fake.setMetaStatus(500);
      const asked = fake.metaRequests().length;
      daemon = await start(ws);
      expect(fake.metaRequests()).toHaveLength(asked);
      expect((await deliver(daemon.url!, GITHUB)).status).toBe(202);
      expect((await deliver(daemon.url!, STRANGER)).status).toBe(403);
      await stop(daemon);
    });

    it("refreshes stale ranges with If-None-Match; a failed refresh keeps the cached ranges, and /healthz says so", async () => {
      await backdate(ws);
      const asked = fake.metaRequests().length;
      daemon = await start(ws);
      const refresh = fake.metaRequests().slice(asked);
      expect(refresh).toMatchObject([{ ifNoneMatch: fake.metaEtag(), answered: 500 }]);
      expect((await deliver(daemon.url!, GITHUB)).status).toBe(202);
      const { status, body } = await health(daemon);
      expect(status).toBe(200);
      expect(body.checks["github allowlist"]).toMatch(new RegExp(`^ok: the last refresh failed \\(${fake.url.replace(/[.]/g, "\\.")}/meta answered 500\\); using the cached ranges from \\d{4}-`));
      await stop(daemon);
    });

    it("a refresh GitHub answers 304 keeps the ranges and records the new confirmation", async () => {
      fake.setMetaStatus(undefined);
      await backdate(ws);
      const stale = Date.parse((await cacheOf(ws)).fetchedAt);
      const asked = fake.metaRequests().length;
      daemon = await start(ws);
      expect(fake.metaRequests().slice(asked)).toMatchObject([{ ifNoneMatch: fake.metaEtag(), answered: 304 }]);
      const cache = await cacheOf(ws);
      expect(Date.parse(cache.fetchedAt)).toBeGreaterThan(stale + 86_400_000);
      expect(cache.hooks).toEqual(["127.0.0.2/32", "::ffff:127.0.0.2/128"]);
      expect((await deliver(daemon.url!, GITHUB)).status).toBe(202);
      await stop(daemon);
    });

    it("deployq check asks GitHub's /meta once and shows the cache and the trusted proxies", async () => {
      const asked = fake.metaRequests().length;
      const cached = await cacheOf(ws);
      expect(await check(ws)).toEqual([
        { name: "allowlist", ok: true, detail: `${fake.url}/meta lists 2 webhook source ranges; cached in ${path.join(ws.settings.dataDir, META_CACHE_FILE)}: 2 ranges from ${cached.fetchedAt}` },
        { name: "trust_proxy", ok: true, detail: `X-Forwarded-For is believed from ${PROXY}` },
      ]);
      expect(fake.metaRequests()).toHaveLength(asked + 1);
      expect(await cacheOf(ws)).toEqual(cached);
    });

    it("new ranges from GitHub (a changed ETag) replace the cached ones", async () => {
      fake.setMetaHooks([`${STRANGER}/32`]);
      await backdate(ws);
      daemon = await start(ws);
      expect(fake.metaRequests().at(-1)).toMatchObject({ answered: 200 });
      expect(await cacheOf(ws)).toMatchObject({ etag: fake.metaEtag(), hooks: [`${STRANGER}/32`] });
      expect((await deliver(daemon.url!, STRANGER)).status).toBe(202);
      expect((await deliver(daemon.url!, GITHUB)).status).toBe(403);
      await stop(daemon);
      fake.setMetaHooks(["127.0.0.2/32", "::ffff:127.0.0.2/128"]);
    });
  });

  it("answers 503 with Retry-After while GitHub's ranges are not known (no cache, /meta failing), and queues nothing", async () => {
    fake.setMetaStatus(500);
    try {
      const ws = await workspace(allowlistOn("[]"));
      const daemon = await start(ws);
      const res = await deliver(daemon.url!, GITHUB);
      expect(res.status).toBe(503);
      expect(res.headers["retry-after"]).toBe("60");
      expect(res.body.error).toMatch(new RegExp(`^GitHub's webhook source ranges are not known yet \\(the last fetch failed: ${fake.url.replace(/[.]/g, "\\.")}/meta answered 500\\), and \\[github\\] allowlist is on: nothing was queued`));
      expect(await routerFiles(ws)).toEqual([]);
      expect(await rowsOf(res.delivery)).toEqual([]);
      const { status, body } = await health(daemon);
      expect(status).toBe(503);
      expect(body.checks["github allowlist"]).toMatch(/^GitHub's webhook ranges are not known yet \(the last fetch failed: .*answered 500\): deliveries get 503$/);
      expect(logLines().some((l) => typeof l.msg === "string" && l.msg.startsWith("cannot fetch GitHub's webhook ranges") && l.level === 50)).toBe(true);
      await stop(daemon);
      expect(await check(ws)).toEqual([
        { name: "allowlist", ok: false, detail: `${fake.url}/meta answered 500; nothing is cached: deliveries get 503 until the ranges are fetched` },
        { name: "trust_proxy", ok: false, detail: expect.stringMatching(/^the receiver listens on 127\.0\.0\.1 and trusts no proxy: .* set \[server\] trust_proxy = \["127\.0\.0\.1"\]/) },
      ]);
    } finally {
      fake.setMetaStatus(undefined);
    }
  });

  it("off (the default): any address is accepted, X-Forwarded-For is not believed, and GitHub's /meta is never asked", async () => {
    const asked = fake.metaRequests().length;
    const ws = await workspace(DEFAULT_DEPLOYMENTS, { DEPLOYQ_ADMIN_TOKEN: "admin-token-for-this-test" });
    expect(ws.settings.github.allowlist).toBe(false);
    expect(ws.settings.trustProxy).toEqual([]);
    const daemon = await start(ws);
    for (const [from, forwarded] of [[STRANGER, undefined], [STRANGER, GITHUB], [GITHUB, STRANGER]] as const) {
      const res = await deliver(daemon.url!, from, forwarded);
      expect(res.status, JSON.stringify(res.body)).toBe(202);
    }
    expect(fake.metaRequests()).toHaveLength(asked);
    expect((await health(daemon)).body.checks).not.toHaveProperty("github allowlist");
    // Without trust_proxy, failed logins that each claim another X-Forwarded-For all count for the peer.
    const login = (forwardedFor: string) =>
      send(daemon.url!, PROXY, { path: "/dashboard/login", headers: { "content-type": "application/x-www-form-urlencoded", "x-forwarded-for": forwardedFor }, body: "token=wrong" });
    for (let i = 0; i < 5; i++) expect((await login(`198.51.100.${20 + i}`)).status).toBe(401);
    expect((await login("198.51.100.30")).status).toBe(429);
    await stop(daemon);
  });

  describe("trust_proxy and the dashboard", () => {
    const TOKEN = `admin-${randomUUID()}`;
    const login = (daemon: Daemon, from: string, token: string, headers: Record<string, string> = {}) =>
      send(daemon.url!, from, { path: "/dashboard/login", headers: { "content-type": "application/x-www-form-urlencoded", ...headers }, body: new URLSearchParams({ token }).toString() });

    it("behind a trusted proxy: the login limit counts per forwarded client, and X-Forwarded-Proto: https marks the cookie Secure", async () => {
      const daemon = await start(await workspace(`trust_proxy = ["${PROXY}"]\n${DEFAULT_DEPLOYMENTS}`, { DEPLOYQ_ADMIN_TOKEN: TOKEN }));
      for (let i = 0; i < 5; i++) expect((await login(daemon, PROXY, "wrong", { "x-forwarded-for": "198.51.100.7" })).status).toBe(401);
      expect((await login(daemon, PROXY, "wrong", { "x-forwarded-for": "198.51.100.7" })).status).toBe(429);
      // Another client through the same proxy is not held back by the first one's failures.
      const other = await login(daemon, PROXY, TOKEN, { "x-forwarded-for": "198.51.100.8", "x-forwarded-proto": "https" });
      expect(other.status).toBe(303);
      expect(String(other.headers["set-cookie"])).toMatch(/; Secure$/);
      await stop(daemon);
    });

    it("from a peer that is not trusted: X-Forwarded-For and X-Forwarded-Proto are ignored", async () => {
      const daemon = await start(await workspace(`trust_proxy = ["${PROXY}"]\n${DEFAULT_DEPLOYMENTS}`, { DEPLOYQ_ADMIN_TOKEN: TOKEN }));
      // Each attempt claims another address: they are all the peer's own.
      for (let i = 0; i < 5; i++) expect((await login(daemon, STRANGER, "wrong", { "x-forwarded-for": `198.51.100.${10 + i}` })).status).toBe(401);
      expect((await login(daemon, STRANGER, TOKEN, { "x-forwarded-for": "198.51.100.99" })).status).toBe(429);
      const fine = await login(daemon, GITHUB, TOKEN, { "x-forwarded-proto": "https" });
      expect(fine.status).toBe(303);
      expect(String(fine.headers["set-cookie"])).not.toContain("Secure");
      await stop(daemon);
    });
  });
});
