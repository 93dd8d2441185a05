import { randomUUID } from "node:crypto";
import { mkdir, mkdtemp, readFile, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { eq } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Daemon, startDaemon } from "../../src/daemon.ts";
import { type Deploy, deploys } from "../../src/db/schema.ts";
import { silentLogger } from "../../src/log.ts";
import { requeue } from "../../src/queue/admin.ts";
import { collectStatus } from "../../src/status.ts";
import { entryName } from "../../src/queue/entry-name.ts";
import { queueLayout } from "../../src/queue/layout.ts";
import { ensureQueueDirs, writeEntryDurably } from "../../src/queue/write.ts";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import { type TestRepo, createRepo, git } from "../helpers/git.ts";
import { until } from "../helpers/wait.ts";
import { type Workspace, createWorkspace, post, pushPayload, signedDelivery } from "../helpers/workspace.ts";

/**
 * The rule: a push never moves a deployment backwards by accident. A push entry deploys
 * the head of its branch as it is when the entry is taken; an explicit `deploy --ref` or
 * `rollback` is the only way to deploy something else.
 */
describe("newest wins against late, redelivered and requeued pushes", () => {
  let dir: string;
  let repo: TestRepo;
  let ws: Workspace;
  let tdb: TestDatabase;
  let daemon: Daemon;
  const build = `commands = [["sh", "-c", "if [ -e FAIL ]; then echo 'this commit fails its build' >&2; exit 3; fi; echo $DEPLOYQ_SHA > BUILT"]]`;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "deployq-newest-"));
    repo = await createRepo(dir);
    ws = await createWorkspace({
      deployments: `
[deployments.app]
repository = "octo-org/app"
branch = "main"
remote = "${repo.bare}"
path = "./apps/app"
max_attempts = 1
${build}

[deployments.staging]
repository = "octo-org/app"
branch = "deploy-*"
remote = "${repo.bare}"
path = "./apps/staging"
${build}

[deployments.site]
repository = "octo-org/app"
branch = "main"
remote = "${repo.bare}"
path = "./www/site"
strategy = "in-place"
${build}
`,
    });
    tdb = await createTestDatabase("postgres");
    daemon = await startDaemon({ settings: ws.settings, role: "serve", logger: silentLogger(), database: tdb.database });
  });
  afterAll(async () => {
    await daemon?.close();
    await tdb?.dispose();
    await ws?.dispose();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  /** A push delivery as GitHub sends it (each with its own delivery ID, as a redelivery of a lost one is). */
  async function send(sha: string, branch = "main"): Promise<string> {
    const res = await post(daemon.url!, await signedDelivery(pushPayload({ repository: "octo-org/app", branch, after: sha })));
    expect(res.status).toBe(202);
    return res.body.queued as string;
  }
  const rowsOf = (deployment: string) => tdb.database.db.select().from(deploys).where(eq(deploys.deployment, deployment));
  /** The final row of an entry in a deployment (not running, not retrying), newer than row `after`. */
  const outcome = (deployment: string, entry: string, after = 0) =>
    until(`the outcome of ${entry} in ${deployment}`, async () => {
      const rows = (await rowsOf(deployment)).filter((r) => r.entry === entry && r.id > after && r.status !== "running" && r.status !== "retrying");
      return rows.length > 0 ? rows.at(-1) : undefined;
    });
  /** Every entry a deployment was handed has left its queue (handled, or dead-lettered). */
  const drained = (deployment: string) =>
    until(`${deployment}'s queue to drain`, async () => (await readdir(path.join(ws.queuesDir, "deployments", deployment)).catch(() => [])).length === 0);
  const live = async (deployment: string) => (await readFile(path.join(ws.dir, "apps", deployment, "current", "BUILT"), "utf8").catch(() => "")).trim();
  const deadLetters = (deployment: string) => readdir(path.join(ws.queuesDir, "dead-letter", deployment)).catch(() => [] as string[]);
  const layout = () => queueLayout(ws.queuesDir);
  /** Everything the other deployments did with a push of main is settled before a test looks at one. */
  const settle = async (...entries: string[]) => {
    for (const e of entries) for (const d of ["app", "site"]) await outcome(d, e).catch(() => undefined);
    await drained("app");
    await drained("site");
  };

  it("a requeued dead letter (v4) after a later push (v5) is live is superseded by v5 and deploys nothing", async () => {
    const v4 = await repo.commit({ FAIL: "1", "index.html": "v4" });
    const e4 = await send(v4);
    await until("v4's dead letter", async () => (await deadLetters("app")).includes(e4));
    const v5 = await repo.commit({ FAIL: null, "index.html": "v5" });
    const e5 = await send(v5);
    expect(await outcome("app", e5)).toMatchObject({ status: "succeeded", sha: v5, requestedSha: null });
    await settle(e4, e5);

    const failed = await outcome("app", e4);
    expect(failed).toMatchObject({ status: "failed", sha: v4 });
    expect(await requeue(layout(), "app")).toEqual([e4]);
    const row = await outcome("app", e4, failed.id);
    expect(row).toMatchObject({ status: "superseded", sha: v4, supersededBy: v5 });
    expect(row.error).toMatch(new RegExp(`superseded by the head of its branch, ${v5}, which is live already`));
    expect(await readFile(row.logPath!, "utf8")).toContain(`main has moved on since this push: it is at ${v5} now, not ${v4}`);
    expect(await live("app")).toBe(v5);
    expect(await deadLetters("app")).toEqual([]);
    await drained("app");
  });

  it("a redelivered old push (a delivery that was lost, sent again) is superseded by the head and deploys nothing", async () => {
    const v6 = await repo.commit({ "index.html": "v6" });
    const e6 = await send(v6);
    const v7 = await repo.commit({ "index.html": "v7" });
    const e7 = await send(v7);
    await settle(e6, e7);
    expect(await live("app")).toBe(v7);
    const releasesBefore = await readdir(path.join(ws.dir, "apps", "app", "releases"));

    const late = await send(v6);
    expect(await outcome("app", late)).toMatchObject({ status: "superseded", sha: v6, supersededBy: v7 });
    expect(await live("app")).toBe(v7);
    expect(await readdir(path.join(ws.dir, "apps", "app", "releases"))).toEqual(releasesBefore);
    // The in-place deployment follows the same rule.
    expect(await outcome("site", late)).toMatchObject({ status: "superseded", sha: v6, supersededBy: v7 });
    expect((await readFile(path.join(ws.dir, "www", "site", "BUILT"), "utf8")).trim()).toBe(v7);
  });

  it("a push that waited while its branch moved on deploys the branch's head instead, and records both commits", async () => {
    const v8 = await repo.commit({ "index.html": "v8" });
    // v9 is pushed to the branch but its delivery has not come (yet): the v8 entry deploys v9.
    const v9 = await repo.commit({ "index.html": "v9" });
    const e8 = await send(v8);
    expect(await outcome("app", e8)).toMatchObject({ status: "succeeded", sha: v9, requestedSha: v8 });
    expect(await live("app")).toBe(v9);
    // deployq status says so.
    const { deployments } = await collectStatus(ws.settings, tdb.database.db, "app");
    expect(deployments[0]!.last).toMatchObject({ entry: e8, sha: v9, requestedSha: v8 });
    expect(await outcome("site", e8)).toMatchObject({ status: "succeeded", sha: v9, requestedSha: v8 });
    expect((await readFile(path.join(ws.dir, "www", "site", "BUILT"), "utf8")).trim()).toBe(v9);
    // And when v9's delivery comes, it is already live.
    const e9 = await send(v9);
    expect(await outcome("app", e9)).toMatchObject({ status: "already-deployed", sha: v9 });
    await settle(e8, e9);
  });

  it("a force push that resets the branch to an older commit deploys it: it is the branch's head", async () => {
    const older = await git(repo.work, "rev-parse", "HEAD~1");
    const newer = await git(repo.work, "rev-parse", "HEAD");
    expect(await live("app")).toBe(newer);
    // git push --force production older-commit:main
    await git(repo.work, "push", "--quiet", "--force", "origin", `${older}:refs/heads/main`);
    await git(repo.work, "reset", "--quiet", "--hard", older);
    const reset = await send(older);
    expect(await outcome("app", reset)).toMatchObject({ status: "succeeded", sha: older, requestedSha: null });
    expect(await live("app")).toBe(older);
    expect(await outcome("site", reset)).toMatchObject({ status: "succeeded", sha: older });
    // The push of the commit the reset threw away is stale now.
    const stale = await send(newer);
    expect(await outcome("app", stale)).toMatchObject({ status: "superseded", sha: newer, supersededBy: older });
    expect(await live("app")).toBe(older);
    await settle(reset, stale);
  });

  it("a glob-followed deployment deploys the head of the entry's own branch, and nothing for a deleted one", async () => {
    const a1 = await repo.commit({ "index.html": "a1" }, { branch: "deploy-a" });
    const a2 = await repo.commit({ "index.html": "a2" }, { branch: "deploy-a" });
    const b1 = await repo.commit({ "index.html": "b1" }, { branch: "deploy-b" });
    const ea = await send(a1, "deploy-a");
    expect(await outcome("staging", ea)).toMatchObject({ status: "succeeded", sha: a2, requestedSha: a1, ref: "refs/heads/deploy-a" });
    const eb = await send(b1, "deploy-b");
    // deploy-b's head, not deploy-a's (which is newer): the entry's ref decides.
    expect(await outcome("staging", eb)).toMatchObject({ status: "succeeded", sha: b1, requestedSha: null });
    expect(await live("staging")).toBe(b1);

    const c1 = await repo.commit({ "index.html": "c1" }, { branch: "deploy-c" });
    await git(repo.work, "push", "--quiet", "origin", "--delete", "deploy-c");
    const ec = await send(c1, "deploy-c");
    const row = await outcome("staging", ec);
    expect(row).toMatchObject({ status: "superseded", sha: c1, supersededBy: null });
    expect(row.error).toMatch(/deploy-c no longer exists on .*: the push of [0-9a-f]{40} has nothing left to deploy/);
    expect(await live("staging")).toBe(b1);
    await git(repo.work, "checkout", "--quiet", "main");
  });

  it("a bulk requeue runs only the newest entry per deployment and records the others as superseded by it", async () => {
    await settle();
    const before = await live("app");
    const releases = (await readdir(path.join(ws.dir, "apps", "app", "releases"))).sort();
    expect(releases.length).toBeGreaterThanOrEqual(2);
    const previous = releases.at(-2)!;
    // Three dead letters, oldest first: two stale rollbacks and a deploy of the branch.
    const l = layout();
    await ensureQueueDirs(l, ["app"]);
    await mkdir(l.deadLetter("app"), { recursive: true });
    const planted: string[] = [];
    for (const payload of [{ to: previous }, {}, { ref: "main" }]) {
      const id = randomUUID();
      const name = entryName(id);
      await writeEntryDurably(l, l.deadLetter("app"), name, {
        event: "to" in payload || Object.keys(payload).length === 0 ? "rollback" : "deploy",
        delivery_id: id,
        hook_id: "",
        received_at: new Date().toISOString(),
        payload: { ...payload, repository: { full_name: "octo-org/app" } },
        attempts: 1,
        last_error: "the lock service was down",
      });
      planted.push(name);
    }
    expect(await requeue(l, "app")).toEqual(planted);
    const rows: Deploy[] = [];
    for (const e of planted) rows.push(await outcome("app", e));
    expect(rows.map((r) => r.status)).toEqual(["superseded", "superseded", "already-deployed"]);
    expect(rows[0]!.supersededBy).toBe(planted[2]);
    expect(rows[1]!.supersededBy).toBe(planted[2]);
    // Neither rollback ran: no switch to an older release ever happened.
    expect((await rowsOf("app")).filter((r) => planted.includes(r.entry) && r.status === "succeeded")).toEqual([]);
    expect(await live("app")).toBe(before);
    await drained("app");
  });

  it("requeuing one dead letter by name runs it as asked, and an explicit deploy --ref of an older sha says so", async () => {
    const head = await git(repo.work, "rev-parse", "main");
    const old = await git(repo.work, "rev-parse", "main~2");
    const l = layout();
    const id = randomUUID();
    const name = entryName(id);
    await mkdir(l.deadLetter("app"), { recursive: true });
    await writeEntryDurably(l, l.deadLetter("app"), name, {
      event: "deploy",
      delivery_id: id,
      hook_id: "",
      received_at: new Date().toISOString(),
      payload: { ref: old, repository: { full_name: "octo-org/app" } },
      attempts: 1,
      last_error: "x",
    });
    expect(await requeue(l, "app", name)).toEqual([name]);
    const row = await outcome("app", name);
    expect(row).toMatchObject({ status: "succeeded", sha: old, event: "deploy" });
    expect(await readFile(row.logPath!, "utf8")).toContain(`deploying ${old} as asked (--ref): it is not the head of main (${head})`);
    expect(await live("app")).toBe(old);
  });

  it("deploy --force redeploys the current commit: a new release, built again", async () => {
    const sha = await live("app");
    const l = layout();
    const plain = entryName(randomUUID());
    const forced = entryName(randomUUID());
    for (const [name, force] of [[plain, false], [forced, true]] as const) {
      await writeEntryDurably(l, l.deployment("app"), name, {
        event: "deploy",
        delivery_id: name.slice(20, -5),
        hook_id: "",
        received_at: new Date().toISOString(),
        payload: { ref: sha, force, repository: { full_name: "octo-org/app" } },
      });
      await outcome("app", name);
    }
    expect(await outcome("app", plain)).toMatchObject({ status: "already-deployed", sha });
    const row = await outcome("app", forced);
    expect(row).toMatchObject({ status: "succeeded", sha });
    expect(row.release).not.toBe(row.previousRelease);
    expect(row.release!.endsWith(sha.slice(0, 7))).toBe(true);
    expect(row.previousRelease!.endsWith(sha.slice(0, 7))).toBe(true);
    expect(await readFile(row.logPath!, "utf8")).toContain("deploying it again (--force)");
    expect(await live("app")).toBe(sha);
  });
});
