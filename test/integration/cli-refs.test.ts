import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { finishDeploy, recordUnrun, setDeployLog, startDeploy } from "../../src/db/queries/deploys.ts";
import { inPlaceStateFile } from "../../src/workers/deploy.ts";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import { type TestRepo, createRepo, git } from "../helpers/git.ts";
import { REPO_ROOT, runDeployq } from "../helpers/processes.ts";
import { type Workspace, createWorkspace, followingDeployment, queuePush, randomSha } from "../helpers/workspace.ts";

/**
 * The CLI refuses bad names and refs before anything is queued, with no daemon running:
 * `deploy --ref` is resolved against the real remote (git ls-remote) and the deployment's
 * mirror; `rollback --to` against the releases on disk; queue and deployment names against
 * the configuration and the queue root.
 */
describe("deployq CLI: names and refs are checked before anything is queued", () => {
  let dir: string;
  let repo: TestRepo;
  let ws: Workspace;
  let tdb: TestDatabase;
  let env: NodeJS.ProcessEnv;
  let main: string;
  let feature: string;
  const appDir = () => path.join(ws.dir, "apps", "app");
  const queueDir = (name: string) => path.join(ws.queuesDir, "deployments", name);

  /** The entries now in a deployment's queue (their JSON), removed so that the next case starts empty. */
  async function takeEntries(name: string): Promise<Array<{ event: string; payload: Record<string, unknown> }>> {
    const names = (await readdir(queueDir(name)).catch(() => [] as string[])).filter((n) => n.endsWith(".json")).sort();
    const entries = await Promise.all(names.map(async (n) => JSON.parse(await readFile(path.join(queueDir(name), n), "utf8"))));
    for (const n of names) await rm(path.join(queueDir(name), n));
    return entries;
  }

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "deployq-cli-refs-"));
    repo = await createRepo(dir);
    main = await repo.commit({ "index.html": "v1" });
    feature = await repo.commit({ "index.html": "feature" }, { branch: "feature" });
    ws = await createWorkspace({
      deployments: [
        followingDeployment("app", repo.bare),
        `[deployments.staging]\nrepository = "octo-org/app"\nbranch = "deploy-*"\nremote = "${repo.bare}"\npath = "./apps/staging"\n`,
        `[deployments.site]\nrepository = "octo-org/app"\nbranch = "main"\nremote = "${repo.bare}"\npath = "./apps/site"\nstrategy = "in-place"\n`,
      ].join("\n"),
    });
    tdb = await createTestDatabase("postgres");
    env = { ...ws.env, DATABASE_URL: tdb.url, DEPLOYQ_CONFIG: ws.configPath };
  });
  afterAll(async () => {
    await tdb?.dispose();
    await ws?.dispose();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it("every command refuses a deployment that is not configured, naming the configured ones", async () => {
    for (const args of [["deploy", "ghost"], ["rollback", "ghost"], ["releases", "ghost"], ["status", "ghost"]]) {
      const r = await runDeployq(args, env);
      expect(r.code, args.join(" ")).toBe(2);
      expect(r.stderr).toMatch(/no deployment "ghost" in .*deployq\.toml: the configured ones are app, staging, site/);
    }
    expect(existsSync(queueDir("ghost"))).toBe(false);
  });

  it("deploy --ref: a branch must exist on the remote; a hostile or malformed ref is refused; nothing is queued", async () => {
    const missing = await runDeployq(["deploy", "app", "--ref", "nope", "--no-wait"], env);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain(`${repo.bare} has no branch "nope" (its branches: feature, main): push it first, or give another --ref; nothing was queued`);

    for (const ref of ["--upload-pack=touch pwned", "-x", "../etc", "a b", "x..y", "main~1", "HEAD^"]) {
      const r = await runDeployq(["deploy", "app", `--ref=${ref}`, "--no-wait"], env);
      expect(r.code, ref).toBe(2);
      expect(r.stderr).toMatch(/is neither a branch name nor a commit sha: give a branch of .*, or a commit sha \(at least 4 hex digits\)/);
    }
    // A valid ref name that a shell would expand: passed to git as one argv element, and not on the remote.
    const shelly = await runDeployq(["deploy", "app", "--ref", "$(id)", "--no-wait"], env);
    expect(shelly.code).toBe(2);
    expect(shelly.stderr).toContain('has no branch "$(id)"');
    expect(existsSync(path.join(REPO_ROOT, "pwned"))).toBe(false);

    const pattern = await runDeployq(["deploy", "staging", "--no-wait"], env);
    expect(pattern.code).toBe(2);
    expect(pattern.stderr).toMatch(/staging follows the pattern "deploy-\*": say which branch or sha with --ref/);
    expect(await takeEntries("app")).toEqual([]);
    expect(await takeEntries("staging")).toEqual([]);
  }, 180_000);

  it("deploy --ref: a branch is queued by name; a full sha is queued, saying when it is not the branch head", async () => {
    const byBranch = await runDeployq(["deploy", "app", "--ref", "feature", "--no-wait"], env);
    expect(byBranch.stderr).toBe("");
    expect(byBranch.code).toBe(0);
    expect(byBranch.stdout).toMatch(/^queued deploy feature for app: /m);
    expect(byBranch.stdout).not.toContain("note:");
    expect(await takeEntries("app")).toMatchObject([{ event: "deploy", payload: { ref: "feature" } }]);

    const head = await runDeployq(["deploy", "app", "--ref", main, "--no-wait"], env);
    expect(head.code).toBe(0);
    expect(head.stdout).toContain(`note: ${main} is the head of main`);
    expect(await takeEntries("app")).toMatchObject([{ payload: { ref: main } }]);

    const other = await runDeployq(["deploy", "app", "--ref", feature, "--no-wait"], env);
    expect(other.code).toBe(0);
    expect(other.stdout).toContain(`note: ${feature} is not the head of main (main is at ${main}; it is the head of feature): this deploys something other than the branch head`);
    expect(await takeEntries("app")).toMatchObject([{ payload: { ref: feature } }]);

    // Not fetched yet (and maybe not on the remote): queued, saying the worker verifies it.
    const unknown = randomSha();
    const unfetched = await runDeployq(["deploy", "app", "--ref", unknown, "--no-wait"], env);
    expect(unfetched.code).toBe(0);
    expect(unfetched.stdout).toMatch(/it is not fetched yet: the worker asks .* for it, and fails if the remote does not have it/);
    expect(await takeEntries("app")).toMatchObject([{ payload: { ref: unknown } }]);

    // --force rides along in the entry (the worker redeploys the current commit when it sees it).
    const forced = await runDeployq(["deploy", "app", "--force", "--no-wait"], env);
    expect(forced.code).toBe(0);
    expect(forced.stdout).toMatch(/^queued forced deploy main for app: /m);
    const [entry] = await takeEntries("app");
    expect(entry).toMatchObject({ event: "deploy", payload: { ref: "main", force: true } });
    await runDeployq(["deploy", "app", "--no-wait"], env);
    expect((await takeEntries("app"))[0]!.payload).not.toHaveProperty("force");
  });

  it("deploy --ref: a short sha is expanded with the deployment's mirror; ambiguous, unknown or mirror-less ones are refused", async () => {
    const noMirror = await runDeployq(["deploy", "app", "--ref", main.slice(0, 7), "--no-wait"], env);
    expect(noMirror.code).toBe(2);
    expect(noMirror.stderr).toContain(`app has no mirror yet (${path.join(appDir(), "repo.git")}) to expand the short sha ${main.slice(0, 7)} with: give the full 40-digit sha or a branch`);

    // 1,500 commits on one branch: some two of them share their first 4 hex digits.
    const stream = Array.from({ length: 1500 }, (_, i) => `commit refs/heads/many\ncommitter T <t@example.com> ${1_700_000_000 + i} +0000\ndata ${String(i).length}\n${i}\n`).join("");
    execFileSync("git", ["fast-import", "--quiet"], { cwd: repo.work, input: stream });
    await git(repo.work, "push", "--quiet", "origin", "refs/heads/many");
    // The mirror as the worker keeps it (a bare copy of the remote); in-place keeps its own in data_dir/mirrors/.
    await mkdir(appDir(), { recursive: true });
    await git(dir, "clone", "--bare", "--quiet", repo.bare, path.join(appDir(), "repo.git"));
    await git(dir, "clone", "--bare", "--quiet", repo.bare, path.join(ws.dir, "data", "mirrors", "site.git"));

    for (const [name, short] of [["app", feature.slice(0, 7)], ["site", feature.slice(0, 10)]] as const) {
      const expanded = await runDeployq(["deploy", name, "--ref", short, "--no-wait"], env);
      expect(expanded.stderr).toBe("");
      expect(expanded.code).toBe(0);
      expect(expanded.stdout).toContain(`note: ${feature} is not the head of main`);
      expect(expanded.stdout).toContain(`queued deploy ${feature} for ${name}`);
      expect(await takeEntries(name)).toMatchObject([{ payload: { ref: feature } }]);
    }

    const commits = (await git(repo.bare, "rev-list", "--all")).split("\n");
    const byPrefix = new Map<string, string[]>();
    for (const c of commits) byPrefix.set(c.slice(0, 4), [...(byPrefix.get(c.slice(0, 4)) ?? []), c]);
    const [prefix, sharing] = [...byPrefix].find(([, group]) => group.length > 1)!;
    const ambiguous = await runDeployq(["deploy", "app", "--ref", prefix, "--no-wait"], env);
    expect(ambiguous.code).toBe(2);
    expect(ambiguous.stderr).toContain(`the short sha ${prefix} is ambiguous: ${sharing.length} commits start with it`);
    expect(ambiguous.stderr).toContain("give more digits");

    const objects = await git(repo.bare, "rev-list", "--all", "--objects");
    let absent = randomSha().slice(0, 12);
    while (objects.includes(absent)) absent = randomSha().slice(0, 12);
    const unknown = await runDeployq(["deploy", "app", "--ref", absent, "--no-wait"], env);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(new RegExp(`no commit of app's mirror \\(.*, as of its last fetch\\) starts with ${absent}: give the full 40-digit sha, or a branch`));
    expect(await takeEntries("app")).toEqual([]);
  });

  it("rollback --to refuses a release that does not exist, is incomplete or is bad; queues a good one", async () => {
    const releases = path.join(appDir(), "releases");
    const good = "20260101T000000.000Z-aaaaaaa";
    const half = "20260102T000000.000Z-bbbbbbb";
    const bad = "20260103T000000.000Z-ccccccc";
    for (const r of [good, half, bad]) await mkdir(path.join(releases, r), { recursive: true });
    await writeFile(path.join(releases, good, ".deployq-release.json"), JSON.stringify({ sha: main, ref: "main", entry: "x", built_at: new Date().toISOString() }));
    await writeFile(
      path.join(releases, bad, ".deployq-release.json"),
      JSON.stringify({ sha: feature, ref: "main", entry: "y", built_at: new Date().toISOString(), bad: { reason: "./restart.sh exited with code 1:\nport 3000 in use", at: new Date().toISOString() } }),
    );
    const cases: Array<[string, RegExp]> = [
      ["19990101T000000.000Z-0000000", /cannot roll app back to "19990101T000000.000Z-0000000": there is no such release; `deployq releases app` lists the releases; nothing was queued/],
      ["../../etc", /there is no such release/],
      [half, /it is incomplete \(its build never finished\)/],
      [bad, /it is marked bad \(\.\/restart\.sh exited with code 1: port 3000 in use\)/],
    ];
    for (const [to, message] of cases) {
      const r = await runDeployq(["rollback", "app", "--to", to, "--no-wait"], env);
      expect(r.code, to).toBe(2);
      expect(r.stderr).toMatch(message);
    }
    expect(await takeEntries("app")).toEqual([]);
    const ok = await runDeployq(["rollback", "app", "--to", good, "--no-wait"], env);
    expect(ok.code).toBe(0);
    expect(await takeEntries("app")).toMatchObject([{ event: "rollback", payload: { to: good } }]);

    // releases shows the whole reason a release is bad, on one line (not just "… exited with code 1:").
    const listed = await runDeployq(["releases", "app"], env);
    expect(listed.stdout).toMatch(new RegExp(`^ +${bad} +${feature.slice(0, 7)} +main +bad: \\./restart\\.sh exited with code 1: port 3000 in use$`, "m"));
  });

  it("queue ls and flush refuse a queue that does not exist, and accept every one that does", async () => {
    for (const args of [["queue", "ls", "ghost"], ["queue", "flush", "ghost", "--yes"], ["queue", "ls", "dead-letter/ghost"], ["queue", "ls", "../x"]]) {
      const r = await runDeployq(args, env);
      expect(r.code, args.join(" ")).toBe(2);
      expect(r.stderr).toMatch(/there is no queue ".*": the queues are .*dead-letter\/app.*router|no queue called/);
    }
    expect(existsSync(path.join(ws.queuesDir, "deployments", "ghost"))).toBe(false);
    // Configured queues exist even before their directory does.
    const empty = await runDeployq(["queue", "ls", "dead-letter/staging"], env);
    expect(empty.code).toBe(0);
    expect(empty.stdout).toMatch(/^dead-letter\/staging is empty/);
    // A deployment gone from the configuration still has its queue on disk: it can be listed and flushed.
    await queuePush(ws.queuesDir, { deployment: "retired" }, "octo-org/retired", randomSha());
    const retired = await runDeployq(["queue", "flush", "retired", "--yes"], env);
    expect(retired.code).toBe(0);
    expect(retired.stdout).toContain("deleted 1 entry from retired");
  });

  it("status shows the router's backlog (count and oldest age), from the queue directory", async () => {
    const before = JSON.parse((await runDeployq(["status", "--json"], env)).stdout);
    expect(before.router).toEqual({ entries: 0, oldestAgeSeconds: null });
    expect((await runDeployq(["status"], env)).stdout).toMatch(/^router: +empty$/m);
    await queuePush(ws.queuesDir, "router", "octo-org/app", randomSha());
    await queuePush(ws.queuesDir, "router", "octo-org/app", randomSha());
    const json = JSON.parse((await runDeployq(["status", "--json"], env)).stdout);
    expect(json.router).toEqual({ entries: 2, oldestAgeSeconds: expect.any(Number) });
    expect(json.deployments.map((d: { deployment: string }) => d.deployment)).toEqual(["app", "staging", "site"]);
    const text = await runDeployq(["status", "app"], env);
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(/^router: +2 events waiting to be routed, the oldest for \d+[smhd] \(`deployq queue ls router`\)$/m);
  });

  it("status pairs each deploy shown with its own log and whole error; in place, the live branch comes from the deploy that put its sha there", async () => {
    const db = tdb.database.db;
    const row = (sha: string, ref: string) => ({ deployment: "site", entry: `e-${sha.slice(0, 6)}`, deliveryId: undefined, event: "push", ref, sha, attempt: 1, host: "h", pid: 1 });
    const live = randomSha();
    const ok = await startDeploy(db, row(live, "refs/heads/main"));
    await finishDeploy(db, ok, { status: "succeeded", sha: live });
    await setDeployLog(db, ok, path.join(ws.dir, "data", "logs", "site", `${ok}.log`));
    await mkdir(path.join(ws.dir, "data", "mirrors"), { recursive: true });
    await writeFile(inPlaceStateFile(ws.settings.dataDir, "site"), `${live}\n`);
    const failedSha = randomSha();
    const failed = await startDeploy(db, row(failedSha, "refs/heads/main"));
    const failedLog = path.join(ws.dir, "data", "logs", "site", `${failed}.log`);
    await setDeployLog(db, failed, failedLog);
    await finishDeploy(db, failed, { status: "failed", error: "./deploy.sh exited with code 1:\nmanage.py migrate: table app_user already exists\nrun the migration by hand" });
    // The newest row never ran (no log, no error): the failed one is shown too, with its own log.
    await recordUnrun(db, row(randomSha(), "refs/heads/main"), { status: "superseded", supersededBy: "newer.json" });

    const text = (await runDeployq(["status", "site"], env)).stdout;
    expect(text).toContain(`  current:      (work tree)  ${live}\n`);
    expect(text).toMatch(/^ {2}last deploy: +#\d+ superseded main [0-9a-f]{7} \d+s ago in 0\.0s$/m);
    expect(text).toMatch(new RegExp(`^  last run: +#${failed} failed main ${failedSha.slice(0, 7)} \\d+s ago in 0\\.0s\n  error: `, "m"));
    expect(text).toContain(
      [
        "  error:        ./deploy.sh exited with code 1:",
        "                manage.py migrate: table app_user already exists",
        "                run the migration by hand",
        `  log:          ${failedLog}`,
      ].join("\n"),
    );
    const json = JSON.parse((await runDeployq(["status", "site", "--json"], env)).stdout).deployments[0];
    expect(json).toMatchObject({ current: { sha: live, ref: "main" }, last: { status: "superseded", logPath: null }, lastRun: { id: failed, logPath: failedLog } });
    expect(json.lastRun.error).toBe("./deploy.sh exited with code 1:\nmanage.py migrate: table app_user already exists\nrun the migration by hand");
  });
});
