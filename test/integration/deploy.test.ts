import { lstat, readFile, readdir, readlink, writeFile, mkdir } from "node:fs/promises";
import path from "node:path";
import { eq } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Daemon, startDaemon } from "../../src/daemon.ts";
import { deploys } from "../../src/db/schema.ts";
import { silentLogger } from "../../src/log.ts";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import { type TestRepo, createRepo, git } from "../helpers/git.ts";
import { type Workspace, createWorkspace, listFiles, post, pushPayload, signedDelivery } from "../helpers/workspace.ts";

async function until<T>(what: string, fn: () => Promise<T | undefined | false>, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await fn();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe("deployment worker, releases strategy", () => {
  let ws: Workspace;
  let tdb: TestDatabase;
  let daemon: Daemon;
  let repo: TestRepo;
  let appDir: string;

  beforeAll(async () => {
    const { mkdtemp } = await import("node:fs/promises");
    const { tmpdir } = await import("node:os");
    const reposDir = await mkdtemp(path.join(tmpdir(), "deployq-repos-"));
    repo = await createRepo(reposDir);
    ws = await createWorkspace({
      deployments: `
[deployments.app]
repository = "octo-org/app"
branch = "main"
remote = "${repo.bare}"
path = "./apps/app"
keep_releases = 3
shared = ["config/.env", "uploads/"]
commands = [["sh", "-c", "echo built $DEPLOYQ_SHA > BUILD; cat config/.env >> BUILD"]]
restart = { script = ["sh", "-c", "echo restarted >> $DEPLOYQ_RELEASE_DIR/RESTARTS"] }
`,
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
    await until("the release", async () => (await currentSha()) === sha);
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
});
