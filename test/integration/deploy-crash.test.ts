
import { mkdir, mkdtemp, readFile, readdir, readlink, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { eq } from "drizzle-orm";
import { describe, expect, it } from "vitest";
import { deploys } from "../../src/db/schema.ts";

import { queueLayout } from "../../src/queue/layout.ts";
import { ensureQueueDirs } from "../../src/queue/write.ts";
import { createTestDatabase } from "../helpers/db.ts";
import { createRepo } from "../helpers/git.ts";
import { spawnDeployq } from "../helpers/processes.ts";
import { createWorkspace, queuePush, followingDeployment } from "../helpers/workspace.ts";
import { isRunning, until } from "../helpers/wait.ts";

describe("a workers process killed with SIGKILL in the middle of a build", () => {
  it("redoes the deploy at the next start, kills the orphaned build, and ends in the right release", async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "deployq-kill-"));
    const repo = await createRepo(dir);
    const gate = path.join(dir, "gate");
    const started = path.join(dir, "started");
    await mkdir(started);
    const ws = await createWorkspace({
      deployments: followingDeployment("app", repo.bare, `
commands = [["sh", "-c", "echo $$ > ${started}/$DEPLOYQ_SHA; while [ ! -e ${gate} ]; do sleep 0.02; done; echo built > BUILT"]]
`),
    });
    const tdb = await createTestDatabase("postgres");
    const env = { ...ws.env, DATABASE_URL: tdb.url, DEPLOYQ_CONFIG: ws.configPath, DEPLOYQ_LOG_LEVEL: "info" };
    const layout = queueLayout(ws.queuesDir);
    await ensureQueueDirs(layout, ["app"]);
    const appDir = path.join(ws.dir, "apps", "app");
    const enqueue = (sha: string) => queuePush(ws.queuesDir, { deployment: "app" }, "octo-org/app", sha);
    const statuses = async (sha: string) => (await tdb.database.db.select().from(deploys).where(eq(deploys.sha, sha))).map((r) => r.status).sort();
    let workers = spawnDeployq(["workers"], env);
    try {
      await workers.waitFor("deployq started");
      const v1 = await repo.commit({ "index.html": "v1" });
      await writeFile(gate, "");
      await enqueue(v1);
      await until("v1", async () => (await statuses(v1)).includes("succeeded"));
      const v1Release = await readlink(path.join(appDir, "current"));

      await rm(gate);
      const v2 = await repo.commit({ "index.html": "v2" });
      await enqueue(v2);
      await until("the v2 build to run", async () => (await readdir(started)).includes(v2));
      const orphan = Number(await readFile(path.join(started, v2), "utf8"));
      workers.child.kill("SIGKILL");
      await workers.exited;

      // Killed mid-build: current still on v1, the entry still queued, the build orphaned.
      expect(await readlink(path.join(appDir, "current"))).toBe(v1Release);
      expect(await readdir(path.join(ws.queuesDir, "deployments", "app"))).toHaveLength(1);
      expect(await isRunning(orphan)).toBe(true);
      expect(await statuses(v2)).toEqual(["running"]);

      workers = spawnDeployq(["workers"], env);
      await workers.waitFor("killed a command left running");
      expect(await isRunning(orphan)).toBe(false);
      await until("the redone build to run", async () => Number(await readFile(path.join(started, v2), "utf8").catch(() => "0")) !== orphan);
      await writeFile(gate, "");
      await until("v2", async () => (await statuses(v2)).includes("succeeded"));
      expect(await statuses(v2)).toEqual(["interrupted", "succeeded"]);
      const current = await readlink(path.join(appDir, "current"));
      expect(current).not.toBe(v1Release);
      expect(await readFile(path.join(appDir, current, "index.html"), "utf8")).toBe("v2");
      expect(await readFile(path.join(appDir, current, "BUILT"), "utf8")).toBe("built\n");
      // Nothing half-made or half-switched is left: every release is complete, no temporary links.
      const releases = await readdir(path.join(appDir, "releases"));
      expect(releases).toHaveLength(2);
      for (const r of releases) expect(JSON.parse(await readFile(path.join(appDir, "releases", r, ".deployq-release.json"), "utf8"))).toHaveProperty("sha");
      expect((await readdir(appDir)).filter((n) => n.startsWith("current.tmp") || n.startsWith(".index-"))).toEqual([]);

      workers.child.kill("SIGTERM");
      expect((await workers.exited).signal).toBe("SIGTERM");
    } finally {
      await writeFile(gate, "");
      workers.child.kill("SIGKILL");
      await workers.exited;
      await tdb.dispose();
      await ws.dispose();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("a deploy killed after the switch, while its restart runs, resumes from the restart at the next start (or switches back when that fails)", { timeout: 180_000 }, async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "deployq-kill-restart-"));
    const repo = await createRepo(dir);
    const gate = path.join(dir, "gate");
    const failFlag = path.join(dir, "fail-restart");
    const started = path.join(dir, "started");
    await mkdir(started);
    const ws = await createWorkspace({
      deployments: followingDeployment("app", repo.bare, `
restart = { script = ["sh", "-c", "if [ -e ${failFlag} ]; then echo 'restart refused' >&2; exit 4; fi; echo $$ > ${started}/$DEPLOYQ_SHA; while [ ! -e ${gate} ]; do sleep 0.02; done; echo restarted >> RESTARTS"] }
`),
    });
    const tdb = await createTestDatabase("postgres");
    const env = { ...ws.env, DATABASE_URL: tdb.url, DEPLOYQ_CONFIG: ws.configPath, DEPLOYQ_LOG_LEVEL: "info" };
    await ensureQueueDirs(queueLayout(ws.queuesDir), ["app"]);
    const appDir = path.join(ws.dir, "apps", "app");
    const enqueue = (sha: string) => queuePush(ws.queuesDir, { deployment: "app" }, "octo-org/app", sha);
    const statuses = async (sha: string) => (await tdb.database.db.select().from(deploys).where(eq(deploys.sha, sha))).map((r) => r.status).sort();
    const restarts = async (release: string) => (await readFile(path.join(appDir, release, "RESTARTS"), "utf8").catch(() => "")).split("\n").filter(Boolean).length;
    /** Push `sha`, and kill the workers once its restart script runs (after the switch). */
    const killDuringRestart = async (sha: string) => {
      await rm(gate, { force: true });
      await enqueue(sha);
      await until(`the restart of ${sha} to run`, async () => (await readdir(started)).includes(sha));
      workers.child.kill("SIGKILL");
      await workers.exited;
      const release = await readlink(path.join(appDir, "current"));
      expect(release.endsWith(sha.slice(0, 7)), "current was switched before the kill").toBe(true);
      expect(await restarts(release)).toBe(0);
      return release;
    };
    let workers = spawnDeployq(["workers"], env);
    try {
      await workers.waitFor("deployq started");
      await writeFile(gate, "");
      const v1 = await repo.commit({ "index.html": "v1" });
      await enqueue(v1);
      await until("v1", async () => (await statuses(v1)).includes("succeeded"));

      const v2 = await repo.commit({ "index.html": "v2" });
      const v2Release = await killDuringRestart(v2);
      const orphan = Number(await readFile(path.join(started, v2), "utf8"));
      workers = spawnDeployq(["workers"], env);
      await workers.waitFor("killed a command left running");
      expect(await isRunning(orphan)).toBe(false);
      await until("the restart to be run again", async () => Number(await readFile(path.join(started, v2), "utf8").catch(() => "0")) !== orphan);
      await writeFile(gate, "");
      await until("v2", async () => (await statuses(v2)).includes("succeeded"));
      // Not "already-deployed": the restart ran, to its end, in the release that is current.
      expect(await statuses(v2)).toEqual(["interrupted", "succeeded"]);
      expect(await readlink(path.join(appDir, "current"))).toBe(v2Release);
      expect(await restarts(v2Release)).toBe(1);
      const [row] = (await tdb.database.db.select().from(deploys).where(eq(deploys.sha, v2))).filter((r) => r.status === "succeeded");
      expect(await readFile(row!.logPath!, "utf8")).toContain(`current was switched to releases/${path.basename(v2Release)}`);
      expect(await readdir(appDir)).not.toContain(".deployq-switch.json");

      // The same, but the resumed restart fails: current goes back to v2, and v3 is marked bad.
      const v3 = await repo.commit({ "index.html": "v3" });
      const v3Release = await killDuringRestart(v3);
      await writeFile(failFlag, "");
      workers = spawnDeployq(["workers"], env);
      await until("v3's outcome", async () => (await statuses(v3)).includes("failed"));
      expect(await readlink(path.join(appDir, "current"))).toBe(v2Release);
      const meta = JSON.parse(await readFile(path.join(appDir, v3Release, ".deployq-release.json"), "utf8"));
      expect(meta.bad.reason).toMatch(/restart refused/);
      expect(await readdir(appDir)).not.toContain(".deployq-switch.json");

      workers.child.kill("SIGTERM");
      expect((await workers.exited).signal).toBe("SIGTERM");
    } finally {
      await writeFile(gate, "");
      workers.child.kill("SIGKILL");
      await workers.exited;
      await tdb.dispose();
      await ws.dispose();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
