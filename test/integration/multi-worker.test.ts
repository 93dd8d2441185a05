
import { mkdir, mkdtemp, readFile, readdir, readlink, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { eq } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Deploy, deploys } from "../../src/db/schema.ts";

import { queueLayout } from "../../src/queue/layout.ts";
import { ensureQueueDirs } from "../../src/queue/write.ts";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import { type TestRepo, createRepo } from "../helpers/git.ts";
import { type Spawned, spawnDeployq } from "../helpers/processes.ts";
import { type PrivateRedis, privateRedis } from "../helpers/redis.ts";
import { type Workspace, createWorkspace, queuePush, followingDeployment } from "../helpers/workspace.ts";
import { until } from "../helpers/wait.ts";

const FINAL = new Set(["succeeded", "already-deployed", "superseded"]);

/** Runs of one deployment (not superseded) never overlap, and their fencing tokens grow with time. */
function assertSerial(rows: Deploy[]): void {
  const runs = rows.filter((r) => r.status !== "superseded").sort((a, b) => a.startedAt.getTime() - b.startedAt.getTime());
  for (let i = 1; i < runs.length; i++) {
    const prev = runs[i - 1]!;
    const run = runs[i]!;
    expect(prev.finishedAt, `deploy ${prev.id} has no finish`).not.toBeNull();
    expect(run.startedAt.getTime(), `deploy ${run.id} started before ${prev.id} finished`).toBeGreaterThanOrEqual(prev.finishedAt!.getTime());
    expect(run.fencingToken!, `deploy ${run.id} has an older token than ${prev.id}`).toBeGreaterThan(prev.fencingToken!);
  }
}

describe("several workers processes sharing Postgres and Redis", () => {
  let dir: string;
  let redis: PrivateRedis;
  let tdb: TestDatabase;
  let ws: Workspace;
  let env: NodeJS.ProcessEnv;
  const repos = new Map<string, TestRepo>();
  const running: Spawned[] = [];

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "deployq-multi-"));
    redis = await privateRedis();
    await redis.start();
    tdb = await createTestDatabase("postgres");
    let config = "";
    for (const name of ["alpha", "beta", "gamma"]) {
      const repo = await createRepo(dir, name);
      repos.set(name, repo);
      config += `
[deployments.${name}]
repository = "octo-org/${name}"
branch = "main"
remote = "${repo.bare}"
path = "./apps/${name}"
commands = [["sh", "-c", "echo $DEPLOYQ_SHA > BUILT"]]
`;
    }
    ws = await createWorkspace({ deployments: config });
    env = { ...ws.env, DATABASE_URL: tdb.url, REDIS_URL: redis.url, DEPLOYQ_CONFIG: ws.configPath, DEPLOYQ_LOG_LEVEL: "info" };
  });
  afterAll(async () => {
    for (const p of running) {
      p.child.kill("SIGKILL");
      await p.exited;
    }
    await tdb?.dispose();
    await redis?.stop();
    await ws?.dispose();
    await rm(dir, { recursive: true, force: true });
  });

  it("deploys or supersedes each of 200 pushes across 3 deployments exactly once, never overlapping", { timeout: 300_000 }, async () => {
    const shas = new Map<string, string[]>();
    for (const [name, repo] of repos) {
      const list: string[] = [];
      for (let i = 0; i < 8; i++) list.push(await repo.commit({ "index.html": `${name} ${i}` }));
      shas.set(name, list);
    }
    const workers = [spawnDeployq(["workers"], env), spawnDeployq(["workers"], env)];
    running.push(...workers);
    await Promise.all(workers.map((w) => w.waitFor("deployq started")));

    // Pushes arrive through router/, as from the receiver, a few milliseconds apart.
    const last = new Map<string, string>();
    const sent: string[] = [];
    const names = [...repos.keys()];
    for (let i = 0; i < 200; i++) {
      const deployment = names[i % 3]!;
      const list = shas.get(deployment)!;
      const sha = list[Math.min(list.length - 1, Math.floor((i / 200) * list.length))]!;
      sent.push(await queuePush(ws.queuesDir, "router", `octo-org/${deployment}`, sha));
      last.set(deployment, sha);
      if (i % 10 === 0) await new Promise((r) => setTimeout(r, 20)); // a stream of pushes, not one burst
    }

    const settled = async () => {
      const rows = await tdb.database.db.select().from(deploys);
      const finals = rows.filter((r) => FINAL.has(r.status));
      return finals.length >= sent.length ? rows : undefined;
    };
    const rows = await until("every push to be deployed or superseded", settled, 180_000);
    // Exactly once: one final row per entry, and nothing failed.
    const finalByEntry = new Map<string, number>();
    for (const r of rows.filter((r) => FINAL.has(r.status))) finalByEntry.set(r.entry, (finalByEntry.get(r.entry) ?? 0) + 1);
    expect([...finalByEntry.keys()].sort()).toEqual([...sent].sort());
    expect([...finalByEntry.values()].every((n) => n === 1)).toBe(true);
    expect(rows.filter((r) => !FINAL.has(r.status) && r.status !== "interrupted")).toEqual([]);
    // Each deployment's runs never overlapped, whichever process ran them.
    for (const name of names) {
      assertSerial(rows.filter((r) => r.deployment === name));
      const current = await readlink(path.join(ws.dir, "apps", name, "current"));
      expect(await readFile(path.join(ws.dir, "apps", name, current, "BUILT"), "utf8")).toBe(`${last.get(name)}\n`);
      expect(await readdir(path.join(ws.queuesDir, "deployments", name))).toEqual([]);
    }
    expect(await readdir(path.join(ws.queuesDir, "router"))).toEqual([]);

    for (const w of workers) w.child.kill("SIGTERM");
    for (const w of workers) expect((await w.exited).signal).toBe("SIGTERM");
  });

  it("fences off a worker paused past its lock's TTL: the other takes over, the paused one never switches current", { timeout: 300_000 }, async () => {
    const gate = path.join(dir, "gate");
    const marks = path.join(dir, "marks");
    await mkdir(marks, { recursive: true });
    const repo = await createRepo(dir, "paused");
    const fenced = await createWorkspace({
      topLevel: "lock_ttl_ms = 1000",
      deployments: followingDeployment("paused", repo.bare, `
commands = [["sh", "-c", "touch ${marks}/$PPID-$$; while [ ! -e ${gate} ]; do sleep 0.02; done"]]
`),
    });
    const fenv = { ...env, DEPLOYQ_CONFIG: fenced.configPath };
    const workers = [spawnDeployq(["workers"], fenv), spawnDeployq(["workers"], fenv)];
    running.push(...workers);
    try {
      await Promise.all(workers.map((w) => w.waitFor("deployq started")));
      const sha = await repo.commit({ "index.html": "paused" });
      const layout = queueLayout(fenced.queuesDir);
      await ensureQueueDirs(layout, ["paused"]);
      const name = await queuePush(fenced.queuesDir, { deployment: "paused" }, "octo-org/paused", sha);
      const rowsOf = () => tdb.database.db.select().from(deploys).where(eq(deploys.entry, name));
      const first = await until("a worker to start the deploy", async () => (await rowsOf()).find((r) => r.status === "running"));
      const paused = workers.find((w) => w.child.pid === first.pid)!;
      const other = workers.find((w) => w.child.pid !== first.pid)!;
      // Paused in the middle of its build (the build itself, in its own process group, goes on).
      await until("the build to run", async () => (await readdir(marks)).some((m) => m.startsWith(`${first.pid}-`)));
      paused.child.kill("SIGSTOP");
      // Past the TTL the lock expires; the other worker takes the entry over with a newer token.
      const second = await until("the other worker to take over", async () => (await rowsOf()).find((r) => r.pid === other.child.pid && r.status === "running"));
      expect(second.fencingToken!).toBeGreaterThan(first.fencingToken!);
      await writeFile(gate, "");
      await until("the takeover to succeed", async () => (await rowsOf()).some((r) => r.pid === other.child.pid && r.status === "succeeded"));
      const current = await readlink(path.join(fenced.dir, "apps", "paused", "current"));
      paused.child.kill("SIGCONT");
      const stale = await until("the paused worker to give up", async () => (await rowsOf()).find((r) => r.id === first.id && r.status !== "running"));
      expect(stale.status).toBe("interrupted");
      expect(stale.error).toMatch(/lock was lost|fencing token/);
      // The row is final before the log line reaches the pipe: wait for the line, not only the row.
      await paused.waitFor("deploy stopped: the lock was lost");
      expect(await readlink(path.join(fenced.dir, "apps", "paused", "current"))).toBe(current);
      expect(await readdir(path.join(fenced.dir, "apps", "paused", "releases"))).toEqual([path.basename(current)]);
      expect(await readdir(layout.deployment("paused"))).toEqual([]);
      expect(await readdir(layout.deadLetter("paused"))).toEqual([]);
      for (const w of workers) w.child.kill("SIGTERM");
      for (const w of workers) expect((await w.exited).signal).toBe("SIGTERM");
    } finally {
      await writeFile(gate, "");
      await fenced.dispose();
    }
  });
});
