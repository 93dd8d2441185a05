import { access, mkdtemp, readFile, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { eq } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Daemon, startDaemon } from "../../src/daemon.ts";
import { deploys } from "../../src/db/schema.ts";
import { silentLogger } from "../../src/log.ts";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import { type TestRepo, createRepo } from "../helpers/git.ts";
import { runDeployq } from "../helpers/processes.ts";
import { isRunning, until } from "../helpers/wait.ts";
import { type Workspace, createWorkspace, followingDeployment, post, pushPayload, signedDelivery } from "../helpers/workspace.ts";

const exists = (file: string) => access(file).then(() => true, () => false);

/** `deployq cancel`: a running deploy stops before its switch, and the previous release stays current. */
describe("cancelling a deploy", () => {
  let ws: Workspace;
  let tdb: TestDatabase;
  let daemon: Daemon;
  let repo: TestRepo;
  let dir: string;
  let env: NodeJS.ProcessEnv;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "deployq-cancel-"));
    repo = await createRepo(dir);
    // A commit with SLOWBUILD builds until cancelled (writing its pid); one with SLOWRESTART restarts until `go` exists.
    ws = await createWorkspace({
      deployments: followingDeployment(
        "app",
        repo.bare,
        `commands = [["sh", "-c", "if [ -e SLOWBUILD ]; then echo $$ > ${dir}/build.pid; exec sleep 600; fi; echo built"]]
restart = { script = ["sh", "-c", "if [ -e SLOWRESTART ]; then touch ${dir}/restarting; while [ ! -e ${dir}/go ]; do sleep 0.05; done; fi"] }
coalesce_ms = 0`,
      ),
    });
    tdb = await createTestDatabase("postgres");
    daemon = await startDaemon({ settings: ws.settings, role: "serve", logger: silentLogger(), database: tdb.database });
    env = { ...ws.env, DATABASE_URL: tdb.url, DEPLOYQ_CONFIG: ws.configPath };
  });
  afterAll(async () => {
    await writeFile(path.join(dir, "go"), "");
    await daemon?.close();
    await tdb?.dispose();
    await ws?.dispose();
    await rm(dir, { recursive: true, force: true });
  });

  const push = async (sha: string) => {
    const res = await post(daemon.url!, await signedDelivery(pushPayload({ repository: "octo-org/app", after: sha })));
    expect(res.status).toBe(202);
    return res.body.queued as string;
  };
  const rowsOf = async (entry: string) => tdb.database.db.select().from(deploys).where(eq(deploys.entry, entry));
  const currentSha = async () => JSON.parse(await readFile(path.join(ws.dir, "apps", "app", "current", ".deployq-release.json"), "utf8")).sha as string;

  it("stops a build: its command is killed, the previous release stays current, the entry waits in dead-letter/", async () => {
    const v1 = await repo.commit({ "index.html": "v1" });
    const first = await push(v1);
    await until("v1 deployed", async () => (await rowsOf(first)).some((r) => r.status === "succeeded"));

    const v2 = await repo.commit({ SLOWBUILD: "1" });
    const second = await push(v2);
    const pid = Number(await until("the slow build to start", async () => (await readFile(path.join(dir, "build.pid"), "utf8").catch(() => "")).trim()));
    const cancelled = await runDeployq(["cancel", "app"], env);
    expect(cancelled.code, cancelled.stderr).toBe(0);
    expect(cancelled.stdout).toMatch(/^asked deploy #\d+ of app to stop/);

    const [row] = await until("the deploy to be recorded cancelled", async () => {
      const rows = await rowsOf(second);
      return rows.some((r) => r.status === "cancelled") ? rows : undefined;
    });
    expect(row!.error).toMatch(/^cancelled by cli:\S+@\S+/);
    await until("the build's process to be gone", async () => !(await isRunning(pid)));
    expect(await currentSha()).toBe(v1);
    // Recorded first, then moved aside.
    await until("the entry in dead-letter/app/", async () => (await readdir(path.join(ws.queuesDir, "dead-letter", "app")).catch((): string[] => [])).includes(second));
    // The hand-over links it into dead-letter/ first, then removes it from the queue.
    await until("the entry gone from the queue", async () => (await readdir(path.join(ws.queuesDir, "deployments", "app"))).length === 0);
    const log = await readFile(row!.logPath!, "utf8");
    expect(log).toMatch(/== cancelled by cli:\S+: stopping; the previous release stays current/);

    const again = await runDeployq(["cancel", "app"], env);
    expect(again.code).toBe(2);
    expect(again.stderr).toMatch(/no deploy of app is running on this host/);
  });

  it("refuses once the deploy is past its switch, and the deploy finishes", async () => {
    const v3 = await repo.commit({ SLOWBUILD: null, SLOWRESTART: "1" });
    const third = await push(v3);
    await until("the restart to begin", async () => exists(path.join(dir, "restarting")));
    const refused = await runDeployq(["cancel", "app"], env);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/is past its switch .*: it finishes, or rolls back by itself/);
    await writeFile(path.join(dir, "go"), "");
    await until("v3 deployed", async () => (await rowsOf(third)).some((r) => r.status === "succeeded"));
    expect(await currentSha()).toBe(v3);
  });
});
