import { mkdtemp, readFile, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { and, eq } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Daemon, startDaemon } from "../../src/daemon.ts";
import { deliveries, deploys } from "../../src/db/schema.ts";
import { ConfigError } from "../../src/errors.ts";
import { silentLogger } from "../../src/log.ts";
import { type QueueEntry, parseEntry } from "../../src/queue/entry.ts";
import { queueLayout } from "../../src/queue/layout.ts";
import { collectStatus } from "../../src/status.ts";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import { type FakeGithub, startFakeGithub } from "../helpers/fake-github.ts";
import { type TestRepo, createRepo } from "../helpers/git.ts";
import { until } from "../helpers/wait.ts";
import { type Workspace, createWorkspace, followingDeployment, post, pushPayload, signedDelivery } from "../helpers/workspace.ts";

const CONTEXT = "deployq/app";

/** `require_checks` against a fake GitHub: pushes wait for their commit's checks, deploy when they pass, fail when one fails or time runs out. */
describe("require_checks: deploy only what passed CI", () => {
  let ws: Workspace;
  let tdb: TestDatabase;
  let daemon: Daemon;
  let repo: TestRepo;
  let quick: TestRepo;
  let dir: string;
  let fake: FakeGithub;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "deployq-checks-"));
    repo = await createRepo(dir);
    quick = await createRepo(dir, "quick");
    fake = await startFakeGithub();
    ws = await createWorkspace({
      topLevel: "[github]\nwrite_interval_ms = 0\ntimeout_ms = 2000\n",
      env: { GITHUB_TOKEN: fake.token, GITHUB_API_URL: fake.url },
      deployments:
        followingDeployment("app", repo.bare, `require_checks = ["test", "lint"]\ncoalesce_ms = 0`) +
        followingDeployment("quick", quick.bare, `require_checks = ["test"]\nchecks_timeout_s = 2`),
    });
    tdb = await createTestDatabase("postgres");
    daemon = await startDaemon({ settings: ws.settings, role: "serve", logger: silentLogger(), database: tdb.database });
  });
  afterAll(async () => {
    await daemon?.close();
    await tdb?.dispose();
    await fake?.close();
    await ws?.dispose();
    await rm(dir, { recursive: true, force: true });
  });

  const layout = () => queueLayout(ws.queuesDir);
  const push = async (repository: string, sha: string) => {
    const res = await post(daemon.url!, await signedDelivery(pushPayload({ repository, after: sha })));
    expect(res.status).toBe(202);
    return res.body.queued as string;
  };
  const rowOf = async (entry: string, status: string) =>
    until(`${entry} ${status}`, async () => (await tdb.database.db.select().from(deploys).where(and(eq(deploys.entry, entry), eq(deploys.status, status))))[0]);
  const rowsOf = async (entry: string) => tdb.database.db.select().from(deploys).where(eq(deploys.entry, entry));
  const queuedEntry = async (deployment: string, name: string): Promise<QueueEntry | undefined> => {
    const text = await readFile(path.join(layout().deployment(deployment), name), "utf8").catch(() => undefined);
    const parsed = text === undefined ? undefined : parseEntry(text);
    return parsed?.ok ? parsed.entry : undefined;
  };
  const waiting = async (deployment: string) => (await collectStatus(ws.settings, tdb.database.db, deployment)).deployments[0]!.waitingForChecks;
  const liveSha = async (deployment: string) => JSON.parse(await readFile(path.join(ws.dir, "apps", deployment, "current", ".deployq-release.json"), "utf8")).sha as string;
  /** GitHub got this commit status (state and description) on the commit. */
  const toldGithub = (sha: string, context: string, state: string, description: string) =>
    until(`GitHub told ${state}: ${description}`, async () => fake.statusesOf(sha, context).find((s) => s.state === state && s.description === description));

  it("a push waits while its checks are pending, is seen waiting, and deploys as soon as a check event says they passed", async () => {
    const v1 = await repo.commit({ "index.html": "v1" });
    const entry = await push("octo-org/app", v1);
    // Held: shown by status, told to GitHub, and nothing deployed.
    const seen = await until("the push waiting for its checks", async () => {
      const w = await waiting("app");
      return w?.sha === v1 ? w : undefined;
    });
    expect(seen).toMatchObject({ entry, pending: ["test", "lint"] });
    await toldGithub(v1, CONTEXT, "pending", "Waiting for test, lint to pass before deploying to app");
    expect(await rowsOf(entry)).toEqual([]);

    // CI: lint passed, test runs. The next poll sees it (no webhook for these).
    const test = fake.addCheckRun(v1, "test", "in_progress");
    fake.addStatus("octo-org/app", v1, "lint", "success");
    const polled = await until("the poll that sees lint pass", async () => {
      const e = await queuedEntry("app", entry);
      return e?.checks_waiting?.pending.join() === "test" ? e : undefined;
    });
    await toldGithub(v1, CONTEXT, "pending", "Waiting for test to pass before deploying to app");
    const nextPoll = Date.parse(polled.retry_at!);

    // test passes, and GitHub says so with a check_run webhook: the push deploys before its next poll was due.
    test.status = "completed";
    test.conclusion = "success";
    const wake = await post(daemon.url!, await signedDelivery({ action: "completed", check_run: { name: "test", head_sha: v1 }, repository: { full_name: "octo-org/app" } }, { event: "check_run" }));
    expect(wake.status).toBe(202);
    const row = await rowOf(entry, "succeeded");
    expect(row.startedAt.getTime()).toBeLessThan(nextPoll);
    expect(await liveSha("app")).toBe(v1);
    await toldGithub(v1, CONTEXT, "success", "Live on app");

    // The check event was routed to app, woke it, and left nothing behind.
    const [delivery] = await tdb.database.db.select().from(deliveries).where(eq(deliveries.entry, wake.body.queued as string));
    expect(delivery).toMatchObject({ event: "check_run", outcome: "routed", routedTo: ["app"] });
    await until("app's queue empty", async () => (await readdir(layout().deployment("app"))).filter((n) => n.endsWith(".json")).length === 0);
    expect(await waiting("app")).toBeUndefined();
  });

  it("a failed check fails the push with the check's name and link, and deploys nothing", async () => {
    const v1 = await liveSha("app");
    const v2 = await repo.commit({ "index.html": "v2" });
    const run = fake.addCheckRun(v2, "test", "completed", "failure");
    fake.addStatus("octo-org/app", v2, "lint", "success");
    const entry = await push("octo-org/app", v2);
    const row = await rowOf(entry, "failed");
    expect(row.error).toContain(`required check run "test" is failure on ${v2}: ${run.html_url}`);
    expect(row.error).toContain("nothing was deployed");
    await toldGithub(v2, CONTEXT, "failure", "Not deployed to app: check test failed");
    // Dead-lettered, with its error, to be requeued once CI is fixed; v1 still serves.
    const dead = JSON.parse(await until("the entry in dead-letter/app", () => readFile(path.join(layout().deadLetter("app"), entry), "utf8").catch(() => undefined))) as QueueEntry;
    expect(dead.last_error).toContain('"test" is failure');
    expect(await liveSha("app")).toBe(v1);
    expect((await rowsOf(entry)).map((r) => r.status)).toEqual(["failed"]);
  });

  it("a newer push supersedes the one waiting for its checks, and deploys once its own pass", async () => {
    const v3 = await repo.commit({ "index.html": "v3" });
    const older = await push("octo-org/app", v3);
    await until("v3 waiting", async () => (await waiting("app"))?.sha === v3);
    const v4 = await repo.commit({ "index.html": "v4" });
    fake.addCheckRun(v4, "test", "completed", "success");
    fake.addStatus("octo-org/app", v4, "lint", "success");
    const newer = await push("octo-org/app", v4);
    expect(await rowOf(older, "superseded")).toMatchObject({ supersededBy: newer, sha: v3 });
    await rowOf(newer, "succeeded");
    expect(await liveSha("app")).toBe(v4);
    // v3 is never left pending on GitHub.
    const last = await until("v3's final status", async () => fake.statusesOf(v3, CONTEXT).at(-1)?.state === "success" && fake.statusesOf(v3, CONTEXT).at(-1));
    expect(last.description).toContain(`Superseded: ${v4.slice(0, 7)}`);
  });

  it("a checked push deploys its own commit only: when the branch has moved on to an unchecked one, it waits for that one's push", async () => {
    const before = await liveSha("app");
    const v5 = await repo.commit({ "index.html": "v5" });
    const v6 = await repo.commit({ "index.html": "v6" }); // pushed, its webhook not here yet
    fake.addCheckRun(v5, "test", "completed", "success");
    fake.addStatus("octo-org/app", v5, "lint", "success");
    const entry = await push("octo-org/app", v5);
    expect(await rowOf(entry, "superseded")).toMatchObject({ sha: v5, supersededBy: v6 });
    // Neither v5 (not the branch's head) nor v6 (not checked) went live.
    expect(await liveSha("app")).toBe(before);
  });

  it("checks that have not passed within checks_timeout_s fail the push", async () => {
    const q1 = await quick.commit({ "index.html": "q1" });
    fake.addCheckRun(q1, "test", "queued");
    const entry = await push("octo-org/quick", q1);
    const row = await rowOf(entry, "failed");
    expect(row.error).toContain(`required checks not successful within checks_timeout_s (2 s): test still pending on ${q1}`);
    await toldGithub(q1, "deployq/quick", "failure", "Not deployed to quick: test did not pass in time");
    expect(await readdir(layout().deadLetter("quick"))).toContain(entry);
  });
});

describe("require_checks without GITHUB_TOKEN", () => {
  it("the workers refuse to start, saying which deployments need the token and with what permissions", async () => {
    const ws = await createWorkspace({ deployments: followingDeployment("app", "/nowhere.git", 'require_checks = ["test"]') });
    try {
      const started = startDaemon({ settings: ws.settings, role: "workers", logger: silentLogger() });
      await expect(started).rejects.toThrow(ConfigError);
      await expect(started).rejects.toThrow(/app has require_checks.*set GITHUB_TOKEN \(a token with "Checks: read" and "Commit statuses: read" on octo-org\/app\)/);
    } finally {
      await ws.dispose();
    }
  });
});
