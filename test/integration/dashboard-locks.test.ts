import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { hostname, tmpdir } from "node:os";
import path from "node:path";
import { and, eq } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Daemon, startDaemon } from "../../src/daemon.ts";
import { events as eventsTable } from "../../src/db/schema.ts";
import { silentLogger } from "../../src/log.ts";
import type { StampedEvent } from "../../src/events/types.ts";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import { type TestRepo, createRepo } from "../helpers/git.ts";
import { type PrivateRedis, privateRedis } from "../helpers/redis.ts";
import { until } from "../helpers/wait.ts";
import { type Workspace, createWorkspace, followingDeployment, post, pushPayload, signedDelivery } from "../helpers/workspace.ts";

const TOKEN = "locks-test-token-0123456789abcdef";

/** The text of the overview row of one deployment, tags dropped. */
function rowText(html: string, deployment: string): string {
  const row = html.split("<tr>").find((r) => r.includes(`/deployments/${deployment}"`));
  return (row ?? "").replace(/<[^>]+>/g, " ").replace(/\s+/g, " ");
}

/**
 * The overview's lock column: who holds each deployment's lock (from the lock events every
 * process writes), and, with Redis locks, the time left on it as Redis has it (PTTL). A
 * real deploy holds the lock on a private redis-server, which the test stops at the end.
 */
describe("the overview shows each deployment's lock holder and its TTL", () => {
  let ws: Workspace;
  let tdb: TestDatabase;
  let redis: PrivateRedis;
  let daemon: Daemon;
  let repo: TestRepo;
  let dir: string;
  let base: string;
  let cookie: string;
  const seen: StampedEvent[] = [];
  let deployReleased: StampedEvent | undefined;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "deployq-locks-"));
    repo = await createRepo(dir);
    redis = await privateRedis();
    await redis.start();
    const build = `while [ ! -e ${path.join(dir, "gate")} ]; do sleep 0.05; done; echo built`;
    ws = await createWorkspace({
      deployments: followingDeployment("app", repo.bare, `commands = [["sh", "-c", ${JSON.stringify(build)}]]`),
      topLevel: "lock_ttl_ms = 30000\n",
      env: { DEPLOYQ_ADMIN_TOKEN: TOKEN, REDIS_URL: redis.url },
    });
    tdb = await createTestDatabase("postgres");
    daemon = await startDaemon({ settings: ws.settings, role: "serve", logger: silentLogger(), database: tdb.database });
    daemon.events.on((e) => seen.push(e));
    base = `${daemon.url!}/dashboard`;
    const res = await fetch(`${base}/login`, { method: "POST", body: new URLSearchParams({ token: TOKEN }), redirect: "manual" });
    cookie = `deployq_session=${/deployq_session=([^;]+)/.exec(res.headers.get("set-cookie") ?? "")![1]}`;
  });
  afterAll(async () => {
    await writeFile(path.join(dir, "gate"), "").catch(() => {});
    await daemon?.close();
    await redis?.stop();
    await tdb?.dispose();
    await ws?.dispose();
    await rm(dir, { recursive: true, force: true });
  });

  const overview = async () => {
    const res = await fetch(`${base}/`, { headers: { cookie } });
    expect(res.status).toBe(200);
    return rowText(await res.text(), "app");
  };

  it("names the holding process and the time left while a deploy runs, and 'free' once it ended", async () => {
    expect(await overview()).toContain("free");
    const sha = await repo.commit({ "index.html": "v1" });
    const queued = await post(daemon.url!, await signedDelivery(pushPayload({ repository: "octo-org/app", after: sha })));
    expect(queued.status).toBe(202);

    // Held: the holder is this process (serve runs the workers), the TTL is Redis's, at most lock_ttl_ms.
    const held = await until("the overview to show the lock held", async () => {
      const text = await overview();
      return text.includes(`pid ${process.pid} on ${hostname()}`) ? text : undefined;
    });
    const ttl = /expires in ([\d.]+) s unless extended/.exec(held);
    expect(ttl, held).not.toBeNull();
    expect(Number(ttl![1])).toBeGreaterThan(0);
    expect(Number(ttl![1])).toBeLessThanOrEqual(30);
    expect(held).toContain("since");

    await writeFile(path.join(dir, "gate"), "");
    const end = await until("the deploy to finish", async () => seen.find((e) => e.kind === "deploy" && e.name === "finished"));
    // Its lock's release follows "finished" (the worker's finally).
    deployReleased = await until("the deploy's lock release", async () => seen.slice(seen.indexOf(end)).find((e) => e.kind === "lock" && e.name === "released"));
    const free = await until("the overview to show the lock free", async () => {
      const text = await overview();
      return text.includes("free") ? text : undefined;
    });
    expect(free).not.toContain("expires in");
    expect(free).not.toContain("stopped without releasing");
  });

  it("says so when the last holder took the lock and never released it (a killed worker: the lock expired)", async () => {
    // The real deploy's release is written by the batching event writer: plant after it, or it would be the newest.
    // (Not any release: the worker's recovery at start takes and releases the lock too.)
    const releasedAt = new Date(deployReleased!.at);
    await until("the deploy's lock release in the events table", async () =>
      (await tdb.database.db.select({ id: eventsTable.id }).from(eventsTable).where(and(eq(eventsTable.kind, "lock"), eq(eventsTable.name, "released"), eq(eventsTable.at, releasedAt)))).length > 0,
    );
    // Longer ago than lock_ttl_ms (30 s): a newer acquisition without its key may just be a release not written yet.
    const at = new Date(Date.now() - 60_000);
    const data = { kind: "lock", name: "acquired", lock: "deployment:app", deployment: "app", waitedMs: 0, at: at.toISOString(), pid: 999_999, host: "gone-host" };
    await tdb.database.db.insert(eventsTable).values({ at, kind: "lock", name: "acquired", deployment: "app", data });
    const text = await until("the overview to show the abandoned lock", async () => {
      const t = await overview();
      return t.includes("stopped without releasing") ? t : undefined;
    });
    expect(text).toContain("free");
    expect(text).not.toContain("gone-host");
  });

  it("shows 'unknown' with the last holder when Redis does not answer, and the page still loads", async () => {
    await redis.stop();
    // The inspector's connection learns of the stop asynchronously (the socket's close).
    const text = await until("the overview to show the lock unknown", async () => {
      const t = await overview();
      return t.includes("unknown") ? t : undefined;
    });
    expect(text).toContain("the lock service does not answer; last taken by pid 999999 on gone-host");
  });
});
