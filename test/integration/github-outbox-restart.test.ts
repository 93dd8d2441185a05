import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { and, eq } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { deploys } from "../../src/db/schema.ts";
import { outboxRows } from "../../src/github/outbox.ts";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import { type FakeGithub, startFakeGithub } from "../helpers/fake-github.ts";
import { type TestRepo, createRepo } from "../helpers/git.ts";
import { type Spawned, spawnDeployq } from "../helpers/processes.ts";
import { until } from "../helpers/wait.ts";
import { type Workspace, createWorkspace, followingDeployment, queuePush } from "../helpers/workspace.ts";

const CONTEXT = "deployq/app";

/** deployq killed with statuses still in its outbox: the next start sends them, in order, none twice. */
describe("the GitHub outbox across a kill", () => {
  let ws: Workspace;
  let tdb: TestDatabase;
  let repo: TestRepo;
  let dir: string;
  let fake: FakeGithub;
  let env: NodeJS.ProcessEnv;
  let workers: Spawned | undefined;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "deployq-github-kill-"));
    repo = await createRepo(dir);
    fake = await startFakeGithub();
    ws = await createWorkspace({ topLevel: "[github]\nwrite_interval_ms = 0\ntimeout_ms = 1000\n", deployments: followingDeployment("app", repo.bare, "coalesce_ms = 0") });
    tdb = await createTestDatabase("postgres");
    env = { ...ws.env, DATABASE_URL: tdb.url, DEPLOYQ_CONFIG: ws.configPath, DEPLOYQ_LOG_LEVEL: "info", GITHUB_TOKEN: fake.token, GITHUB_API_URL: fake.url };
  });
  afterAll(async () => {
    if (workers && workers.child.exitCode === null && workers.child.signalCode === null) {
      workers.child.kill("SIGTERM");
      await workers.exited;
    }
    await tdb?.dispose();
    await fake?.close();
    await ws?.dispose();
    await rm(dir, { recursive: true, force: true });
  });

  const succeeded = (entry: string) =>
    until(`${entry} deployed`, async () => (await tdb.database.db.select().from(deploys).where(and(eq(deploys.entry, entry), eq(deploys.status, "succeeded"))))[0]);

  it("sends what was left after a restart, in order, and nothing twice", async () => {
    workers = spawnDeployq(["workers"], env);
    await workers.waitFor("deployq started");
    // a's statuses reach GitHub before the outage: the restart must not send them again.
    const a = await repo.commit({ "index.html": "a" });
    await succeeded(await queuePush(ws.queuesDir, "router", "octo-org/app", a));
    await until("a's success to be sent", async () => fake.statusesOf(a, CONTEXT).at(-1)?.state === "success");
    const sentBefore = fake.statuses.map((s) => `${s.sha.slice(0, 7)} ${s.state}: ${s.description}`);
    fake.setMode({ kind: "fail", status: 502 });
    const b = await repo.commit({ "index.html": "b" });
    await succeeded(await queuePush(ws.queuesDir, "router", "octo-org/app", b));
    // Tried, and said why in the log.
    await workers.waitFor("could not send a commit status to GitHub; retrying");
    workers.child.kill("SIGKILL");
    await workers.exited;
    // Never with the token.
    expect(workers.output()).not.toContain(fake.token);
    const left = (await outboxRows(tdb.database.db)).filter((r) => r.result === null);
    expect(left.length).toBeGreaterThan(0);
    expect(left.every((r) => r.sha === b)).toBe(true);

    fake.setMode({ kind: "up" });
    workers = spawnDeployq(["workers"], env);
    await workers.waitFor("deployq started");
    await until("every status to be sent", async () => (await outboxRows(tdb.database.db)).every((r) => r.result !== null));
    // After the restart only b's newest state needed sending (its older ones are collapsed into it), and nothing of a's again.
    expect(fake.statuses.map((s) => `${s.sha.slice(0, 7)} ${s.state}: ${s.description}`)).toEqual([...sentBefore, `${b.slice(0, 7)} success: Live on app`]);
    const rows = await outboxRows(tdb.database.db);
    expect(rows.filter((r) => r.result === "sent")).toHaveLength(sentBefore.length + 1);
    expect(rows.every((r) => r.result === "sent" || r.result === "collapsed")).toBe(true);

    workers.child.kill("SIGTERM");
    expect((await workers.exited).signal, workers.output()).toBe("SIGTERM");
  });
});
