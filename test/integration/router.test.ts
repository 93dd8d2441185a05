import { randomUUID } from "node:crypto";
import { readFile, readdir, utimes, writeFile } from "node:fs/promises";
import { createRequire } from "node:module";
import path from "node:path";
import { eq } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Daemon, startDaemon } from "../../src/daemon.ts";
import { deliveries } from "../../src/db/schema.ts";
import { silentLogger } from "../../src/log.ts";
import { entryName } from "../../src/queue/entry-name.ts";
import { queueLayout } from "../../src/queue/layout.ts";
import { writeEntryDurably } from "../../src/queue/write.ts";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import { type Workspace, createWorkspace, listFiles, post, pushPayload, randomSha, signedDelivery } from "../helpers/workspace.ts";
import { until } from "../helpers/wait.ts";

interface Example {
  name: string;
  examples: Array<Record<string, unknown> & { ref: string; deleted: boolean; repository: { full_name: string; name: string } }>;
}
const require = createRequire(import.meta.url);
const examples = require("@octokit/webhooks-examples/api.github.com/index.json") as Example[];
const pushes = examples.find((e) => e.name === "push")!.examples;

/** A real GitHub payload, pointed at one of the test workspace's repositories. */
function rewrite(example: (typeof pushes)[number], repository: string, ref?: string) {
  const copy = structuredClone(example);
  copy.repository.full_name = repository;
  copy.repository.name = repository.split("/")[1]!;
  if (ref) copy.ref = ref;
  return copy;
}


describe.each(["postgres", "pglite"] as const)("router on %s", (kind) => {
  let ws: Workspace;
  let tdb: TestDatabase;
  let daemon: Daemon;

  beforeAll(async () => {
    ws = await createWorkspace();
    tdb = await createTestDatabase(kind);
    daemon = await startDaemon({ settings: ws.settings, role: "serve", logger: silentLogger(), database: tdb.database });
  });
  afterAll(async () => {
    await daemon?.close();
    await tdb?.dispose();
    await ws?.dispose();
  });

  const queue = (...p: string[]) => path.join(ws.queuesDir, ...p);
  /**
   * An entry put straight into router/, as one that reaches the router without the
   * receiver's matching does (requeued from dead-letter/router/, written by a receiver
   * whose configuration differed). Returns its delivery ID.
   */
  const plant = async (payload: unknown, event = "push"): Promise<string> => {
    const delivery = randomUUID();
    await writeEntryDurably(queueLayout(ws.queuesDir), queue("router"), entryName(delivery), {
      event,
      delivery_id: delivery,
      hook_id: "",
      received_at: new Date().toISOString(),
      source: "test",
      payload,
    });
    return delivery;
  };
  const outcome = (delivery: string) =>
    until(`the outcome of ${delivery}`, async () => {
      const [row] = await tdb.database.db.select().from(deliveries).where(eq(deliveries.deliveryId, delivery));
      // Done when the outcome is recorded and the entry has left router/ (it is recorded first).
      if (!row || row.outcome === "queued") return undefined;
      return (await readdir(queue("router"))).includes(row.entry ?? "") ? undefined : row;
    });

  it("routes real branch pushes from @octokit/webhooks-examples to every deployment that follows them", async () => {
    const branchPushes = pushes.filter((p) => p.ref.startsWith("refs/heads/") && !p.deleted);
    expect(branchPushes.length).toBeGreaterThanOrEqual(2);
    for (const example of branchPushes) {
      // "Octo-Org/API" in the config: GitHub names are case-insensitive.
      const req = await signedDelivery(rewrite(example, "octo-org/api", "refs/heads/main"));
      const res = await post(daemon.url!, req);
      expect(res.status).toBe(202);
      const row = await outcome(req.headers["x-github-delivery"]!);
      expect(row).toMatchObject({ outcome: "routed", routedTo: ["api"], repository: "octo-org/api" });
      const name = res.body.queued as string;
      expect(await readdir(queue("deployments", "api"))).toContain(name);
      const entry = JSON.parse(await readFile(queue("deployments", "api", name), "utf8"));
      expect(entry.payload.after).toBe(example.after);
    }
  });

  it("matches branch globs and hands one event to several deployments", async () => {
    const sha = randomSha();
    const req = await signedDelivery(pushPayload({ repository: "octo-org/api", branch: "deploy-blue", after: sha }));
    const res = await post(daemon.url!, req);
    expect(res.status).toBe(202);
    expect(await outcome(req.headers["x-github-delivery"]!)).toMatchObject({ outcome: "routed", routedTo: ["api-staging"] });
    expect(await readdir(queue("deployments", "api-staging"))).toContain(res.body.queued);
    // "deploy-*" does not cross a "/".
    const nested = await plant(pushPayload({ repository: "octo-org/api", branch: "deploy-x/y", after: randomSha() }));
    expect(await outcome(nested)).toMatchObject({ outcome: "voided" });
  });

  it("voids tag pushes, branch deletions, other events and unfollowed branches that reach it, and deploys none of them", async () => {
    const cases: Array<{ payload: unknown; event?: string; reason: RegExp }> = [
      ...pushes.filter((p) => p.ref.startsWith("refs/tags/") && !p.deleted).map((p) => ({ payload: rewrite(p, "octo-org/api"), reason: /tag push/ })),
      ...pushes.filter((p) => p.ref.startsWith("refs/tags/") && p.deleted).map((p) => ({ payload: rewrite(p, "octo-org/api"), reason: /tag push/ })),
      { payload: pushPayload({ repository: "octo-org/api", branch: "main", after: "0".repeat(40), deleted: true }), reason: /branch deletion/ },
      { payload: pushPayload({ repository: "octo-org/api", branch: "feature", after: randomSha() }), reason: /no enabled deployment follows/ },
      { payload: pushPayload({ repository: "someone/else", branch: "main", after: randomSha() }), reason: /no enabled deployment follows/ },
      { payload: { action: "opened", repository: { full_name: "octo-org/api" } }, event: "issues", reason: /"issues" events do not deploy/ },
    ];
    expect(cases.length).toBeGreaterThanOrEqual(9);
    const voided: string[] = [];
    for (const c of cases) {
      const delivery = await plant(c.payload, c.event);
      voided.push(delivery);
      const row = await outcome(delivery);
      expect(row.outcome).toBe("voided");
      expect(row.reason).toMatch(c.reason);
    }
    await until("router/ to empty", async () => (await readdir(queue("router"))).length === 0);
    // Handed to no deployment: in no queue, no dead letter, anywhere.
    const everywhere = await listFiles(ws.queuesDir);
    expect(everywhere.filter((f) => voided.some((v) => f.includes(v)))).toEqual([]);
  });

  it("voids with the same reason as the receiver, which decides with the same matching", async () => {
    const payload = pushPayload({ repository: "octo-org/api", branch: "feature", after: randomSha() });
    const answered = await post(daemon.url!, await signedDelivery(payload));
    expect(answered.status).toBe(200);
    expect(answered.body.voided).toBe(true);
    const row = await outcome(await plant(payload));
    expect(row).toMatchObject({ outcome: "voided", reason: answered.body.reason });
  });

  it("voids hostile refs and never writes outside the queue root", async () => {
    const outside = await listFiles(ws.dir).then((files) => files.filter((f) => !f.startsWith("queues/") && !f.startsWith("data/")));
    const hostile = [
      "refs/heads/$(id)",
      "refs/heads/--upload-pack=x",
      "refs/heads/../../../../etc/passwd",
      "refs/heads/main\u0000x",
      "refs/heads/-x",
      "refs/heads/a..b",
      "refs/heads/x;touch /tmp/pwned",
      "../../router",
    ];
    for (const ref of hostile) {
      const row = await outcome(await plant(pushPayload({ repository: "octo-org/api", ref, after: randomSha() })));
      expect(row.outcome, ref).toBe("voided");
    }
    // A hostile *but valid* branch name is routed only to a deployment that follows it; none here does.
    const after = await listFiles(ws.dir).then((files) => files.filter((f) => !f.startsWith("queues/") && !f.startsWith("data/")));
    expect(after).toEqual(outside);
  });

  it("moves a malformed entry to dead-letter/router/ with its error, and keeps routing the rest", async () => {
    const bad = "1000000000000000001-11111111-2222-3333-4444-555555555555.json";
    const invalid = "1000000000000000002-11111111-2222-3333-4444-666666666666.json";
    await writeFile(queue("router", bad), "{ this is not json");
    await writeFile(queue("router", invalid), JSON.stringify({ event: "push", payload: {} }));
    // Written a minute ago: settled, not a file someone is still copying in.
    const past = new Date(Date.now() - 60_000);
    for (const name of [bad, invalid]) await utimes(queue("router", name), past, past);
    await daemon.router!.kick();
    expect(await readdir(queue("router"))).toEqual([]);
    expect(await readFile(queue("dead-letter", "router", bad), "utf8")).toBe("{ this is not json");
    expect(await readFile(queue("dead-letter", "router", `${bad}.error`), "utf8")).toMatch(/not valid JSON/);
    const moved = JSON.parse(await readFile(queue("dead-letter", "router", invalid), "utf8"));
    expect(moved.last_error).toMatch(/delivery_id/);
    expect(moved.payload).toEqual({});
    const [row] = await tdb.database.db.select().from(deliveries).where(eq(deliveries.entry, invalid));
    expect(row).toMatchObject({ outcome: "dead-letter" });
    // The router goes on with the next delivery.
    const req = await signedDelivery(pushPayload({ repository: "octo-org/web", branch: "main", after: randomSha() }));
    await post(daemon.url!, req);
    expect(await outcome(req.headers["x-github-delivery"]!)).toMatchObject({ outcome: "routed", routedTo: ["web"] });
  });

  it("leaves a malformed entry that was just written for its writer to finish (a cp in place), and moves it aside once it has settled", async () => {
    const name = "1000000000000000004-11111111-2222-3333-4444-888888888888.json";
    await writeFile(queue("router", name), '{"event":"push","delivery_id":"11111111-2222-3333-4444-8888');
    await daemon.router!.kick();
    expect(await readdir(queue("router"))).toEqual([name]);
    await until("the unfinished entry to be moved aside once settled", async () => (await readdir(queue("router"))).length === 0);
    expect(await readFile(queue("dead-letter", "router", `${name}.error`), "utf8")).toMatch(/not valid JSON/);
  });

  it("ignores what is not a complete entry: dot files, temporaries, backups", async () => {
    const ignored = [".hidden.json", "1000000000000000003-11111111-2222-3333-4444-777777777777.json~", "x.tmp", "notes.txt"];
    for (const name of ignored) await writeFile(queue("router", name), "{}");
    await daemon.router!.kick();
    expect((await readdir(queue("router"))).sort()).toEqual([...ignored].sort());
    expect(await listFiles(queue("dead-letter", "router"))).not.toContain(ignored[0]);
  });
});
