import { randomUUID } from "node:crypto";
import { readFile, readdir } from "node:fs/promises";
import { createRequire } from "node:module";
import path from "node:path";
import { eq } from "drizzle-orm";
import { pino } from "pino";
import { deliveries } from "../../src/db/schema.ts";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Daemon, startDaemon } from "../../src/daemon.ts";
import { silentLogger } from "../../src/log.ts";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import { LogCollector } from "../helpers/log-collector.ts";
import { type Workspace, createWorkspace, listFiles, post, pushPayload, randomSha, signedDelivery } from "../helpers/workspace.ts";

interface PushExample {
  ref: string;
  deleted: boolean;
  repository: { full_name: string; name: string };
}
const examples = createRequire(import.meta.url)("@octokit/webhooks-examples/api.github.com/index.json") as Array<{ name: string; examples: PushExample[] }>;
/** Real GitHub tag pushes (created and deleted), pointed at a repository the workspace follows. */
const tagPushes = examples
  .find((e) => e.name === "push")!
  .examples.filter((p) => p.ref.startsWith("refs/tags/"))
  .map((p) => {
    const copy = structuredClone(p);
    copy.repository.full_name = "octo-org/api";
    copy.repository.name = "api";
    return copy;
  });

describe.each(["postgres", "pglite"] as const)("receiver on %s", (kind) => {
  let ws: Workspace;
  let tdb: TestDatabase;
  let daemon: Daemon;
  let url: string;
  const logs = new LogCollector();

  beforeAll(async () => {
    ws = await createWorkspace();
    tdb = await createTestDatabase(kind);
    // The receiver alone: accepted entries stay in router/ where the test can read them.
    daemon = await startDaemon({ settings: ws.settings, role: "receiver", logger: pino({ level: "warn" }, logs), database: tdb.database });
    url = daemon.url!;
  });
  afterAll(async () => {
    await daemon?.close();
    await tdb?.dispose();
    await ws?.dispose();
  });

  const routerFiles = () => readdir(path.join(ws.queuesDir, "router"));

  it("queues a signed push durably and answers 202 with the entry name", async () => {
    const sha = randomSha();
    const req = await signedDelivery(pushPayload({ repository: "octo-org/api", branch: "main", after: sha }));
    const res = await post(url, req);
    expect(res.status).toBe(202);
    const name = res.body.queued as string;
    // "Octo-Org/API" in the configuration: GitHub's names are case-insensitive.
    expect(res.body).toEqual({ queued: name, deployments: ["api"] });
    expect(name).toMatch(/^\d{19}-[0-9a-f-]{36}\.json$/);
    expect(name.endsWith(`${req.headers["x-github-delivery"]}.json`)).toBe(true);
    const entry = JSON.parse(await readFile(path.join(ws.queuesDir, "router", name), "utf8"));
    expect(entry).toMatchObject({ event: "push", delivery_id: req.headers["x-github-delivery"], hook_id: "123456", source: "github" });
    expect(entry.payload.after).toBe(sha);
    const rows = await tdb.database.db.select().from(deliveries).where(eq(deliveries.deliveryId, req.headers["x-github-delivery"]!));
    expect(rows).toMatchObject([{ outcome: "queued", entry: name, afterSha: sha, hookId: "123456" }]);
  });

  it("names the deployments a branch glob matches", async () => {
    const res = await post(url, await signedDelivery(pushPayload({ repository: "OCTO-ORG/api", branch: "deploy-blue", after: randomSha() })));
    expect(res.status).toBe(202);
    expect(res.body).toEqual({ queued: expect.stringMatching(/\.json$/), deployments: ["api-staging"] });
    expect(await routerFiles()).toContain(res.body.queued);
  });

  it("records what no deployment follows as voided, with the router's reason, queues nothing, warns, and still answers 2xx", async () => {
    const cases: Array<{ what: string; payload: unknown; event?: string; reason: RegExp }> = [
      { what: "an unfollowed branch", payload: pushPayload({ repository: "octo-org/api", branch: "feature", after: randomSha() }), reason: /^no enabled deployment follows octo-org\/api branch feature \(api follows main; api-staging follows deploy-\*\)$/ },
      { what: "a glob that does not cross a /", payload: pushPayload({ repository: "octo-org/api", branch: "deploy-x/y", after: randomSha() }), reason: /no enabled deployment follows octo-org\/api branch deploy-x\/y/ },
      { what: "another repository", payload: pushPayload({ repository: "octo-org/apis", branch: "main", after: randomSha() }), reason: /no deployment has repository = "octo-org\/apis"/ },
      ...tagPushes.map((p) => ({ what: `a tag push (${p.ref}, deleted: ${p.deleted})`, payload: p, reason: /^tag push \(refs\/tags\/.+\) does not deploy$/ })),
      { what: "a branch deletion", payload: pushPayload({ repository: "octo-org/api", branch: "main", after: "0".repeat(40), deleted: true }), reason: /^branch deletion \(refs\/heads\/main\) does not deploy$/ },
      { what: "another event", payload: { action: "opened", repository: { full_name: "octo-org/api" } }, event: "issues", reason: /^"issues" events do not deploy/ },
      { what: "a hostile ref", payload: pushPayload({ repository: "octo-org/api", ref: "refs/heads/--upload-pack=x", after: randomSha() }), reason: /not a valid branch name/ },
    ];
    expect(tagPushes.length).toBeGreaterThanOrEqual(2);
    for (const c of cases) {
      const before = await listFiles(ws.queuesDir);
      const req = await signedDelivery(c.payload, { event: c.event ?? "push" });
      const delivery = req.headers["x-github-delivery"]!;
      const res = await post(url, req);
      expect(res.status, c.what).toBe(200);
      expect(res.body, c.what).toEqual({ voided: true, reason: expect.stringMatching(c.reason), deployments: [] });
      expect(await listFiles(ws.queuesDir), c.what).toEqual(before);
      const rows = await tdb.database.db.select().from(deliveries).where(eq(deliveries.deliveryId, delivery));
      expect(rows, c.what).toMatchObject([{ outcome: "voided", reason: res.body.reason, entry: null, event: c.event ?? "push", duplicates: 0 }]);
      const warned = logs.text.split("\n").filter((l) => l.includes(delivery)).map((l) => JSON.parse(l) as Record<string, unknown>);
      expect(warned, c.what).toMatchObject([{ level: 40, reason: res.body.reason, msg: expect.stringMatching(/voided/) }]);

      // Its redelivery is a duplicate, as for a queued one.
      const again = await post(url, req);
      expect(again, c.what).toEqual({ status: 200, body: { duplicate: true } });
      const [row] = await tdb.database.db.select().from(deliveries).where(eq(deliveries.deliveryId, delivery));
      expect(row, c.what).toMatchObject({ outcome: "voided", duplicates: 1 });
    }
  });

  it("dedupes concurrent copies of a voided delivery in one group commit beside queued ones", async () => {
    const voided = await signedDelivery(pushPayload({ repository: "octo-org/api", branch: "feature", after: randomSha() }));
    const queued = await signedDelivery(pushPayload({ repository: "octo-org/web", branch: "main", after: randomSha() }));
    const results = await Promise.all(Array.from({ length: 40 }, (_, i) => post(url, i % 2 === 0 ? voided : queued)));
    const answers = (req: typeof voided) => results.filter((_, i) => (i % 2 === 0 ? voided : queued) === req);
    expect(answers(voided).filter((r) => r.body.voided === true)).toHaveLength(1);
    expect(answers(voided).filter((r) => r.body.duplicate === true)).toHaveLength(19);
    expect(answers(queued).filter((r) => r.status === 202)).toMatchObject([{ body: { deployments: ["web"] } }]);
    expect(answers(queued).filter((r) => r.body.duplicate === true)).toHaveLength(19);
    const [row] = await tdb.database.db.select().from(deliveries).where(eq(deliveries.deliveryId, voided.headers["x-github-delivery"]!));
    expect(row).toMatchObject({ outcome: "voided", duplicates: 19 });
    expect((await routerFiles()).filter((f) => f.includes(voided.headers["x-github-delivery"]!))).toEqual([]);
  });

  async function expectRejected(req: { headers: Record<string, string>; body: string | Buffer }, status: number, message?: RegExp) {
    const before = await listFiles(ws.queuesDir);
    const res = await post(url, req);
    expect(res.status).toBe(status);
    if (message) expect(String(res.body.error)).toMatch(message);
    expect(await listFiles(ws.queuesDir)).toEqual(before);
    return res;
  }

  it("rejects bad signatures with 401 and writes nothing", async () => {
    const good = await signedDelivery(pushPayload({ repository: "octo-org/api", after: randomSha() }));
    const flipped = Buffer.from(good.body);
    flipped[10] = flipped[10]! ^ 0x01;
    await expectRejected({ headers: good.headers, body: flipped }, 401, /does not match/);
    const { "x-hub-signature-256": _sig, ...unsigned } = good.headers;
    await expectRejected({ headers: unsigned, body: good.body }, 401, /missing/);
    await expectRejected({ headers: { ...unsigned, "x-hub-signature": "sha1=0123456789abcdef0123456789abcdef01234567" }, body: good.body }, 401, /SHA-1/);
    await expectRejected({ headers: { ...good.headers, "x-hub-signature-256": good.headers["x-hub-signature-256"]!.slice(0, -2) }, body: good.body }, 401);
    await expectRejected({ headers: { ...good.headers, "x-hub-signature-256": `${good.headers["x-hub-signature-256"]}00` }, body: good.body }, 401);
    const other = await signedDelivery(JSON.parse(good.body as string), { secret: "another secret" });
    await expectRejected(other, 401);
    const rows = await tdb.database.db.select().from(deliveries).where(eq(deliveries.deliveryId, good.headers["x-github-delivery"]!));
    expect(rows).toEqual([]);
  });

  it("rejects missing or invalid event and delivery headers with 400", async () => {
    const payload = pushPayload({ repository: "octo-org/api", after: randomSha() });
    const ok = await signedDelivery(payload);
    const { "x-github-event": _e, ...noEvent } = ok.headers;
    await expectRejected({ headers: noEvent, body: ok.body }, 400, /X-GitHub-Event/);
    const { "x-github-delivery": _d, ...noDelivery } = ok.headers;
    await expectRejected({ headers: noDelivery, body: ok.body }, 400, /X-GitHub-Delivery/);
    for (const delivery of ["../../etc/passwd", "..%2F..%2Fx", "a".repeat(5000), "12345678-1234-1234-1234-1234567890ab/../x", "not-a-guid"]) {
      await expectRejected({ headers: { ...ok.headers, "x-github-delivery": delivery }, body: ok.body }, 400, /X-GitHub-Delivery/);
    }
    await expectRejected({ headers: { ...ok.headers, "x-github-event": "push; rm -rf /" }, body: ok.body }, 400);
    await expectRejected({ headers: { ...ok.headers, "x-github-hook-id": "12x" }, body: ok.body }, 400, /Hook-ID/);
  });

  it("rejects a delivery ID with a NUL byte (sent raw: HTTP clients refuse to) and writes nothing", async () => {
    const { connect } = await import("node:net");
    const before = await listFiles(ws.queuesDir);
    const req = await signedDelivery(pushPayload({ repository: "octo-org/api", after: randomSha() }));
    const headers = { ...req.headers, "x-github-delivery": `${randomUUID()}\u0000../../x`, host: "127.0.0.1", "content-length": String(Buffer.byteLength(req.body)), connection: "close" };
    const raw = `POST /github-webhook HTTP/1.1\r\n${Object.entries(headers).map(([k, v]) => `${k}: ${v}`).join("\r\n")}\r\n\r\n${req.body}`;
    const { port, hostname } = new URL(url);
    const response = await new Promise<string>((resolve, reject) => {
      const socket = connect(Number(port), hostname, () => socket.end(raw));
      let data = "";
      socket.on("data", (c) => (data += c.toString()));
      socket.on("end", () => resolve(data));
      socket.on("error", reject);
    });
    expect(response).toMatch(/^HTTP\/1\.1 400 /);
    expect(await listFiles(ws.queuesDir)).toEqual(before);
  });

  it("rejects bodies that are not JSON objects, invalid UTF-8, and unknown content types", async () => {
    await expectRejected(await signedDelivery("this is not json"), 400, /not JSON/);
    await expectRejected(await signedDelivery("[1,2,3]"), 400, /not a JSON object/);
    const invalidUtf8 = Buffer.concat([Buffer.from('{"ref":"refs/heads/main","x":"'), Buffer.from([0xc3, 0x28, 0xff]), Buffer.from('"}')]);
    const signedBad = await signedDelivery("placeholder");
    const { createHmac } = await import("node:crypto");
    const { SECRET } = await import("../helpers/workspace.ts");
    signedBad.headers["x-hub-signature-256"] = `sha256=${createHmac("sha256", SECRET).update(invalidUtf8).digest("hex")}`;
    await expectRejected({ headers: signedBad.headers, body: invalidUtf8 }, 400, /UTF-8/);
    const text = await signedDelivery(pushPayload({ repository: "octo-org/api" }));
    text.headers["content-type"] = "text/plain";
    await expectRejected(text, 415, /application\/json/);
  });

  it("accepts form-encoded deliveries (GitHub's other content type)", async () => {
    const payload = pushPayload({ repository: "octo-org/api", after: randomSha() });
    const req = await signedDelivery(new URLSearchParams({ payload: JSON.stringify(payload) }).toString());
    req.headers["content-type"] = "application/x-www-form-urlencoded";
    const res = await post(url, req);
    expect(res.status).toBe(202);
    const entry = JSON.parse(await readFile(path.join(ws.queuesDir, "router", res.body.queued as string), "utf8"));
    expect(entry.payload.after).toBe(payload.after);
  });

  it("answers 413 beyond 25 MB and writes nothing", async () => {
    const big = Buffer.alloc(25 * 1024 * 1024 + 1, 0x20);
    const req = await signedDelivery("{}");
    await expectRejected({ headers: req.headers, body: big }, 413, /larger than/);
  });

  it("answers ping with 200, records it and queues nothing", async () => {
    const before = await routerFiles();
    const req = await signedDelivery({ zen: "Design for failure.", hook_id: 123456 }, { event: "ping" });
    const res = await post(url, req);
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ ok: true, event: "ping" });
    expect(await routerFiles()).toEqual(before);
    const rows = await tdb.database.db.select().from(deliveries).where(eq(deliveries.deliveryId, req.headers["x-github-delivery"]!));
    expect(rows).toMatchObject([{ outcome: "ping", event: "ping" }]);
  });

  it("dedupes 100 concurrent copies of one delivery into exactly one entry", async () => {
    const delivery = randomUUID();
    const req = await signedDelivery(pushPayload({ repository: "octo-org/api", after: randomSha() }), { delivery });
    const results = await Promise.all(Array.from({ length: 100 }, () => post(url, req)));
    const statuses = results.map((r) => r.status).sort();
    expect(statuses.filter((s) => s === 202)).toHaveLength(1);
    expect(statuses.filter((s) => s === 200)).toHaveLength(99);
    for (const r of results.filter((r) => r.status === 200)) expect(r.body).toEqual({ duplicate: true });
    expect((await routerFiles()).filter((f) => f.includes(delivery))).toHaveLength(1);
    const rows = await tdb.database.db.select().from(deliveries).where(eq(deliveries.deliveryId, delivery));
    expect(rows).toMatchObject([{ duplicates: 99 }]);

    // The same delivery ID reaching another hook is another event.
    const other = await post(url, { ...req, headers: { ...req.headers, "x-github-hook-id": "999" } });
    expect(other.status).toBe(202);
    expect((await routerFiles()).filter((f) => f.includes(delivery))).toHaveLength(2);
  });

  it("answers 503 when the queue cannot be written, and the redelivery is queued, not called a duplicate", async () => {
    const { rename, writeFile, rm } = await import("node:fs/promises");
    const router = path.join(ws.queuesDir, "router");
    const aside = path.join(ws.queuesDir, "router.aside");
    await rename(router, aside);
    await writeFile(router, "not a directory");
    const req = await signedDelivery(pushPayload({ repository: "octo-org/api", after: randomSha() }));
    try {
      const res = await post(url, req);
      expect(res.status).toBe(503);
      expect(String(res.body.error)).toMatch(/could not queue/);
    } finally {
      await rm(router);
      await rename(aside, router);
    }
    const rows = await tdb.database.db.select().from(deliveries).where(eq(deliveries.deliveryId, req.headers["x-github-delivery"]!));
    expect(rows).toEqual([]);
    const again = await post(url, req);
    expect(again.status).toBe(202);
    expect(await listFiles(path.join(ws.queuesDir, ".tmp"))).toEqual([]);
  });

  it("reports health, and service name and version on /", async () => {
    const root = await (await fetch(`${url}/`)).json();
    expect(root).toMatchObject({ service: "deployq", version: expect.stringMatching(/^\d+\.\d+\.\d+/) });
    const health = await fetch(`${url}/healthz`);
    expect(health.status).toBe(200);
    expect(await health.json()).toMatchObject({ status: "ok", checks: { database: "ok", queues: "ok" } });
  });
});

describe("receiver when the database is down", () => {
  it("answers 503, writes no file, and /healthz says why", async () => {
    const ws = await createWorkspace();
    const tdb = await createTestDatabase("postgres");
    const daemon = await startDaemon({ settings: ws.settings, role: "receiver", logger: silentLogger(), database: tdb.database });
    try {
      await tdb.dispose(); // closes the connections and drops the database under the running receiver
      const res = await post(daemon.url!, await signedDelivery(pushPayload({ repository: "octo-org/api", after: randomSha() })));
      expect(res.status).toBe(503);
      // Nor is a delivery that nothing follows answered 2xx without its row.
      const voided = await post(daemon.url!, await signedDelivery(pushPayload({ repository: "octo-org/api", branch: "feature", after: randomSha() })));
      expect(voided.status).toBe(503);
      expect(String(voided.body.error)).toMatch(/could not record the delivery/);
      expect(await listFiles(path.join(ws.queuesDir, "router"))).toEqual([]);
      const health = await fetch(`${daemon.url}/healthz`);
      expect(health.status).toBe(503);
      expect(((await health.json()) as { checks: Record<string, string> }).checks.database).not.toBe("ok");
    } finally {
      await daemon.close();
      await ws.dispose();
    }
  });
});

describe("receiver start-up", () => {
  it("refuses to start without a webhook secret", async () => {
    const ws = await createWorkspace();
    try {
      const settings = { ...ws.settings, secrets: { ...ws.settings.secrets, webhookSecrets: [] } };
      await expect(startDaemon({ settings, role: "receiver", logger: silentLogger() })).rejects.toThrow(/GITHUB_WEBHOOK_SECRET is not set/);
    } finally {
      await ws.dispose();
    }
  });
});
