import { mkdir, mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { asc, eq } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Daemon, startDaemon } from "../../src/daemon.ts";
import { finishDeploy, startDeploy } from "../../src/db/queries/deploys.ts";
import { deploys } from "../../src/db/schema.ts";
import { silentLogger } from "../../src/log.ts";
import { deployLogPath } from "../../src/workers/deployment.ts";
import { pruneDeploys } from "../../src/workers/prune-deploys.ts";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import { type TestRepo, createRepo } from "../helpers/git.ts";
import { until } from "../helpers/wait.ts";
import { type Workspace, createWorkspace, followingDeployment, queuePush } from "../helpers/workspace.ts";

describe.each(["postgres", "pglite"] as const)("pruneDeploys on %s", (kind) => {
  let tdb: TestDatabase;
  let dataDir: string;
  beforeAll(async () => {
    tdb = await createTestDatabase(kind);
    dataDir = await mkdtemp(path.join(tmpdir(), "deployq-prune-"));
  });
  afterAll(async () => {
    await tdb?.dispose();
    await rm(dataDir, { recursive: true, force: true });
  });

  /** A finished (or running) deploy row with its log file. */
  async function deploy(deployment: string, host: string, status: "succeeded" | "failed" | "running" = "succeeded"): Promise<number> {
    const id = await startDeploy(tdb.database.db, { deployment, entry: `e-${Math.random()}`, deliveryId: undefined, event: "push", ref: undefined, sha: undefined, attempt: 1, host, pid: 1 });
    const log = deployLogPath(dataDir, deployment, id);
    await mkdir(path.dirname(log), { recursive: true });
    await writeFile(log, `deploy ${id}\n`);
    if (status !== "running") await finishDeploy(tdb.database.db, id, { status, logPath: log });
    return id;
  }
  const ids = async (deployment: string) =>
    (await tdb.database.db.select({ id: deploys.id }).from(deploys).where(eq(deploys.deployment, deployment)).orderBy(asc(deploys.id))).map((r) => r.id);
  const logs = async (deployment: string) => (await readdir(path.join(dataDir, "logs", deployment)).catch(() => [] as string[])).sort();

  it("keeps this host's newest N deploys of the deployment, rows and logs, and never a running one or another host's", async () => {
    const running = await deploy("api", "here", "running");
    const old = [await deploy("api", "here"), await deploy("api", "here", "failed")];
    const elsewhere = await deploy("api", "there");
    const kept = [await deploy("api", "here"), await deploy("api", "here"), await deploy("api", "here")];
    const other = await deploy("web", "here");
    // A file in the logs directory that no deploy row names: never touched.
    await writeFile(path.join(dataDir, "logs", "api", "notes.txt"), "mine");

    const prune = (keep: number) => pruneDeploys({ db: tdb.database.db, deployment: "api", host: "here", keep, logFile: (id) => deployLogPath(dataDir, "api", id) });
    expect((await prune(3)).sort((a, b) => a - b)).toEqual(old);
    expect(await ids("api")).toEqual([running, elsewhere, ...kept]);
    expect(await logs("api")).toEqual([...[running, elsewhere, ...kept].map((id) => `${id}.log`), "notes.txt"].sort());
    expect(await ids("web")).toEqual([other]);
    // Nothing beyond N any more: nothing to do; fewer rows than N: nothing either.
    expect(await prune(3)).toEqual([]);
    expect(await prune(1000)).toEqual([]);
    expect(await prune(1)).toEqual(kept.slice(0, 2));
    expect(await ids("api")).toEqual([running, elsewhere, kept[2]]);
  });
});

describe("a deployment worker prunes after each deploy (keep_deploys)", () => {
  let dir: string;
  let repo: TestRepo;
  let ws: Workspace;
  let tdb: TestDatabase;
  let daemon: Daemon;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "deployq-prune-worker-"));
    repo = await createRepo(dir, "small");
    ws = await createWorkspace({ topLevel: "keep_deploys = 50", deployments: followingDeployment("small", repo.bare, "keep_deploys = 2") });
    tdb = await createTestDatabase("pglite");
    daemon = await startDaemon({ settings: ws.settings, role: "serve", logger: silentLogger(), database: tdb.database });
  });
  afterAll(async () => {
    await daemon?.close();
    await tdb?.dispose();
    await ws?.dispose();
    await rm(dir, { recursive: true, force: true });
  });

  it("keeps the newest two deploys and their logs", async () => {
    const done: number[] = [];
    for (let i = 0; i < 3; i++) {
      const sha = await repo.commit({ "v.txt": `v${i}` });
      await queuePush(ws.queuesDir, { deployment: "small" }, "octo-org/small", sha);
      const row = await until(`deploy ${i}`, async () => (await tdb.database.db.select().from(deploys).where(eq(deploys.sha, sha))).find((r) => r.status === "succeeded"));
      done.push(row.id);
    }
    // The third deploy's prune runs right after its row is final.
    const rows = async () => (await tdb.database.db.select({ id: deploys.id }).from(deploys).where(eq(deploys.deployment, "small"))).map((r) => r.id).sort((a, b) => a - b);
    // The row goes first, then its log file.
    const logs = async () => (await readdir(path.join(ws.settings.dataDir, "logs", "small"))).sort();
    await until("the first deploy pruned, row and log", async () => !(await rows()).includes(done[0]!) && !(await logs()).includes(`${done[0]}.log`));
    expect(await rows()).toEqual(done.slice(1));
    expect(await logs()).toEqual(done.slice(1).map((id) => `${id}.log`).sort());
  });
});
