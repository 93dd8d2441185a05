import { readFile, mkdtemp, rm } from "node:fs/promises";
import { type Server, createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { randomUUID } from "node:crypto";
import { and, eq, inArray } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Daemon, startDaemon } from "../../src/daemon.ts";
import { FINAL_STATUSES } from "../../src/db/queries/deploys.ts";
import { deploys, githubOutbox } from "../../src/db/schema.ts";
import { outboxRows } from "../../src/github/outbox.ts";
import { MAX_DESCRIPTION } from "../../src/github/statuses.ts";
import { silentLogger } from "../../src/log.ts";
import { collectStatus } from "../../src/status.ts";
import { entryName } from "../../src/queue/entry-name.ts";
import { queueLayout } from "../../src/queue/layout.ts";
import { writeEntryDurably } from "../../src/queue/write.ts";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import { type CreatedStatus, type FakeGithub, startFakeGithub } from "../helpers/fake-github.ts";
import { type TestRepo, createRepo } from "../helpers/git.ts";
import { runDeployq } from "../helpers/processes.ts";
import { until } from "../helpers/wait.ts";
import { type Workspace, createWorkspace, followingDeployment, post, pushPayload, signedDelivery } from "../helpers/workspace.ts";

const CONTEXT = "deployq/app";
const PUBLIC_URL = "https://deploy.example.com";

/** Whether `sub` appears in `all` in the same order (GitHub may get fewer states than were written: newer ones replace older ones unsent). */
function isSubsequence<T>(sub: readonly T[], all: readonly T[]): boolean {
  let i = 0;
  for (const x of all) if (i < sub.length && x === sub[i]) i++;
  return i === sub.length;
}

/** Commit statuses through a fake GitHub: what each commit is told, in which order, and that deploys never wait for GitHub. */
describe("GitHub commit statuses", () => {
  let ws: Workspace;
  let tdb: TestDatabase;
  let daemon: Daemon;
  let repo: TestRepo;
  let dir: string;
  let fake: FakeGithub;
  let health: Server;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "deployq-github-"));
    repo = await createRepo(dir);
    fake = await startFakeGithub();
    // Healthy unless the live release has an UNHEALTHY file.
    health = createServer((_req, res) => {
      void readFile(path.join(ws.dir, "apps", "app", "current", "UNHEALTHY")).then(
        () => res.writeHead(500).end("sick"),
        () => res.writeHead(200).end("ok"),
      );
    });
    await new Promise<void>((resolve) => health.listen(0, "127.0.0.1", resolve));
    const healthUrl = `http://127.0.0.1:${(health.address() as AddressInfo).port}/`;
    ws = await createWorkspace({
      topLevel: "[github]\nwrite_interval_ms = 0\ntimeout_ms = 1000\n",
      env: { GITHUB_TOKEN: fake.token, GITHUB_API_URL: fake.url },
      deployments: `public_url = "${PUBLIC_URL}"\n${followingDeployment(
        "app",
        repo.bare,
        `commands = [["sh", "-c", "if [ -e FAIL ]; then echo 'build broke' >&2; exit 3; fi"]]
restart = { script = ["true"] }
health = { url = "${healthUrl}", timeout_s = 1 }`,
      )}`,
    });
    tdb = await createTestDatabase("postgres");
    daemon = await startDaemon({ settings: ws.settings, role: "serve", logger: silentLogger(), database: tdb.database });
  });
  afterAll(async () => {
    await daemon?.close();
    await tdb?.dispose();
    await fake?.close();
    await new Promise((resolve) => health?.close(resolve));
    await ws?.dispose();
    await rm(dir, { recursive: true, force: true });
  });

  const push = async (sha: string) => {
    const res = await post(daemon.url!, await signedDelivery(pushPayload({ repository: "octo-org/app", after: sha })));
    expect(res.status).toBe(202);
    return res.body.queued as string;
  };
  const written = async (sha: string) => (await outboxRows(tdb.database.db)).filter((r) => r.sha === sha && r.context === CONTEXT);
  /** The commit has its final state written, every state written has been dealt with, and GitHub's last one is the newest written. */
  const settled = (sha: string) =>
    until(`the statuses of ${sha.slice(0, 7)} to be sent`, async () => {
      const rows = await written(sha);
      if (rows.length === 0 || rows.at(-1)!.state === "pending" || rows.some((r) => r.result === null)) return undefined;
      const got = fake.statusesOf(sha, CONTEXT);
      return got.length > 0 && got.at(-1)!.description === rows.at(-1)!.description ? got : undefined;
    });
  /** GitHub got the commit's states in the order they were written, never an older after a newer, none twice. */
  const expectInOrder = async (sha: string, got: CreatedStatus[]) => {
    const rows = await written(sha);
    const all = rows.map((r) => `${r.state}: ${r.description}`);
    const seen = got.map((s) => `${s.state}: ${s.description}`);
    expect(isSubsequence(seen, all), `sent ${JSON.stringify(seen)}, written ${JSON.stringify(all)}`).toBe(true);
    expect(new Set(seen).size).toBe(seen.length);
    for (const s of got) expect(s.description.length).toBeLessThanOrEqual(MAX_DESCRIPTION);
    return all;
  };
  const deployOf = async (entry: string, status: string) =>
    until(`${entry} ${status}`, async () => (await tdb.database.db.select().from(deploys).where(and(eq(deploys.entry, entry), eq(deploys.status, status))))[0]);

  it("a deploy that goes live: pending when queued and started, then success, linked to its page", async () => {
    const v1 = await repo.commit({ "index.html": "v1" });
    const entry = await push(v1);
    const got = await settled(v1);
    const all = await expectInOrder(v1, got);
    expect(all).toEqual(["pending: Queued for app", "pending: Deploying to app", "success: Live on app"]);
    const row = await deployOf(entry, "succeeded");
    expect(got.at(-1)).toMatchObject({ repository: "octo-org/app", state: "success", targetUrl: `${PUBLIC_URL}/dashboard/deploys/${row.id}` });
    expect(fake.requests.every((r) => r.authorization === `token ${fake.token}`)).toBe(true);
  });

  it("a failing build: failure, naming the step, and the previous release still serving", async () => {
    const v1 = fake.statuses.at(-1)!.sha;
    const v2 = await repo.commit({ FAIL: "1" });
    await push(v2);
    const got = await settled(v2);
    expect(await expectInOrder(v2, got)).toEqual(["pending: Queued for app", "pending: Deploying to app", `failure: The build failed on app; the previous release (${v1.slice(0, 7)}) is still serving`]);
  });

  it("a failing health check, rolled back: failure naming the health check", async () => {
    const v3 = await repo.commit({ FAIL: null, UNHEALTHY: "1" });
    const entry = await push(v3);
    const got = await settled(v3);
    expect(got.at(-1)).toMatchObject({ state: "failure", description: expect.stringMatching(/^The health check failed on app; the previous release \([0-9a-f]{7}\) is still serving$/) });
    await expectInOrder(v3, got);
    const row = await deployOf(entry, "failed");
    expect(row.error).toMatch(/health/i);
  });

  it("a burst of 12 pushes: every commit ends in a final state, none left pending", async () => {
    const shas: string[] = [];
    const entries: string[] = [];
    for (let i = 0; i < 12; i++) {
      const sha = await repo.commit({ UNHEALTHY: null, "index.html": `burst ${i}` });
      shas.push(sha);
      entries.push(await push(sha));
    }
    await until("every entry of the burst to have its turn", async () => {
      const rows = await tdb.database.db.select().from(deploys).where(inArray(deploys.entry, entries));
      return entries.every((e) => rows.some((r) => r.entry === e && (FINAL_STATUSES as readonly string[]).includes(r.status)));
    });
    for (const sha of shas) {
      const got = await settled(sha);
      await expectInOrder(sha, got);
      expect(got.at(-1)!.state, `${sha}: ${got.at(-1)!.description}`).toBe("success");
    }
    // The head went live by its own entry, or by an earlier one that found the branch there already.
    expect(fake.statusesOf(shas.at(-1)!, CONTEXT).at(-1)!.description).toMatch(/^(Already live|Live) on app$/);
    // The others name the commit deployed in their place, or went live on their way: by their
    // own entry, or by an earlier one that found the branch at them (their own entry then finds
    // them live already), before a newer commit replaced them.
    const superseded = shas.slice(0, -1).map((sha) => fake.statusesOf(sha, CONTEXT).at(-1)!.description);
    for (const d of superseded) expect(d).toMatch(/^Superseded: [0-9a-f]{7} was deployed to app instead$|^(Already live|Live) on app$|^Superseded by a newer entry/);
    expect(superseded.some((d) => d.startsWith("Superseded"))).toBe(true);
  });

  it("a rollback: the commit put back is live again, the one it replaced is told so", async () => {
    const from = await repo.commit({ "index.html": "before the rollback" });
    await deployOf(await push(from), "succeeded");
    await settled(from);
    const layout = queueLayout(ws.queuesDir);
    const id = randomUUID();
    const name = entryName(id);
    await writeEntryDurably(layout, layout.deployment("app"), name, { event: "rollback", delivery_id: id, hook_id: "", received_at: new Date().toISOString(), payload: {} });
    await deployOf(name, "succeeded");
    const to = JSON.parse(await readFile(path.join(ws.dir, "apps", "app", "current", ".deployq-release.json"), "utf8")).sha as string;
    expect(to).not.toBe(from);
    const toGot = await settled(to);
    const fromGot = await settled(from);
    await expectInOrder(to, toGot);
    await expectInOrder(from, fromGot);
    expect((await written(to)).at(-1)).toMatchObject({ state: "success", description: `Live again on app: rolled back from ${from.slice(0, 7)}` });
    expect((await written(from)).map((r) => `${r.state}: ${r.description}`)).toEqual([
      "pending: Queued for app",
      "pending: Deploying to app",
      "success: Live on app",
      `failure: Rolled back on app: ${to.slice(0, 7)} is live instead`,
    ]);
  });

  it("the API timing out, then down, then back: deploys go on, and every status arrives after, in order", async () => {
    fake.setMode({ kind: "hang" });
    const before = fake.statuses.length;
    const a = await repo.commit({ "index.html": "outage a" });
    const entryA = await push(a);
    await deployOf(entryA, "succeeded");
    await until("a request to time out", async () => fake.requests.some((r) => r.answered === undefined));
    fake.setMode({ kind: "fail", status: 502 });
    const b = await repo.commit({ "index.html": "outage b" });
    const entryB = await push(b);
    const rowB = await deployOf(entryB, "succeeded");
    await until("a request to get 502", async () => fake.requests.some((r) => r.answered === 502));
    // Deployed while GitHub took nothing.
    expect(fake.statuses.length).toBe(before);
    expect(rowB.durationMs!).toBeLessThan(10_000);
    const waiting = await tdb.database.db.select().from(githubOutbox).where(eq(githubOutbox.sha, b));
    expect(waiting.some((r) => r.result === null)).toBe(true);
    fake.setMode({ kind: "up" });
    for (const sha of [a, b]) {
      const got = await settled(sha);
      await expectInOrder(sha, got);
    }
    expect(fake.statusesOf(a, CONTEXT).at(-1)!.state).toBe("success");
    expect(fake.statusesOf(b, CONTEXT).at(-1)!.description).toBe("Live on app");
  });

  it("a rate limit with its reset 2 s ahead: the sender waits until then, and deploys go on meanwhile", async () => {
    const resetEpochS = Math.ceil(Date.now() / 1000) + 2;
    fake.setMode({ kind: "rate-limit", resetEpochS });
    const limitedFrom = fake.requests.length;
    const c = await repo.commit({ "index.html": "rate limited" });
    const entry = await push(c);
    await until("a 403", async () => fake.requests.slice(limitedFrom).some((r) => r.answered === 403));
    const row = await deployOf(entry, "succeeded");
    const got = await settled(c);
    await expectInOrder(c, got);
    expect(got.at(-1)!.state).toBe("success");
    // Not one request between the 403 and the reset: it waited, it did not hammer.
    const after403 = fake.requests.slice(limitedFrom).filter((r) => r.answered !== 403);
    expect(after403.every((r) => r.at >= resetEpochS * 1000)).toBe(true);
    expect(fake.requests.slice(limitedFrom).filter((r) => r.answered === 403)).toHaveLength(1);
    // The deploy was done before GitHub took its first status.
    expect(row.finishedAt!.getTime()).toBeLessThan(got[0]!.at);
    const metrics = await (await fetch(daemon.metricsUrl!)).text();
    expect(metrics).toMatch(/deployq_github_sends_total\{result="rate_limited"\} 1\b/);
    expect(metrics).toMatch(/deployq_github_sends_total\{result="success"\} [1-9]/);
  });

  it("a permanent refusal (422): given up, with what to fix, and shown by status", async () => {
    fake.setMode({ kind: "fail", status: 422 });
    const d = await repo.commit({ "index.html": "refused" });
    const entry = await push(d);
    await deployOf(entry, "succeeded");
    await until("the statuses to be given up", async () => {
      const rows = await written(d);
      return rows.length > 0 && rows.at(-1)!.state !== "pending" && rows.every((r) => r.result === "gave-up");
    });
    const report = await collectStatus(ws.settings, tdb.database.db);
    expect(report.github).toMatchObject({ backlog: 0, lastError: { sha: d, context: CONTEXT, gaveUp: true } });
    expect(report.github!.lastError!.error).toMatch(/422/);
    const cli = await runDeployq(["status"], { ...ws.env, DATABASE_URL: tdb.url, DEPLOYQ_CONFIG: ws.configPath });
    expect(cli.code, cli.stderr).toBe(0);
    expect(cli.stdout).toMatch(/^github statuses: all sent; last error .* ago \(deployq\/app on octo-org\/app@[0-9a-f]{7}, given up\): GitHub refused the status \(422\)/m);
    fake.setMode({ kind: "up" });
  });
});
