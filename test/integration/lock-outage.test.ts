
import { mkdtemp, readFile, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { eq } from "drizzle-orm";
import { describe, expect, it } from "vitest";
import { startDaemon } from "../../src/daemon.ts";
import { deploys } from "../../src/db/schema.ts";

import { createTestDatabase } from "../helpers/db.ts";
import { createRepo } from "../helpers/git.ts";
import { privateRedis } from "../helpers/redis.ts";
import { createWorkspace, post, pushPayload, signedDelivery, queuePush, followingDeployment } from "../helpers/workspace.ts";
import { until } from "../helpers/wait.ts";

describe("the lock service goes down in the middle of a run", () => {
  it("keeps every entry queued, says so in /healthz, and resumes by itself when it is back", { timeout: 180_000 }, async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "deployq-outage-"));
    const repo = await createRepo(dir);
    const redis = await privateRedis();
    await redis.start();
    const ws = await createWorkspace({
      env: { REDIS_URL: redis.url },
      deployments: followingDeployment("app", repo.bare, `
max_attempts = 2
retry_backoff_s = 0.05
commands = [["sh", "-c", "echo $DEPLOYQ_SHA > BUILT"]]
`),
    });
    const tdb = await createTestDatabase("postgres");
    const logFile = path.join(dir, "deployq.log");
    const { pino } = await import("pino");
    const logger = pino({ level: "debug" }, pino.destination({ dest: logFile, sync: true }));
    const daemon = await startDaemon({ settings: ws.settings, role: "serve", logger, database: tdb.database });
    try {
      const send = async (sha: string) => {
        const res = await post(daemon.url!, await signedDelivery(pushPayload({ repository: "octo-org/app", branch: "main", after: sha })));
        expect(res.status).toBe(202);
        return res.body.queued as string;
      };
      const v1 = await repo.commit({ v: "1" });
      const first = await send(v1);
      await until("v1", async () => (await tdb.database.db.select().from(deploys).where(eq(deploys.entry, first))).some((r) => r.status === "succeeded"));

      await redis.stop();
      const v2 = await repo.commit({ v: "2" });
      const v3 = await repo.commit({ v: "3" });
      await send(v2);
      // One push already in the deployment's queue (routed before the outage, say), one arriving now.
      const waiting = await queuePush(ws.queuesDir, { deployment: "app" }, "octo-org/app", v2);
      const last = await send(v3);
      const health = await until("/healthz to report the outage", async () => {
        const res = await fetch(`${daemon.url}/healthz`);
        const body = (await res.json()) as { checks: Record<string, string> };
        return res.status === 503 && body.checks.locks !== "ok" ? body : undefined;
      });
      expect(health.checks.locks).toMatch(/redlock/);
      // Several retries later (max_attempts is 2: they are not counted as attempts): still queued, nothing failed or dead-lettered.
      await until("three lock retries", async () => (await readFile(logFile, "utf8")).split("\n").filter((l) => l.includes("lock service unreachable; the queue waits")).length >= 3);
      expect(await readdir(path.join(ws.queuesDir, "deployments", "app"))).toContain(waiting);
      const queued = [...(await readdir(path.join(ws.queuesDir, "router"))), ...(await readdir(path.join(ws.queuesDir, "deployments", "app")))];
      expect(queued).toContain(last);
      expect(await readdir(path.join(ws.queuesDir, "dead-letter", "app"))).toEqual([]);
      expect((await tdb.database.db.select().from(deploys)).filter((r) => r.status === "failed" || r.status === "retrying")).toEqual([]);
      const log = await readFile(logFile, "utf8");
      expect(log.split("\n").filter((l) => l.includes("the lock service is unreachable"))).toHaveLength(1);

      await redis.start();
      // v3, the branch's head, is deployed: by its own entry, or by an older one taken first (which deploys the head), and then v3's is already deployed.
      await until("v3 deployed after the outage", async () => (await tdb.database.db.select().from(deploys).where(eq(deploys.sha, v3))).some((r) => r.status === "succeeded"));
      await until("v3's entry to be final", async () =>
        (await tdb.database.db.select().from(deploys).where(eq(deploys.entry, last))).some((r) => r.status === "succeeded" || r.status === "already-deployed"),
      );
      const current = await readFile(path.join(ws.dir, "apps", "app", "current", "BUILT"), "utf8");
      expect(current).toBe(`${v3}\n`);
      expect((await fetch(`${daemon.url}/healthz`)).status).toBe(200);
      expect(await readFile(logFile, "utf8")).toContain("the lock service is reachable again");
    } finally {
      await daemon.close();
      await redis.stop();
      await tdb.dispose();
      await ws.dispose();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("is reported by a receiver running on its own, which pings the workers' lock service", { timeout: 60_000 }, async () => {
    const redis = await privateRedis();
    await redis.start();
    const ws = await createWorkspace({ env: { REDIS_URL: redis.url } });
    const tdb = await createTestDatabase("postgres");
    const { silentLogger } = await import("../../src/log.ts");
    const daemon = await startDaemon({ settings: ws.settings, role: "receiver", logger: silentLogger(), database: tdb.database });
    try {
      const health = async () => {
        const res = await fetch(`${daemon.url}/healthz`);
        return { status: res.status, body: (await res.json()) as { checks: Record<string, string> } };
      };
      expect(await health()).toMatchObject({ status: 200, body: { checks: { locks: "ok" } } });
      await redis.stop();
      const down = await health();
      expect(down.status).toBe(503);
      expect(down.body.checks.locks).toMatch(/lock service unreachable/);
    } finally {
      await daemon.close();
      await redis.stop();
      await tdb.dispose();
      await ws.dispose();
    }
  });
});
