import { execFile, spawn } from "node:child_process";
import { chmod, chown, mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { eq } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { deliveries, deploys } from "../../src/db/schema.ts";
import { serializeEntry } from "../../src/queue/entry.ts";
import { entryName } from "../../src/queue/entry-name.ts";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import { createRepo, git } from "../helpers/git.ts";
import { pushEntry } from "../helpers/load.ts";
import { DEPLOYQ_BIN, REPO_ROOT, type Spawned, spawnTracked } from "../helpers/processes.ts";
import { until } from "../helpers/wait.ts";
import { type Workspace, createWorkspace, followingDeployment, pushPayload } from "../helpers/workspace.ts";

const run = promisify(execFile);

/**
 * Two users, as on a server where developers push over ssh to git@server (README, "`git push`
 * to a bare repository"): the bare repository and its post-receive hook are the `git` user's,
 * the daemon runs as `deployq`, and `git` is a member of deployq's group. No account is
 * created: setpriv(1) runs a program with any uid, gid and supplementary groups.
 *
 * Tests run as root, and root may hard-link anything (CAP_FOWNER), so the router as root never
 * meets fs.protected_hardlinks (Debian's default), which refuses deployq a link to an entry it
 * does not own and may not write: that is why both sides run as users here.
 */
const GIT = { uid: 64_201, gid: 64_201 };
const DEPLOYQ = { uid: 64_202, gid: 64_202 };

/** `argv` as `who`, under `umask`; the git user with deployq's group as a supplementary group (the `usermod -aG deployq git` of the README). */
function as(who: { uid: number; gid: number }, umask: string, argv: string[]): [string, string[]] {
  const groups = who === GIT ? [`--groups=${DEPLOYQ.gid}`] : ["--clear-groups"];
  return ["setpriv", [`--reuid=${who.uid}`, `--regid=${who.gid}`, ...groups, "--", "sh", "-c", `umask ${umask} && exec "$@"`, "sh", ...argv]];
}

/** Runs to completion (never left running), fed `input`: output, exit code. */
function runAs(who: { uid: number; gid: number }, umask: string, argv: string[], env: NodeJS.ProcessEnv, cwd: string, input = ""): Promise<{ code: number | null; output: string }> {
  const [file, args] = as(who, umask, argv);
  const child = spawn(file, args, { cwd, env: { ...process.env, ...env }, stdio: ["pipe", "pipe", "pipe"] });
  child.stdin.end(input);
  let output = "";
  child.stdout.on("data", (c: Buffer) => (output += c.toString()));
  child.stderr.on("data", (c: Buffer) => (output += c.toString()));
  return new Promise((resolve, reject) => {
    child.once("error", reject);
    child.once("close", (code) => resolve({ code, output }));
  });
}

describe("entries a post-receive hook queued as another user than the daemon's", () => {
  let dir: string;
  let ws: Workspace;
  let tdb: TestDatabase;
  let bare: string;
  let clone: string;
  let queues: string;
  let sha: string;
  let hookEntry: string;
  let unreadable: string;
  let daemon: Spawned | undefined;
  /** What the users' processes get: their own HOME and TMPDIR (tsx's cache), no system git config. */
  let env: NodeJS.ProcessEnv;

  beforeAll(async () => {
    // Root bypasses the protection, so this is what makes the test mean anything.
    expect((await readFile("/proc/sys/fs/protected_hardlinks", "utf8")).trim(), "fs.protected_hardlinks must be 1 (Debian's default) for this test").toBe("1");
    expect(process.getuid?.(), "the test switches users, so it runs as root").toBe(0);
    dir = await mkdtemp(path.join(tmpdir(), "deployq-other-user-"));
    await chmod(dir, 0o755);
    await mkdir(path.join(dir, "tmp"), { mode: 0o1777 });
    await chmod(path.join(dir, "tmp"), 0o1777);
    const home = path.join(dir, "deployq-home");
    await mkdir(home);
    env = { HOME: home, TMPDIR: path.join(dir, "tmp"), GIT_CONFIG_NOSYSTEM: "1", DEPLOYQ_LOG_LEVEL: "info", DEPLOYQ_LOG_FORMAT: "json" };

    // The server's repository, the git user's: shared with deployq's group (git init --shared=group),
    // so that deployq may fetch from it whatever the pusher's umask.
    const repo = await createRepo(dir, "laptop");
    bare = path.join(dir, "srv", "site.git");
    await mkdir(bare, { recursive: true });
    await git(bare, "init", "--bare", "--quiet", "--shared=group", "--initial-branch=main");
    const hook = path.join(bare, "hooks", "post-receive");
    clone = repo.work;
    sha = await repo.commit({ "index.html": "v1" });

    tdb = await createTestDatabase("postgres");
    ws = await createWorkspace({ deployments: followingDeployment("app", bare), env: { DATABASE_URL: tdb.url! } });
    await writeFile(hook, `#!/bin/sh\nexec "${process.execPath}" "${DEPLOYQ_BIN}" --config "${ws.configPath}" post-receive --repository octo-org/app\n`);
    await chmod(hook, 0o755);
    await run("chown", ["-R", `${GIT.uid}:${DEPLOYQ.gid}`, path.dirname(bare), clone]);
    // deployq trusts the git user's repository (git refuses another user's repository otherwise).
    await writeFile(path.join(home, ".gitconfig"), `[safe]\n\tdirectory = ${bare}\n`);

    // deployq's home and queue root, as README says: .tmp/ and router/ group-writable and setgid.
    queues = ws.queuesDir;
    await run("chown", ["-R", `${DEPLOYQ.uid}:${DEPLOYQ.gid}`, ws.dir, home]);
    await chmod(ws.dir, 0o750);
    await chmod(ws.configPath, 0o640);
    await run("install", ["-d", "-o", String(DEPLOYQ.uid), "-g", String(DEPLOYQ.gid), "-m", "0750", queues]);
    await run("install", ["-d", "-o", String(DEPLOYQ.uid), "-g", String(DEPLOYQ.gid), "-m", "2770", path.join(queues, ".tmp"), path.join(queues, "router")]);

    // An entry the daemon cannot even read (an older hook's, or one written by hand), queued before the push.
    unreadable = entryName("0c0ffee0-0000-4000-8000-000000000001", 1n);
    const planted = pushEntry(unreadable, { repository: "octo-org/app" });
    const file = path.join(queues, "router", unreadable);
    await writeFile(file, serializeEntry({ ...planted, payload: pushPayload({ repository: "octo-org/app", branch: "main", after: sha }) }), { mode: 0o600 });
    await chown(file, GIT.uid, GIT.gid);
  });

  afterAll(async () => {
    if (daemon) {
      daemon.child.kill("SIGTERM");
      await daemon.exited;
    }
    await tdb?.dispose();
    await ws?.dispose();
    await rm(dir, { recursive: true, force: true });
  });

  it("are the git user's, group-readable by deployq's group, even under a umask of 077", async () => {
    // `git push` as the git user, with a umask that gives nobody else anything.
    const push = await runAs(GIT, "077", ["git", "push", bare, "main"], { ...env, HOME: "/nonexistent" }, clone);
    expect(push.output).toMatch(/^remote: deployq: queued \d{19}-[0-9a-f-]{36}\.json for app\s*$/m);
    expect(push.code).toBe(0);
    hookEntry = /queued (\S+)/.exec(push.output)![1]!;
    const s = await stat(path.join(queues, "router", hookEntry));
    expect({ uid: s.uid, gid: s.gid, mode: (s.mode & 0o7777).toString(8) }).toEqual({ uid: GIT.uid, gid: DEPLOYQ.gid, mode: "640" });
    expect(await readdir(path.join(queues, ".tmp"))).toEqual([]);
  });

  it("are routed and deployed by the daemon, and one it cannot read goes to dead-letter/ without holding up those behind it", async () => {
    expect(hookEntry, "the hook queued the push").toBeDefined();
    const [file, args] = as(DEPLOYQ, "022", [process.execPath, DEPLOYQ_BIN, "--config", ws.configPath, "workers"]);
    daemon = spawnTracked(file, args, { ...ws.env, ...env }, REPO_ROOT);
    const rows = () => tdb.database.db.select().from(deploys).where(eq(deploys.sha, sha));
    // Before the fix the router's hard link failed with EPERM on every pass, and this entry and all behind it stayed in router/.
    await until(
      "the push deployed, or the router failing",
      async () => (await rows()).some((r) => r.status === "succeeded") || daemon!.output().includes("cannot process queue router"),
      30_000,
    );
    expect(daemon.output()).not.toContain("cannot process queue router");
    expect((await rows()).map((r) => [r.entry, r.status])).toEqual([[hookEntry, "succeeded"]]);
    expect(await readFile(path.join(ws.dir, "apps", "app", "current", "index.html"), "utf8")).toBe("v1");
    const routed = await tdb.database.db.select().from(deliveries).where(eq(deliveries.entry, hookEntry));
    expect(routed.map((r) => r.outcome)).toEqual(["routed"]);

    await until("router/ empty", async () => (await readdir(path.join(queues, "router"))).length === 0);
    const deadLetters = path.join(queues, "dead-letter", "router");
    expect((await readdir(deadLetters)).sort()).toEqual([unreadable, `${unreadable}.error`]);
    expect(await readFile(path.join(deadLetters, `${unreadable}.error`), "utf8")).toMatch(/unreadable by deployq's user \(permission denied\)/);
  });

  it("tell a hook whose user may not write the queue root what the operator has to do", async () => {
    // The queue root as the daemon creates it (0750), without README's chmod 2770 of .tmp/ and router/.
    const unprepared = path.join(dir, "queues-unprepared");
    for (const sub of ["", ".tmp", "router"]) await mkdir(path.join(unprepared, sub), { mode: 0o750 });
    await run("chown", ["-R", `${DEPLOYQ.uid}:${DEPLOYQ.gid}`, unprepared]);
    const hook = await runAs(GIT, "022", [path.join(bare, "hooks", "post-receive")], { ...env, DEPLOYQ_QUEUES_DIR: unprepared }, dir, `${"0".repeat(40)} ${sha} refs/heads/main\n`);
    expect(hook.code).toBe(2);
    expect(hook.output).toContain(`deployq: this hook runs as uid ${GIT.uid}, which may not read and write the queue root ${unprepared}`);
    expect(hook.output).toMatch(/add that user to the daemon's group, and make the root's \.tmp\/ and router\/ writable by that group and setgid \(chmod 2770\)/);
  });
});
