import { randomUUID } from "node:crypto";
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { eq } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import pino from "pino";
import { startDaemon } from "../../src/daemon.ts";
import { deploys } from "../../src/db/schema.ts";

import { queueLayout } from "../../src/queue/layout.ts";
import { ensureQueueDirs } from "../../src/queue/write.ts";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import { type TestRepo, createRepo } from "../helpers/git.ts";
import { LogCollector } from "../helpers/log-collector.ts";
import { spawnDeployq } from "../helpers/processes.ts";
import { createWorkspace, queuePush, followingDeployment } from "../helpers/workspace.ts";
import { isRunning, until } from "../helpers/wait.ts";

describe("shutdown of a workers process during a deploy", () => {
  let dir: string;
  let repo: TestRepo;
  let tdb: TestDatabase;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "deployq-shutdown-"));
    repo = await createRepo(dir);
    tdb = await createTestDatabase("postgres");
  });
  afterAll(async () => {
    await tdb?.dispose();
    await rm(dir, { recursive: true, force: true });
  });

  /** A workers process whose build waits for a gate file; returns handles to drive it. */
  async function setup(graceSeconds: number) {
    const run = path.join(dir, randomUUID());
    const gate = path.join(run, "gate");
    await mkdir(run);
    const ws = await createWorkspace({
      topLevel: `shutdown_grace_s = ${graceSeconds}`,
      deployments: followingDeployment("app", repo.bare, `
commands = [["sh", "-c", "echo $$ > ${run}/pid; while [ ! -e ${gate} ]; do sleep 0.02; done"]]
`),
    });
    const env = { ...ws.env, DATABASE_URL: tdb.url, DEPLOYQ_CONFIG: ws.configPath, DEPLOYQ_LOG_LEVEL: "info" };
    const layout = queueLayout(ws.queuesDir);
    await ensureQueueDirs(layout, ["app"]);
    const sha = await repo.commit({ "v": randomUUID() });
    const name = await queuePush(ws.queuesDir, { deployment: "app" }, "octo-org/app", sha);
    const workers = spawnDeployq(["workers"], env);
    const pidFile = path.join(run, "pid");
    await until("the build to start", async () => (await readFile(pidFile, "utf8").catch(() => "")).trim() !== "");
    const commandPid = Number(await readFile(pidFile, "utf8"));
    const statuses = async () => (await tdb.database.db.select().from(deploys).where(eq(deploys.entry, name))).map((r) => r.status);
    const queued = async () => (await readdir(layout.deployment("app"))).includes(name);
    return { ws, gate, workers, commandPid, statuses, queued, cleanup: async () => {
      await writeFile(gate, "");
      workers.child.kill("SIGKILL");
      await workers.exited;
      await ws.dispose();
    } };
  }

  it("lets a running command finish within the grace period, then exits", async () => {
    const t = await setup(30);
    try {
      t.workers.child.kill("SIGTERM");
      await t.workers.waitFor("draining");
      expect(await isRunning(t.commandPid)).toBe(true);
      await writeFile(t.gate, "");
      expect((await t.workers.exited).signal).toBe("SIGTERM");
      expect(await t.statuses()).toEqual(["succeeded"]);
      expect(await t.queued()).toBe(false);
    } finally {
      await t.cleanup();
    }
  });

  it("kills the command's process group after the grace period and leaves the entry queued", async () => {
    const t = await setup(0.3);
    try {
      t.workers.child.kill("SIGTERM");
      expect((await t.workers.exited).signal).toBe("SIGTERM");
      expect(await isRunning(t.commandPid)).toBe(false);
      expect(await t.statuses()).toEqual(["interrupted"]);
      expect(await t.queued()).toBe(true);
    } finally {
      await t.cleanup();
    }
  });

  it("stops at once on a second signal, taking the command with it, and leaves the entry queued", async () => {
    const t = await setup(30);
    try {
      t.workers.child.kill("SIGTERM");
      await t.workers.waitFor("draining");
      t.workers.child.kill("SIGTERM");
      expect((await t.workers.exited).code).toBe(1);
      expect(await isRunning(t.commandPid)).toBe(false);
      expect(await t.queued()).toBe(true);
    } finally {
      await t.cleanup();
    }
  });
});

describe("shutdown while a burst settles", () => {
  it("ends the coalesce wait at once, starts no deploy, and leaves the entries queued", async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "deployq-settle-"));
    const repo = await createRepo(dir);
    // A quiet window far longer than any test may take: without an end to the wait, close() would wait for it.
    const ws = await createWorkspace({ deployments: followingDeployment("app", repo.bare, "coalesce_ms = 600000") });
    const tdb = await createTestDatabase("postgres");
    const logs = new LogCollector();
    // Two pushes waiting when the worker starts: a burst.
    const sha = await repo.commit({ v: "1" });
    const names = [await queuePush(ws.queuesDir, { deployment: "app" }, "octo-org/app", sha), await queuePush(ws.queuesDir, { deployment: "app" }, "octo-org/app", sha)];
    const daemon = await startDaemon({ settings: ws.settings, role: "workers", logger: pino({ level: "debug" }, logs), database: tdb.database });
    try {
      await until("the worker to wait for the burst to settle", async () => logs.text.includes("letting the burst settle"));
      await daemon.close();
      expect((await readdir(path.join(ws.queuesDir, "deployments", "app"))).sort()).toEqual(names.sort());
      expect(await tdb.database.db.select().from(deploys)).toEqual([]);
    } finally {
      await daemon.close();
      await tdb.dispose();
      await ws.dispose();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
