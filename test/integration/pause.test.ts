import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { eq } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Daemon, startDaemon } from "../../src/daemon.ts";
import { deploys } from "../../src/db/schema.ts";
import type { StampedEvent } from "../../src/events/types.ts";
import { silentLogger } from "../../src/log.ts";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import { type TestRepo, createRepo } from "../helpers/git.ts";
import { runDeployq } from "../helpers/processes.ts";
import { until } from "../helpers/wait.ts";
import { type Workspace, createWorkspace, followingDeployment, post, pushPayload, signedDelivery } from "../helpers/workspace.ts";

/** A deploy freeze: `deployq pause` / `resume`, a file in queues/paused/ that the worker obeys. */
describe("pausing a deployment", () => {
  let ws: Workspace;
  let tdb: TestDatabase;
  let daemon: Daemon;
  let repo: TestRepo;
  let reposDir: string;
  let env: NodeJS.ProcessEnv;
  const seen: StampedEvent[] = [];

  beforeAll(async () => {
    reposDir = await mkdtemp(path.join(tmpdir(), "deployq-repos-"));
    repo = await createRepo(reposDir);
    ws = await createWorkspace({ deployments: followingDeployment("app", repo.bare, `commands = [["sh", "-c", "echo built"]]\ncoalesce_ms = 0`) });
    tdb = await createTestDatabase("postgres");
    daemon = await startDaemon({ settings: ws.settings, role: "serve", logger: silentLogger(), database: tdb.database });
    daemon.events.on((e) => seen.push(e));
    env = { ...ws.env, DATABASE_URL: tdb.url, DEPLOYQ_CONFIG: ws.configPath };
  });
  afterAll(async () => {
    await daemon?.close();
    await tdb?.dispose();
    await ws?.dispose();
    await rm(reposDir, { recursive: true, force: true });
  });

  const push = async (sha: string) => {
    const res = await post(daemon.url!, await signedDelivery(pushPayload({ repository: "octo-org/app", after: sha })));
    expect(res.status).toBe(202);
    return res.body.queued as string;
  };
  const statusOf = async (entry: string) => (await tdb.database.db.select().from(deploys).where(eq(deploys.entry, entry))).map((r) => r.status);
  const currentSha = async () => JSON.parse(await readFile(path.join(ws.dir, "apps", "app", "current", ".deployq-release.json"), "utf8")).sha as string;
  const queued = () => readdir(path.join(ws.queuesDir, "deployments", "app"));

  it("holds every push while paused, shows who paused it and why, and deploys only the newest once resumed", async () => {
    const v1 = await repo.commit({ "index.html": "v1" });
    const first = await push(v1);
    await until("v1 deployed", async () => (await statusOf(first)).includes("succeeded"));

    const paused = await runDeployq(["pause", "app", "--reason", "release freeze\u001b[31m until Monday", "--for", "2h"], env);
    expect(paused.code, paused.stderr).toBe(0);
    expect(paused.stdout).toMatch(/^paused app until \S+: its entries wait/);
    const file = JSON.parse(await readFile(path.join(ws.queuesDir, "paused", "app.json"), "utf8"));
    expect(file).toMatchObject({ reason: "release freeze\u001b[31m until Monday", by: expect.stringMatching(/^cli:.+@.+/), until: expect.any(String) });

    const v2 = await repo.commit({ "index.html": "v2" });
    const second = await push(v2);
    const v3 = await repo.commit({ "index.html": "v3" });
    const third = await push(v3);
    // The worker has seen the pause with entries waiting: it says so, and takes none of them.
    await until("the worker to tell the pause", async () => seen.find((e) => e.kind === "deploy" && e.name === "paused"));
    await until("both pushes in the deployment's queue", async () => (await queued()).length === 2);
    expect(await statusOf(second)).toEqual([]);
    expect(await statusOf(third)).toEqual([]);
    expect(await currentSha()).toBe(v1);

    const status = await runDeployq(["status", "app"], env);
    expect(status.code, status.stderr).toBe(0);
    // The reason is shown without the escape sequence it carried.
    expect(status.stdout).toMatch(/PAUSED: +release freeze \[31m until Monday, by cli:\S+ at \S+, until \S+: entries wait/);
    expect(status.stdout).not.toContain("\u001b");

    const resumed = await runDeployq(["resume", "app"], env);
    expect(resumed.code, resumed.stderr).toBe(0);
    expect(resumed.stdout).toBe("resumed app: its newest waiting entry deploys now\n");
    await until("v3 deployed", async () => (await statusOf(third)).includes("succeeded"));
    expect(await statusOf(second)).toEqual(["superseded"]);
    expect(await currentSha()).toBe(v3);
    expect(seen.some((e) => e.kind === "deploy" && e.name === "resumed")).toBe(true);
    expect((await runDeployq(["resume", "app"], env)).stdout).toBe("app was not paused\n");
  });

  it("ends a pause at its expiry by itself, and a file that is not a pause holds the queue until it is fixed", async () => {
    const dir = path.join(ws.queuesDir, "paused");
    await mkdir(dir, { recursive: true });
    await writeFile(path.join(dir, "app.json"), "{ not json");
    const v4 = await repo.commit({ "index.html": "v4" });
    const held = await push(v4);
    await until("the entry in the deployment's queue", async () => (await queued()).length === 1);
    const status = await runDeployq(["status", "app", "--json"], env);
    expect(JSON.parse(status.stdout).deployments[0].paused.invalid).toMatch(/app\.json is not JSON/);
    expect(await statusOf(held)).toEqual([]);

    // An expired pause: the worker removes it and deploys.
    await writeFile(path.join(dir, "app.json"), JSON.stringify({ reason: "short", by: "test", at: new Date(Date.now() - 60_000).toISOString(), until: new Date(Date.now() - 1000).toISOString() }));
    await until("v4 deployed once the pause has expired", async () => (await statusOf(held)).includes("succeeded"));
    expect(await readdir(dir)).toEqual([]);
  });

  it("refuses a duration it cannot read, and a deployment that is not configured", async () => {
    const bad = await runDeployq(["pause", "app", "--for", "soon"], env);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/--for "soon" is not a duration: write a whole number and s, m, h or d/);
    const unknown = await runDeployq(["pause", "nope"], env);
    expect(unknown.code).not.toBe(0);
    expect(unknown.stderr).toMatch(/no deployment "nope"/);
    expect(await readdir(path.join(ws.queuesDir, "paused"))).toEqual([]);
  });
});
