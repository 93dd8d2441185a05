import { lstat, mkdir, mkdtemp, readFile, readdir, readlink, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { eq } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Daemon, startDaemon } from "../../src/daemon.ts";
import { deploys } from "../../src/db/schema.ts";
import { silentLogger } from "../../src/log.ts";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import { type TestRepo, createRepo, git } from "../helpers/git.ts";
import { type Workspace, createWorkspace, listFiles, post, pushPayload, signedDelivery, followingDeployment } from "../helpers/workspace.ts";
import { until } from "../helpers/wait.ts";

describe("deployment worker, releases strategy", () => {
  let ws: Workspace;
  let tdb: TestDatabase;
  let daemon: Daemon;
  let repo: TestRepo;
  let appDir: string;

  beforeAll(async () => {
    const reposDir = await mkdtemp(path.join(tmpdir(), "deployq-repos-"));
    repo = await createRepo(reposDir);
    ws = await createWorkspace({
      deployments: followingDeployment("app", repo.bare, `
keep_releases = 3
shared = ["config/.env", "uploads/"]
commands = [["sh", "-c", "echo built $DEPLOYQ_SHA > BUILD; cat config/.env >> BUILD; if grep -q GOOD=0 config/.env; then echo 'config says GOOD=0' >&2; exit 3; fi"]]
restart = { script = ["sh", "-c", "echo restarted >> $DEPLOYQ_RELEASE_DIR/RESTARTS"] }
`),
    });
    appDir = path.join(ws.dir, "apps", "app");
    await mkdir(path.join(appDir, "shared", "config"), { recursive: true });
    await writeFile(path.join(appDir, "shared", "config", ".env"), "GOOD=1\n");
    tdb = await createTestDatabase("postgres");
    daemon = await startDaemon({ settings: ws.settings, role: "serve", logger: silentLogger(), database: tdb.database });
  });
  afterAll(async () => {
    await daemon?.close();
    await tdb?.dispose();
    await ws?.dispose();
  });

  async function push(sha: string, branch = "main") {
    const res = await post(daemon.url!, await signedDelivery(pushPayload({ repository: "octo-org/app", branch, after: sha })));
    expect(res.status).toBe(202);
    return res.body.queued as string;
  }
  /** Done when the row is final, not merely when `current` has switched (prune and the record come after). */
  const deployed = (sha: string) =>
    until(`the deploy of ${sha}`, async () => {
      const rows = await tdb.database.db.select().from(deploys).where(eq(deploys.sha, sha));
      return rows.some((r) => r.status === "succeeded");
    });
  const currentSha = async () => {
    try {
      const meta = JSON.parse(await readFile(path.join(appDir, "current", ".deployq-release.json"), "utf8"));
      return meta.sha as string;
    } catch {
      return undefined;
    }
  };

  it("deploys a pushed commit: current points at a release with exactly that commit's files", async () => {
    const sha = await repo.commit({ "index.html": "v1\n", "src/app.js": "console.log(1)\n", "config/.env": "FROM_REPO=1\n" });
    await push(sha);
    await deployed(sha);
    const link = await readlink(path.join(appDir, "current"));
    expect(link).toMatch(/^releases\/\d{8}T\d{6}\.\d{3}Z-[0-9a-f]{7}$/);
    expect(link.endsWith(sha.slice(0, 7))).toBe(true);
    const tracked = (await git(repo.work, "ls-tree", "-r", "--name-only", sha)).split("\n").sort();
    const files = await listFiles(path.join(appDir, link));
    const produced = [".deployq-release.json", "BUILD", "RESTARTS"];
    expect(files.filter((f) => !produced.includes(f))).toEqual(tracked.filter((f) => f !== "config/.env"));
    expect(await readFile(path.join(appDir, link, "index.html"), "utf8")).toBe("v1\n");
    // shared/ wins over the repository's copy, and the build saw it
    expect((await lstat(path.join(appDir, link, "config", ".env"))).isSymbolicLink()).toBe(true);
    expect(await readFile(path.join(appDir, link, "BUILD"), "utf8")).toBe(`built ${sha}\nGOOD=1\n`);
    expect(await readFile(path.join(appDir, link, "RESTARTS"), "utf8")).toBe("restarted\n");
    const [row] = await tdb.database.db.select().from(deploys).where(eq(deploys.sha, sha));
    expect(row).toMatchObject({ deployment: "app", status: "succeeded", attempt: 1, release: path.basename(link) });
    expect(await readFile(row!.logPath!, "utf8")).toMatch(/\$ sh -c .*\n→ exit 0/);
    expect(await readdir(path.join(ws.queuesDir, "deployments", "app"))).toEqual([]);
  });

  it("keeps the previous release serving when a build fails, dead-letters the entry, and deploys it once requeued after the fix", async () => {
    const before = await currentSha();
    const link = await readlink(path.join(appDir, "current"));
    await writeFile(path.join(appDir, "shared", "config", ".env"), "GOOD=0\n");
    const sha = await repo.commit({ "index.html": "v2\n" });
    const name = await push(sha);
    const dead = path.join(ws.queuesDir, "dead-letter", "app", name);
    await until("the dead letter", async () => (await readdir(path.dirname(dead)).catch(() => [] as string[])).includes(name));
    expect(await currentSha()).toBe(before);
    expect(await readlink(path.join(appDir, "current"))).toBe(link);
    const entry = JSON.parse(await readFile(dead, "utf8"));
    expect(entry.attempts).toBe(1);
    expect(entry.last_error).toMatch(/exited with code 3:\nconfig says GOOD=0/);
    const rows = await tdb.database.db.select().from(deploys).where(eq(deploys.sha, sha));
    expect(rows).toMatchObject([{ status: "failed", exitCode: 3, error: expect.stringMatching(/config says GOOD=0/) }]);
    expect(await readFile(rows[0]!.logPath!, "utf8")).toMatch(/config says GOOD=0\n→ exited with code 3/);
    // No half-made release is left behind.
    const releases = await readdir(path.join(appDir, "releases"));
    for (const r of releases) expect(JSON.parse(await readFile(path.join(appDir, "releases", r, ".deployq-release.json"), "utf8"))).toHaveProperty("sha");

    await writeFile(path.join(appDir, "shared", "config", ".env"), "GOOD=2\n");
    const { requeue } = await import("../../src/queue/admin.ts");
    const { queueLayout } = await import("../../src/queue/layout.ts");
    expect(await requeue(queueLayout(ws.queuesDir), "app")).toEqual([name]);
    await deployed(sha);
    expect(await readFile(path.join(appDir, "current", "BUILD"), "utf8")).toBe(`built ${sha}\nGOOD=2\n`);
  });

  it("marks an entry whose sha is already current as already-deployed", async () => {
    const sha = (await currentSha())!;
    const name = await push(sha);
    const row = await until("the outcome", async () => {
      const [r] = await tdb.database.db.select().from(deploys).where(eq(deploys.entry, name));
      return r && r.status !== "running" ? r : undefined;
    });
    expect(row.status).toBe("already-deployed");
  });

  it("keeps keep_releases releases and never the half-made ones", async () => {
    for (let i = 0; i < 4; i++) {
      const sha = await repo.commit({ "index.html": `v-prune-${i}\n` });
      await push(sha);
      await deployed(sha);
    }
    const releases = await readdir(path.join(appDir, "releases"));
    expect(releases).toHaveLength(3);
    expect(releases.sort().at(-1)).toBe(path.basename(await readlink(path.join(appDir, "current"))));
  });
});

describe("newest commit wins", () => {
  it("deploys the newest of a burst that arrives during a slow deploy, supersedes the rest, and never overlaps runs", async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "deployq-burst-"));
    const repo = await createRepo(dir);
    const gate = path.join(dir, "gate");
    const started = path.join(dir, "started");
    await mkdir(started);
    const ws = await createWorkspace({
      deployments: followingDeployment("slow", repo.bare, `
commands = [["sh", "-c", "touch ${started}/$DEPLOYQ_SHA; while [ ! -e ${gate} ]; do sleep 0.02; done"]]
`),
    });
    const tdb = await createTestDatabase("postgres");
    const daemon = await startDaemon({ settings: ws.settings, role: "serve", logger: silentLogger(), database: tdb.database });
    try {
      const send = async (sha: string) => {
        const res = await post(daemon.url!, await signedDelivery(pushPayload({ repository: "octo-org/slow", branch: "main", after: sha })));
        expect(res.status).toBe(202);
      };
      const first = await repo.commit({ "v": "1" });
      await send(first);
      await until("the first deploy to be building", async () => (await readdir(started)).includes(first));
      const burst: string[] = [];
      for (let i = 2; i <= 4; i++) {
        const sha = await repo.commit({ "v": String(i) });
        burst.push(sha);
        await send(sha);
      }
      await until("the burst to be queued", async () => (await readdir(path.join(ws.queuesDir, "deployments", "slow"))).length === 3);
      await writeFile(gate, "");
      const appDir = path.join(ws.dir, "apps", "slow");
      await until("the newest release", async () => {
        const meta = await readFile(path.join(appDir, "current", ".deployq-release.json"), "utf8").catch(() => "");
        return meta.includes(burst[2]!);
      });
      await until("the queue to empty", async () => (await readdir(path.join(ws.queuesDir, "deployments", "slow"))).length === 0);
      const rows = await tdb.database.db.select().from(deploys).where(eq(deploys.deployment, "slow"));
      const bySha = new Map(rows.map((r) => [r.sha ?? "", r]));
      expect(bySha.get(first)?.status).toBe("succeeded");
      expect(bySha.get(burst[0]!)?.status).toBe("superseded");
      expect(bySha.get(burst[1]!)?.status).toBe("superseded");
      expect(bySha.get(burst[1]!)?.supersededBy).toMatch(/\.json$/);
      expect(bySha.get(burst[2]!)?.status).toBe("succeeded");
      expect(rows).toHaveLength(4);
      // Runs never overlap.
      const runs = rows.filter((r) => r.status !== "superseded").sort((a, b) => a.startedAt.getTime() - b.startedAt.getTime());
      for (let i = 1; i < runs.length; i++) expect(runs[i]!.startedAt.getTime()).toBeGreaterThanOrEqual(runs[i - 1]!.finishedAt!.getTime());
      // The burst's older shas were never built.
      expect((await readdir(started)).sort()).toEqual([first, burst[2]!].sort());
    } finally {
      await writeFile(gate, "");
      await daemon.close();
      await tdb.dispose();
      await ws.dispose();
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("a burst of pushes", () => {
  it("costs one or two deploys of its newest commit, not one per push", async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "deployq-coalesce-"));
    const repo = await createRepo(dir);
    // A quiet window far longer than one acknowledged push takes, even on a loaded CI
    // machine (with the 300 ms default, pushes slowed to ~300 ms each by other test files'
    // fsyncs never leave the queue quiet, and each 10× cap deploys an older commit).
    const ws = await createWorkspace({
      deployments: followingDeployment("busy", repo.bare, "coalesce_ms = 2000"),
    });
    const tdb = await createTestDatabase("postgres");
    const daemon = await startDaemon({ settings: ws.settings, role: "serve", logger: silentLogger(), database: tdb.database });
    try {
      const shas: string[] = [];
      for (let i = 0; i < 20; i++) shas.push(await repo.commit({ v: String(i) }));
      for (const sha of shas) {
        const res = await post(daemon.url!, await signedDelivery(pushPayload({ repository: "octo-org/busy", branch: "main", after: sha })));
        expect(res.status).toBe(202);
        await new Promise((r) => setTimeout(r, 20)); // pushes arriving one after another, as from a script
      }
      const newest = shas.at(-1)!;
      const rows = await until("the newest commit to be deployed", async () => {
        const all = await tdb.database.db.select().from(deploys).where(eq(deploys.deployment, "busy"));
        return all.length === 20 && all.some((r) => r.sha === newest && r.status === "succeeded") ? all : undefined;
      });
      const ran = rows.filter((r) => r.status !== "superseded");
      expect(ran.length).toBeLessThanOrEqual(2);
      expect(rows.filter((r) => r.status === "superseded")).toHaveLength(20 - ran.length);
      const meta = JSON.parse(await readFile(path.join(ws.dir, "apps", "busy", "current", ".deployq-release.json"), "utf8"));
      expect(meta.sha).toBe(newest);
    } finally {
      await daemon.close();
      await tdb.dispose();
      await ws.dispose();
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("transient and permanent failures", () => {
  it("dead-letters at once, without retries, a remote that does not exist", async () => {
    const ws = await createWorkspace({
      deployments: `
[deployments.typo]
repository = "octo-org/typo"
branch = "main"
remote = "/nonexistent/typo.git"
path = "./apps/typo"
max_attempts = 5
retry_backoff_s = 0.05
`,
    });
    const tdb = await createTestDatabase("postgres");
    const daemon = await startDaemon({ settings: ws.settings, role: "serve", logger: silentLogger(), database: tdb.database });
    try {
      const res = await post(daemon.url!, await signedDelivery(pushPayload({ repository: "octo-org/typo", branch: "main", after: "3".repeat(40) })));
      const name = res.body.queued as string;
      const dead = path.join(ws.queuesDir, "dead-letter", "typo", name);
      await until("the dead letter", async () => (await readdir(path.dirname(dead)).catch(() => [] as string[])).includes(name));
      const entry = JSON.parse(await readFile(dead, "utf8"));
      expect(entry).toMatchObject({
        attempts: 1,
        last_error: expect.stringMatching(/^git fetch from \/nonexistent\/typo\.git failed, and retrying will not help: fatal: '\/nonexistent\/typo\.git' does not appear to be a git repository \(check/),
      });
      const rows = await tdb.database.db.select().from(deploys).where(eq(deploys.entry, name));
      expect(rows.map((r) => [r.attempt, r.status])).toEqual([[1, "failed"]]);
    } finally {
      await daemon.close();
      await tdb.dispose();
      await ws.dispose();
    }
  });

  it("retries an unreachable remote with backoff, then dead-letters it with the last error", async () => {
    const ws = await createWorkspace({
      deployments: `
[deployments.offline]
repository = "octo-org/offline"
branch = "main"
remote = "http://127.0.0.1:1/offline.git"
path = "./apps/offline"
max_attempts = 3
retry_backoff_s = 0.05
`,
    });
    const tdb = await createTestDatabase("postgres");
    const daemon = await startDaemon({ settings: ws.settings, role: "serve", logger: silentLogger(), database: tdb.database });
    try {
      const sha = "1".repeat(40);
      const res = await post(daemon.url!, await signedDelivery(pushPayload({ repository: "octo-org/offline", branch: "main", after: sha })));
      const name = res.body.queued as string;
      const dead = path.join(ws.queuesDir, "dead-letter", "offline", name);
      await until("the dead letter", async () => (await readdir(path.dirname(dead)).catch(() => [] as string[])).includes(name));
      const entry = JSON.parse(await readFile(dead, "utf8"));
      expect(entry).toMatchObject({ attempts: 3, last_error: expect.stringMatching(/git fetch from http:\/\/127\.0\.0\.1:1\/offline\.git failed: .*Failed to connect/s) });
      expect(entry.retry_at).toBeUndefined();
      const rows = await tdb.database.db.select().from(deploys).where(eq(deploys.entry, name));
      expect(rows.map((r) => [r.attempt, r.status])).toEqual([
        [1, "retrying"],
        [2, "retrying"],
        [3, "failed"],
      ]);
    } finally {
      await daemon.close();
      await tdb.dispose();
      await ws.dispose();
    }
  });
});
