import { execFileSync } from "node:child_process";
import { mkdir, mkdtemp, readFile, readlink, rm } from "node:fs/promises";
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
      deployments: `${followingDeployment("app", repo.bare, `
commands = [["sh", "-c", "echo building $DEPLOYQ_SHA"]]
restart = { script = ["sh", "-c", "echo restarted > RESTARTED"] }
`)}
[deployments.glob]
repository = "octo-org/app"
branch = "deploy-*"
remote = "${repo.bare}"
path = "./apps/glob"
restart = { script = ["sh", "-c", "if [ -e FAIL ]; then echo 'migration 0042 does not apply' >&2; echo 'relation users is locked' >&2; exit 1; fi"] }
`,
    });
    const env = { ...ws.env, DATABASE_URL: "", DEPLOYQ_CONFIG: ws.configPath };
    const serve = spawnDeployq(["serve"], env);
    const appDir = path.join(ws.dir, "apps", "app");
    const currentFile = (f: string) => readFile(path.join(appDir, "current", f), "utf8");
    try {
      await serve.waitFor("listening on");
      // An old log that cannot be read without blocking (a FIFO with no writer): following a deploy
      // reads its own log only, so it never opens this one (reading every log of the deployment would hang here).
      const logsDir = path.join(ws.dir, "data", "logs", "app");
      await mkdir(logsDir, { recursive: true });
      execFileSync("mkfifo", [path.join(logsDir, "999999.log")]);
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
      expect(hostile.code).toBe(2);
      expect(hostile.stderr).toMatch(/is neither a branch name nor a commit sha/);
      expect(hostile.stdout).toBe("");

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
      expect(status.stdout).toMatch(/queued: +0 +dead letters: 0/);
      const json = JSON.parse((await runDeployq(["status", "--json"], env)).stdout);
      expect(json.deployments[0]).toMatchObject({ deployment: "app", current: { sha: v1, ref: "main" }, deadLetters: 0 });
      expect(json.router).toEqual({ entries: 0, oldestAgeSeconds: null });

      const missing = await runDeployq(["rollback", "app", "--to", "19990101T000000.000Z-0000000"], env);
      expect(missing.code).toBe(2);
      expect(missing.stderr).toMatch(/cannot roll app back to "19990101T000000.000Z-0000000": there is no such release/);

      // A deployment that follows a pattern: status says which branch is live, and a failed
      // deploy's whole error (not just "… exited with code 1:"), paired with its own log.
      const a = await repo.commit({ "index.html": "a" }, { branch: "deploy-a" });
      expect((await runDeployq(["deploy", "glob", "--ref", "deploy-a"], env)).code).toBe(0);
      const broken = await repo.commit({ FAIL: "" }, { branch: "deploy-a" });
      const failed = await runDeployq(["deploy", "glob", "--ref", "deploy-a"], env);
      expect(failed.code).toBe(1);
      expect(failed.stdout).toContain("relation users is locked");
      const globStatus = await runDeployq(["status", "glob"], env);
      expect(globStatus.code).toBe(0);
      const globJson = JSON.parse((await runDeployq(["status", "glob", "--json"], env)).stdout).deployments[0];
      expect(globJson).toMatchObject({ current: { sha: a, ref: "deploy-a" }, last: { status: "failed", ref: "deploy-a" } });
      expect(globJson.last.error).toMatch(/exited with code 1:\nmigration 0042 does not apply\nrelation users is locked$/);
      expect(globJson.last.logPath).toBe(path.join(ws.dir, "data", "logs", "glob", `${globJson.last.id}.log`));
      expect(globStatus.stdout).toContain(`  current:      ${globJson.current.release}  ${a}  from branch deploy-a\n`);
      expect(globStatus.stdout).toMatch(new RegExp(`^  last deploy:  #${globJson.last.id} failed deploy-a \\d+s ago in \\d+\\.\\ds$`, "m"));
      expect(globStatus.stdout).toContain(
        `exited with code 1:\n                migration 0042 does not apply\n                relation users is locked\n  log:          ${globJson.last.logPath}\n`,
      );
      // Its own log: the one that names this deploy, and the commit that failed.
      const ownLog = await readFile(globJson.last.logPath, "utf8");
      expect(ownLog).toMatch(new RegExp(`^deploy ${globJson.last.id} of glob: `));
      expect(ownLog).toContain(`deploy-a is ${broken}`);
    } finally {
      serve.child.kill("SIGTERM");
      await serve.exited;
      await ws.dispose();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
