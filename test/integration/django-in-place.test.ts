import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { eq } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Daemon, startDaemon } from "../../src/daemon.ts";
import { deploys } from "../../src/db/schema.ts";
import { runCommand } from "../../src/exec/run-command.ts";
import { silentLogger } from "../../src/log.ts";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import { git } from "../helpers/git.ts";
import { freePort } from "../helpers/load.ts";
import { LogCollector } from "../helpers/log-collector.ts";
import { DEPLOYQ_BIN, REPO_ROOT } from "../helpers/processes.ts";
import { isRunning, until } from "../helpers/wait.ts";
import { type Workspace, createWorkspace, listFiles } from "../helpers/workspace.ts";

/**
 * The classic Django deploy, as README "Deploying a Django app in place" shows it: the
 * developer runs `git push production master`; the server's bare repository has a
 * post-receive hook that queues the push with `deployq post-receive`; deployq checks the
 * commit out in place and runs ./deploy.sh (migrate, collectstatic, touch-reload).
 */
describe("Django-style in-place deploy: git push production master → post-receive → ./deploy.sh", () => {
  let dir: string;
  let bare: string;
  let work: string;
  let site: string;
  let ws: Workspace;
  let tdb: TestDatabase;
  let daemon: Daemon;

  // A stand-in for Django's manage.py: records each management command with the code's version;
  // `runserver` serves the version (and logs each request to stderr, as Django's does).
  const managePy = (version: string, failMigrate = false) => `import os, sys
VERSION = "${version}"
cmd = sys.argv[1]
os.makedirs("var", exist_ok=True)
if cmd == "runserver":
    import http.server
    host, port = sys.argv[-1].rsplit(":", 1)
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = VERSION.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
    print(f"Starting development server at http://{host}:{port}/", flush=True)
    http.server.ThreadingHTTPServer((host, int(port)), Handler).serve_forever()
with open("var/manage.log", "a") as log:
    log.write(f"{VERSION} {cmd} {os.environ.get('DEPLOYQ_SHA', '')}\\n")
if cmd == "migrate" and ${failMigrate ? "True" : "False"}:
    sys.exit("django.db.utils.OperationalError: no such column: polls_question.slug")
if cmd == "collectstatic":
    os.makedirs("static", exist_ok=True)
    with open("static/version.txt", "w") as f:
        f.write(VERSION)
`;
  let DEPLOY_SH: string;
  let port: number;
  /** The server deploy.sh left running, by its pid file. */
  const serverPid = async () => Number((await readFile(path.join(site, "var", "server.pid"), "utf8")).trim());
  const answer = async () => (await fetch(`http://127.0.0.1:${port}/`)).text();

  /** `git push production <refs>` as the developer sees it: the hook's lines come back as "remote: …". */
  async function push(...refs: string[]): Promise<string> {
    const output = new LogCollector();
    await runCommand(["git", "push", "production", ...refs], { cwd: work, log: output, env: { GIT_CONFIG_NOSYSTEM: "1" } });
    return output.text;
  }

  async function pushProduction(files: Record<string, string>, message: string): Promise<string> {
    for (const [file, content] of Object.entries(files)) await writeFile(path.join(work, file), content);
    await chmod(path.join(work, "deploy.sh"), 0o755).catch(() => {});
    await git(work, "add", "--all");
    await git(work, "commit", "--quiet", "-m", message);
    const output = await push("master");
    expect(output).toMatch(/^remote: deployq: queued \d{19}-[0-9a-f-]{36}\.json for mysite\s*$/m);
    return git(work, "rev-parse", "HEAD");
  }

  const finished = (sha: string) =>
    until(`the deploy of ${sha} finished`, async () => {
      const rows = await tdb.database.db.select().from(deploys).where(eq(deploys.sha, sha));
      return rows.find((r) => r.status !== "running" && r.status !== "retrying");
    });

  beforeAll(async () => {
    // README's example deploy.sh, as is: migrate, collectstatic, restart the server with nohup in the background.
    DEPLOY_SH = await readFile(path.join(REPO_ROOT, "examples", "django", "deploy.sh"), "utf8");
    port = await freePort();
    dir = await mkdtemp(path.join(tmpdir(), "deployq-django-"));
    bare = path.join(dir, "site.git");
    work = path.join(dir, "laptop");
    ws = await createWorkspace({
      deployments: `
[deployments.mysite]
repository = "octo-org/mysite"
branch = "master"
remote = "${bare}"
path = "./www/mysite"
strategy = "in-place"
restart = { script = ["./deploy.sh"] }
env = { PORT = "${port}" }
max_attempts = 1
`,
    });
    site = path.join(ws.dir, "www", "mysite");
    // The server's bare repository and its hook.
    await mkdir(bare, { recursive: true });
    await git(bare, "init", "--bare", "--quiet", "--initial-branch=master");
    const hook = path.join(bare, "hooks", "post-receive");
    await writeFile(hook, `#!/bin/sh\nexec "${process.execPath}" "${DEPLOYQ_BIN}" --config "${ws.configPath}" post-receive --repository octo-org/mysite\n`);
    await chmod(hook, 0o755);
    // The developer's clone.
    await mkdir(work, { recursive: true });
    await git(work, "init", "--quiet", "--initial-branch=master");
    await git(work, "remote", "add", "production", bare);
    tdb = await createTestDatabase("pglite");
    daemon = await startDaemon({ settings: ws.settings, role: "serve", logger: silentLogger(), database: tdb.database });
  });

  afterAll(async () => {
    // The server deploy.sh left running belongs to no deployq process: stop it here.
    const pid = await serverPid().catch(() => undefined);
    if (pid) {
      process.kill(pid, "SIGKILL");
      await until("the app server gone", async () => !(await isRunning(pid)));
    }
    await daemon?.close();
    await tdb?.dispose();
    await ws?.dispose();
    await rm(dir, { recursive: true, force: true });
  });

  it("deploys each push to master in place, and a failing deploy.sh puts the previous commit back and runs it again", async () => {
    const v1 = await pushProduction({ "manage.py": managePy("v1"), "deploy.sh": DEPLOY_SH, ".gitignore": "var/\nstatic/\n" }, "v1");
    const first = await finished(v1);
    expect(first.status).toBe("succeeded");
    expect(await readFile(path.join(site, "static", "version.txt"), "utf8")).toBe("v1");
    expect(await readFile(path.join(site, "var", "manage.log"), "utf8")).toBe(`v1 migrate ${v1}\nv1 collectstatic ${v1}\n`);
    // The server deploy.sh started in the background answers, and goes on answering now that the deploy is over.
    const firstServer = await serverPid();
    expect(await answer()).toBe("v1");
    const firstLog = await readFile(first.logPath!, "utf8");
    expect(firstLog).toMatch(new RegExp(`left running by \\./deploy\\.sh: ${firstServer} \\S*python3 manage\\.py runserver --noreload 127\\.0\\.0\\.1:${port}`));
    expect(firstLog).toContain(`server ${firstServer} answers on port ${port}`);
    expect(firstLog).toMatch(/== succeeded/);
    expect(await isRunning(firstServer)).toBe(true);
    expect(await answer()).toBe("v1");

    // A migration that fails: the push itself succeeds (the hook only queues), the deploy fails.
    const v2 = await pushProduction({ "manage.py": managePy("v2", true) }, "v2 with a broken migration");
    const second = await finished(v2);
    expect(second.status).toBe("failed");
    expect(second.error).toMatch(/deploy\.sh/);
    const log = await readFile(second.logPath!, "utf8");
    expect(log).toContain("no such column: polls_question.slug");
    // v1's files are back and its deploy.sh ran again, so the app runs v1's code.
    expect(await readFile(path.join(site, "manage.py"), "utf8")).toBe(managePy("v1"));
    await until("v1's deploy.sh ran again", async () => (await readFile(path.join(site, "var", "manage.log"), "utf8")).endsWith(`v1 collectstatic ${v1}\n`));
    // ... and restarted v1's server, which answers.
    expect(await serverPid()).not.toBe(firstServer);
    expect(await isRunning(firstServer)).toBe(false);
    expect(await answer()).toBe("v1");
    expect(await readFile(path.join(site, "var", "manage.log"), "utf8")).toBe(
      [`v1 migrate ${v1}`, `v1 collectstatic ${v1}`, `v2 migrate ${v2}`, `v1 migrate ${v1}`, `v1 collectstatic ${v1}`, ""].join("\n"),
    );
    // The row is final a moment before the entry reaches dead-letter/: wait for the move.
    await until("the dead letter", async () => (await listFiles(path.join(ws.queuesDir, "dead-letter", "mysite"))).length > 0);
    expect(await listFiles(path.join(ws.queuesDir, "dead-letter", "mysite"))).toHaveLength(1);

    // The fix deploys.
    const v3 = await pushProduction({ "manage.py": managePy("v3") }, "v3 fixes the migration");
    expect((await finished(v3)).status).toBe("succeeded");
    expect(await readFile(path.join(site, "static", "version.txt"), "utf8")).toBe("v3");
    expect(await answer()).toBe("v3");
  });

  it("tells the pusher, like the classic hook, that a tag or another branch deploys nothing, and queues nothing for them", async () => {
    const before = await tdb.database.db.select().from(deploys);
    const queued = await listFiles(ws.queuesDir);
    await git(work, "tag", "v3");
    await git(work, "branch", "feature");
    const output = await push("v3", "feature");
    expect(output).toContain("remote: Ref refs/tags/v3 received. Doing nothing: only master may be deployed on this server.");
    expect(output).toContain("remote: Ref refs/heads/feature received. Doing nothing: only master may be deployed on this server.");
    expect(output).not.toContain("queued");
    expect(await listFiles(ws.queuesDir)).toEqual(queued);
    // Nor is deleting a branch (the bare repository refuses to delete its current one, master).
    expect(await push(":feature")).toContain("remote: Ref refs/heads/feature received. Doing nothing: branch deletion (refs/heads/feature) does not deploy.");
    expect(await listFiles(ws.queuesDir)).toEqual(queued);
    expect(await tdb.database.db.select().from(deploys)).toEqual(before);
  });
});
