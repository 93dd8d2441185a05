import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { eq } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Daemon, startDaemon } from "../../src/daemon.ts";
import { deploys } from "../../src/db/schema.ts";
import { silentLogger } from "../../src/log.ts";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import { type TestRepo, createRepo } from "../helpers/git.ts";
import { freePort } from "../helpers/load.ts";
import { isRunning, until } from "../helpers/wait.ts";
import { type Workspace, createWorkspace, followingDeployment, queuePush } from "../helpers/workspace.ts";

/**
 * A restart script's job is to leave the app running: what it starts in the background
 * (`nohup server &`, output not redirected) survives its exit, the end of the deploy and a
 * restart of deployq, while what a build command leaves behind is stopped and named, and a
 * restart script that times out still has its whole process group killed.
 */
describe("restart scripts that start a server in the background (releases strategy)", () => {
  let dir: string;
  let web: TestRepo;
  let slow: TestRepo;
  let ws: Workspace;
  let tdb: TestDatabase;
  let daemon: Daemon;
  let port: number;
  const started = new Set<number>();

  // The server's output stays on the pipe it inherited from the script: http.server logs every request to stderr.
  const RESTART_SH = `#!/bin/sh
set -eu
if [ -f "$PIDFILE" ]; then
  old="$(cat "$PIDFILE")"
  if kill "$old" 2>/dev/null; then while kill -0 "$old" 2>/dev/null; do sleep 0.1; done; fi
fi
nohup python3 -m http.server --bind 127.0.0.1 "$PORT" &
echo $! > "$PIDFILE"
until python3 -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" "http://127.0.0.1:$PORT/version.txt" 2>/dev/null; do
  kill -0 "$(cat "$PIDFILE")" || exit 1
  sleep 0.1
done
echo "restarted on port $PORT"
`;

  const finished = (deployment: string, sha: string) =>
    until(`the deploy of ${deployment} ${sha}`, async () => {
      const rows = await tdb.database.db.select().from(deploys).where(eq(deploys.sha, sha));
      return rows.find((r) => r.deployment === deployment && r.status !== "running" && r.status !== "retrying");
    });
  const pidIn = async (file: string) => {
    const pid = Number((await readFile(file, "utf8")).trim());
    started.add(pid);
    return pid;
  };
  const answer = async () => (await fetch(`http://127.0.0.1:${port}/version.txt`)).text();

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "deployq-restart-"));
    [web, slow] = [await createRepo(dir, "web"), await createRepo(dir, "slow")];
    port = await freePort();
    ws = await createWorkspace({
      deployments:
        followingDeployment(
          "web",
          web.bare,
          `
commands = [["sh", "-c", "sleep 300 & echo $! > ${dir}/build-sleep.pid; until grep -qa '^sleep' /proc/$!/cmdline; do sleep 0.01; done; echo built"]]
restart = { script = ["./restart.sh"] }
env = { PORT = "${port}", PIDFILE = "${dir}/server.pid" }
max_attempts = 1
`,
        ) +
        followingDeployment(
          "slow",
          slow.bare,
          `
restart = { script = ["sh", "-c", "nohup sleep 300 >/dev/null 2>&1 & echo $! > ${dir}/slow-sleep.pid; sleep 300"] }
command_timeout_s = 1
max_attempts = 1
`,
        ),
    });
    tdb = await createTestDatabase("pglite");
    daemon = await startDaemon({ settings: ws.settings, role: "serve", logger: silentLogger(), database: tdb.database });
  });

  afterAll(async () => {
    for (const pid of started) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // gone
      }
      await until(`process ${pid} gone`, async () => !(await isRunning(pid)));
    }
    await daemon?.close();
    await tdb?.dispose();
    await ws?.dispose();
    await rm(dir, { recursive: true, force: true });
  });

  it("keeps the nohup server running after the deploy and after deployq restarts; stops what the build left, naming it", async () => {
    const v1 = await web.commit({ "restart.sh": RESTART_SH, "version.txt": "v1" }, { executable: ["restart.sh"] });
    await queuePush(ws.queuesDir, { deployment: "web" }, "octo-org/web", v1);
    const first = await finished("web", v1);
    expect(first.status).toBe("succeeded");
    const server = await pidIn(path.join(dir, "server.pid"));
    const log = await readFile(first.logPath!, "utf8");
    // The build's background sleep was stopped, and the log says which process it was.
    const sleeper = await pidIn(path.join(dir, "build-sleep.pid"));
    expect(await isRunning(sleeper)).toBe(false);
    expect(log).toMatch(new RegExp(`warning: sh -c .* left a process running: ${sleeper} sleep 300; stopping it`));
    // The restart script's server was left alone; it holds the script's output, which no longer goes to the log.
    expect(log).toMatch(new RegExp(`left running by \\./restart\\.sh: ${server} \\S*python3 -m http\\.server`));
    expect(log).toContain(`restarted on port ${port}\n`);
    expect(log).toMatch(/holds? this command's output open/);
    expect(log).toMatch(/== succeeded/);
    // It answers now that the deploy is over, again and again (each request is logged to its inherited stderr).
    for (let i = 0; i < 5; i++) expect(await answer()).toBe("v1");

    // deployq restarts: the server is no leftover of a crash, and is not killed at the start.
    await daemon.close();
    daemon = await startDaemon({ settings: ws.settings, role: "serve", logger: silentLogger(), database: tdb.database });
    expect(await isRunning(server)).toBe(true);
    expect(await answer()).toBe("v1");

    // The next deploy's restart script replaces it.
    const v2 = await web.commit({ "version.txt": "v2" });
    await queuePush(ws.queuesDir, { deployment: "web" }, "octo-org/web", v2);
    expect((await finished("web", v2)).status).toBe("succeeded");
    expect(await pidIn(path.join(dir, "server.pid"))).not.toBe(server);
    expect(await isRunning(server)).toBe(false);
    expect(await answer()).toBe("v2");
  });

  it("kills the whole process group of a restart script that times out, its nohup child included", async () => {
    const sha = await slow.commit({ "README": "slow" });
    await queuePush(ws.queuesDir, { deployment: "slow" }, "octo-org/slow", sha);
    const row = await finished("slow", sha);
    expect(row.status).toBe("failed");
    expect(row.error).toMatch(/timed out after 1000 ms/);
    const child = await pidIn(path.join(dir, "slow-sleep.pid"));
    expect(await isRunning(child)).toBe(false);
  });
});
