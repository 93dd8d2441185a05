import { mkdtemp, readFile, readlink, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { createRepo } from "../helpers/git.ts";
import { runDeployq, spawnDeployq } from "../helpers/processes.ts";
import { createWorkspace, followingDeployment } from "../helpers/workspace.ts";

describe("deployq deploy, rollback, releases and status against a running daemon on PGlite", () => {
  it("deploys any ref of the remote with progress, rolls back, and reports", { timeout: 240_000 }, async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "deployq-cli-deploy-"));
    const repo = await createRepo(dir);
    const ws = await createWorkspace({
      deployments: followingDeployment("app", repo.bare, `
commands = [["sh", "-c", "echo building $DEPLOYQ_SHA"]]
restart = { script = ["sh", "-c", "echo restarted > RESTARTED"] }
`),
    });
    const env = { ...ws.env, DATABASE_URL: "", DEPLOYQ_CONFIG: ws.configPath };
    const serve = spawnDeployq(["serve"], env);
    const appDir = path.join(ws.dir, "apps", "app");
    const currentFile = (f: string) => readFile(path.join(appDir, "current", f), "utf8");
    try {
      await serve.waitFor("listening on");
      const v1 = await repo.commit({ "index.html": "v1" });
      const first = await runDeployq(["deploy", "app"], env);
      expect(first.stderr).toBe("");
      expect(first.code).toBe(0);
      expect(first.stdout).toMatch(/^queued deploy main for app: /);
      expect(first.stdout).toContain(`main is ${v1}`);
      for (const step of ["== fetch", "== check out", "== build", `building ${v1}`, "== switch current", "== restart", `== succeeded: ${v1}`]) {
        expect(first.stdout).toContain(step);
      }
      const v1Release = await readlink(path.join(appDir, "current"));

      const feature = await repo.commit({ "index.html": "feature" }, { branch: "feature" });
      const other = await runDeployq(["deploy", "app", "--ref", "feature"], env);
      expect(other.code).toBe(0);
      expect(await currentFile("index.html")).toBe("feature");
      expect(other.stdout).toContain(`== succeeded: ${feature}`);

      const again = await runDeployq(["deploy", "app", "--ref", feature], env);
      expect(again.code).toBe(0);
      expect(again.stdout).toContain(`== already-deployed: ${feature}`);

      const hostile = await runDeployq(["deploy", "app", "--ref=--upload-pack=touch pwned"], env);
      expect(hostile.code).toBe(1);
      expect(hostile.stdout).toMatch(/not a branch name or commit sha/);
      expect(hostile.stdout).toMatch(/failed: the entry is in dead-letter\/app\//);

      const releases = await runDeployq(["releases", "app"], env);
      expect(releases.code).toBe(0);
      expect(releases.stdout).toMatch(new RegExp(`^ +${path.basename(v1Release)} +${v1.slice(0, 7)} +main`, "m"));
      expect(releases.stdout).toMatch(new RegExp(`^\\* +\\S+ +${feature.slice(0, 7)} +feature`, "m"));

      const back = await runDeployq(["rollback", "app"], env);
      expect(back.code).toBe(0);
      expect(back.stdout).toContain(`switch current → ${v1Release} (rollback)`);
      expect(await readlink(path.join(appDir, "current"))).toBe(v1Release);
      expect(await currentFile("index.html")).toBe("v1");

      const status = await runDeployq(["status", "app"], env);
      expect(status.code).toBe(0);
      expect(status.stdout).toContain(`current:      ${path.basename(v1Release)}  ${v1}`);
      expect(status.stdout).toMatch(/last deploy: +#\d+ succeeded/);
      expect(status.stdout).toMatch(/queued: +0 +dead letters: 1/);
      const json = JSON.parse((await runDeployq(["status", "--json"], env)).stdout);
      expect(json[0]).toMatchObject({ deployment: "app", current: { sha: v1 }, deadLetters: 1 });

      const missing = await runDeployq(["rollback", "app", "--to", "19990101T000000.000Z-0000000"], env);
      expect(missing.code).toBe(1);
      expect(missing.stdout).toMatch(/no complete release "19990101T000000.000Z-0000000"/);
    } finally {
      serve.child.kill("SIGTERM");
      await serve.exited;
      await ws.dispose();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
