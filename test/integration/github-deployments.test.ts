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
import { deploys, githubDeployments, githubOutbox } from "../../src/db/schema.ts";
import { outboxRows } from "../../src/github/outbox.ts";
import { silentLogger } from "../../src/log.ts";
import { collectStatus } from "../../src/status.ts";
import { entryName } from "../../src/queue/entry-name.ts";
import { queueLayout } from "../../src/queue/layout.ts";
import { writeEntryDurably } from "../../src/queue/write.ts";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import { type CreatedDeployment, type CreatedDeploymentStatus, type FakeGithub, startFakeGithub } from "../helpers/fake-github.ts";
import { type TestRepo, createRepo } from "../helpers/git.ts";
import { until } from "../helpers/wait.ts";
import { type Workspace, createWorkspace, followingDeployment, post, pushPayload, signedDelivery } from "../helpers/workspace.ts";

const PUBLIC_URL = "https://deploy.example.com";
const ENVIRONMENT = "production";
const APP_URL = "https://app.example.com";
const FINAL = ["success", "failure", "error", "inactive"];

/** Whether `sub` appears in `all` in the same order (GitHub may get fewer states than were written: newer ones replace older ones unsent). */
function isSubsequence<T>(sub: readonly T[], all: readonly T[]): boolean {
  let i = 0;
  for (const x of all) if (i < sub.length && x === sub[i]) i++;
  return i === sub.length;
}

const said = (s: { state: string; description: string }) => `${s.state}: ${s.description}`;

/** GitHub Deployments through a fake GitHub: one per deploy, its statuses in order, each ending in a final state. */
describe("GitHub Deployments", () => {
  let ws: Workspace;
  let tdb: TestDatabase;
  let daemon: Daemon;
  let repo: TestRepo;
  let dir: string;
  let fake: FakeGithub;
  let health: Server;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "deployq-github-deployments-"));
    repo = await createRepo(dir);
    fake = await startFakeGithub();
    health = createServer((_req, res) => {
      void readFile(path.join(ws.dir, "apps", "app", "current", "UNHEALTHY")).then(
        () => res.writeHead(500).end("sick"),
        () => res.writeHead(200).end("ok"),
      );
    });
    await new Promise<void>((resolve) => health.listen(0, "127.0.0.1", resolve));
    const healthUrl = `http://127.0.0.1:${(health.address() as AddressInfo).port}/`;
    ws = await createWorkspace({
      topLevel: "[github]\nwrite_interval_ms = 0\ntimeout_ms = 1000\ndeployments = true\n",
      env: { GITHUB_TOKEN: fake.token, GITHUB_API_URL: fake.url },
      deployments: `public_url = "${PUBLIC_URL}"\n${followingDeployment(
        "app",
        repo.bare,
        `commands = [["sh", "-c", "if [ -e FAIL ]; then echo 'build broke' >&2; exit 3; fi"]]
restart = { script = ["true"] }
health = { url = "${healthUrl}", timeout_s = 1 }

[deployments.app.github]
environment = "${ENVIRONMENT}"
production_environment = true
environment_url = "${APP_URL}"`,
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
  const deployOf = async (entry: string, status: string) =>
    until(`${entry} ${status}`, async () => (await tdb.database.db.select().from(deploys).where(and(eq(deploys.entry, entry), eq(deploys.status, status))))[0]);
  /** What was written for one of deployq's deployments (its creation, then its statuses), in order. */
  const writtenFor = async (rowId: number) => (await outboxRows(tdb.database.db)).filter((r) => r.key === `deployment:${rowId}`);
  const fakeDeploymentOf = (entry: string, sha: string) => fake.deployments.filter((d) => (d.payload as { deployq?: string }).deployq === `app/${entry}/${sha}`);

  /**
   * Every GitHub deployment deployq made for `sha`, once each has its final state written and
   * sent: GitHub got its statuses in the order written (fewer, never older after newer, never
   * twice), the last one the newest written. One GitHub deployment per deployq one.
   */
  const settled = (sha: string, count = 1) =>
    until(`the GitHub deployments of ${sha.slice(0, 7)} to be sent`, async () => {
      const rows = await tdb.database.db.select().from(githubDeployments).where(eq(githubDeployments.sha, sha));
      if (rows.length < count) return undefined;
      const out: Array<{ entry: string; rowId: number; github: CreatedDeployment; written: string[]; got: CreatedDeploymentStatus[] }> = [];
      for (const row of rows) {
        const written = await writtenFor(row.id);
        if (written.some((r) => r.result === null) || !FINAL.includes(written.at(-1)!.state)) return undefined;
        const created = fakeDeploymentOf(row.entry, sha);
        if (created.length !== 1 || row.githubId !== created[0]!.id) return undefined;
        const got = fake.deploymentStatusesOf(created[0]!.id);
        if (got.length === 0 || said(got.at(-1)!) !== said(written.at(-1)!)) return undefined;
        out.push({ entry: row.entry, rowId: row.id, github: created[0]!, written: written.map((r) => (r.kind === "deployment" ? "create" : said(r))), got });
      }
      return out;
    });
  const expectInOrder = (d: { written: string[]; got: CreatedDeploymentStatus[] }) => {
    const seen = d.got.map(said);
    expect(d.written[0]).toBe("create");
    expect(isSubsequence(seen, d.written.slice(1)), `sent ${JSON.stringify(seen)}, written ${JSON.stringify(d.written)}`).toBe(true);
    expect(new Set(seen).size).toBe(seen.length);
  };
  const allSent = () => until("the outbox to be sent", async () => (await outboxRows(tdb.database.db)).every((r) => r.result !== null));
  /** The deployments GitHub shows as active: the last status of each is success. */
  const activeOnGithub = () => fake.deployments.filter((d) => fake.deploymentStatusesOf(d.id).at(-1)?.state === "success");

  it("a deploy that goes live: one deployment of the exact commit, queued → in_progress → success, with its log and environment URLs", async () => {
    const v1 = await repo.commit({ "index.html": "v1" });
    const entry = await push(v1);
    const [d] = await settled(v1);
    const row = await deployOf(entry, "succeeded");
    expect(d!.entry).toBe(entry);
    expect(d!.written).toEqual(["create", "queued: Queued for app", "in_progress: Deploying to app", "success: Live on app"]);
    expectInOrder(d!);
    expect(d!.github).toMatchObject({ repository: "octo-org/app", ref: v1, environment: ENVIRONMENT, productionEnvironment: true, autoMerge: false, requiredContexts: [] });
    expect(d!.got.at(-1)).toMatchObject({ state: "success", logUrl: `${PUBLIC_URL}/dashboard/deploys/${row.id}`, environmentUrl: APP_URL });
    // The deployment was created before any status was sent to it, and none went to an unknown id.
    const deploymentRequests = fake.requests.filter((r) => r.path.includes("/deployments"));
    expect(deploymentRequests.every((r) => r.answered === 200 || r.answered === 201)).toBe(true);
    expect(deploymentRequests.every((r) => r.authorization === `token ${fake.token}`)).toBe(true);
    // The commit status still goes as before.
    await until("v1's commit status", async () => fake.statusesOf(v1, "deployq/app").at(-1)?.state === "success");
    expect(activeOnGithub().map((x) => x.ref)).toEqual([v1]);
  });

  it("the next success marks the previous deployment inactive (a production environment: GitHub would not)", async () => {
    const v1 = fake.deployments.at(-1)!.ref;
    const v2 = await repo.commit({ "index.html": "v2" });
    await push(v2);
    const [d2] = await settled(v2);
    expect(d2!.written.at(-1)).toBe("success: Live on app");
    const [d1] = await settled(v1);
    expect(d1!.written).toEqual(["create", "queued: Queued for app", "in_progress: Deploying to app", "success: Live on app", `inactive: Replaced by ${v2.slice(0, 7)} on app`]);
    expect(fake.deploymentStatusesOf(d1!.github.id).at(-1)!.state).toBe("inactive");
    expect(activeOnGithub().map((x) => x.ref)).toEqual([v2]);
  });

  it("a failing build: failure, naming the step; the previous deployment stays the live one", async () => {
    const v2 = activeOnGithub()[0]!.ref;
    const v3 = await repo.commit({ FAIL: "1" });
    await deployOf(await push(v3), "failed");
    const [d3] = await settled(v3);
    expect(d3!.written).toEqual(["create", "queued: Queued for app", "in_progress: Deploying to app", `failure: The build failed on app; the previous release (${v2.slice(0, 7)}) is still serving`]);
    expectInOrder(d3!);
    expect(activeOnGithub().map((x) => x.ref)).toEqual([v2]);
  });

  it("a burst of 8 pushes: every GitHub deployment ends in a final state, none left queued or in progress, one live", async () => {
    const shas: string[] = [];
    const entries: string[] = [];
    for (let i = 0; i < 8; i++) {
      const sha = await repo.commit({ FAIL: null, "index.html": `burst ${i}` });
      shas.push(sha);
      entries.push(await push(sha));
    }
    await until("every entry of the burst to have its turn", async () => {
      const rows = await tdb.database.db.select().from(deploys).where(inArray(deploys.entry, entries));
      return entries.every((e) => rows.some((r) => r.entry === e && (FINAL_STATUSES as readonly string[]).includes(r.status)));
    });
    const finals: string[] = [];
    for (const sha of shas) {
      const ds = await settled(sha);
      for (const d of ds) {
        expectInOrder(d);
        finals.push(d.written.at(-1)!);
      }
    }
    // The superseded ones say what went live in their place, as inactive (not a red error).
    expect(finals.some((f) => /^inactive: Superseded(: [0-9a-f]{7} was deployed to app instead| by a newer entry)/.test(f))).toBe(true);
    for (const f of finals) expect(f).toMatch(/^(success: (Already live|Live) on app|inactive: (Superseded|Replaced by))/);
    // Nothing on GitHub is left queued or in progress, and each deployq deployment is one GitHub deployment.
    for (const d of fake.deployments) expect(FINAL, `${d.ref}: ${JSON.stringify(fake.deploymentStatusesOf(d.id).map(said))}`).toContain(fake.deploymentStatusesOf(d.id).at(-1)?.state);
    const markers = fake.deployments.map((d) => (d.payload as { deployq: string }).deployq);
    expect(new Set(markers).size).toBe(markers.length);
    // The head is the one live deployment: the earlier live one (v2) was marked inactive.
    await allSent();
    expect(activeOnGithub().map((x) => x.ref)).toEqual([shas.at(-1)]);
  });

  it("a rollback: a new deployment of the commit put back, live; the one it replaced inactive", async () => {
    const from = await repo.commit({ "index.html": "before the rollback" });
    const fromEntry = await push(from);
    await deployOf(fromEntry, "succeeded");
    await settled(from);
    const layout = queueLayout(ws.queuesDir);
    const id = randomUUID();
    const name = entryName(id);
    await writeEntryDurably(layout, layout.deployment("app"), name, { event: "rollback", delivery_id: id, hook_id: "", received_at: new Date().toISOString(), payload: {} });
    await deployOf(name, "succeeded");
    const to = JSON.parse(await readFile(path.join(ws.dir, "apps", "app", "current", ".deployq-release.json"), "utf8")).sha as string;
    expect(to).not.toBe(from);
    const back = (await settled(to, 2)).find((d) => d.entry === name)!;
    expect(back.written).toEqual(["create", `success: Live again on app: rolled back from ${from.slice(0, 7)}`]);
    expect(back.github).toMatchObject({ ref: to, environment: ENVIRONMENT });
    const [replaced] = await settled(from);
    expect(replaced!.written.at(-1)).toBe(`inactive: Rolled back on app: ${to.slice(0, 7)} is live instead`);
    await allSent();
    expect(activeOnGithub().map((x) => x.ref)).toEqual([to]);
  });

  it("a restart with a creation in the outbox whose answer was lost: no second deployment, its statuses go to the first", async () => {
    fake.setMode({ kind: "lose-answer" });
    const c = await repo.commit({ "index.html": "lost answer" });
    const entry = await push(c);
    await deployOf(entry, "succeeded");
    // GitHub created it, but deployq never heard back (a timeout): the creation is still in the outbox.
    await until("GitHub to create c's deployment", async () => fakeDeploymentOf(entry, c).length === 1);
    await until("the creation to time out", async () => (await outboxRows(tdb.database.db)).some((r) => r.kind === "deployment" && r.sha === c && r.result === null && r.attempts > 0));
    await daemon.close();
    const left = (await outboxRows(tdb.database.db)).filter((r) => r.result === null);
    expect(left.some((r) => r.kind === "deployment" && r.sha === c)).toBe(true);
    fake.setMode({ kind: "up" });
    const postsBefore = fake.requests.filter((r) => r.method === "POST" && r.path.endsWith("/deployments")).length;
    daemon = await startDaemon({ settings: ws.settings, role: "serve", logger: silentLogger(), database: tdb.database });
    const [d] = await settled(c);
    expect(fakeDeploymentOf(entry, c)).toHaveLength(1);
    // Found by its marker, not created again.
    expect(fake.requests.filter((r) => r.method === "POST" && r.path.endsWith("/deployments")).length).toBe(postsBefore);
    expect(d!.written).toEqual(["create", "queued: Queued for app", "in_progress: Deploying to app", "success: Live on app"]);
    expect(d!.got.at(-1)!.state).toBe("success");
    await allSent();
    expect(activeOnGithub().map((x) => x.ref)).toEqual([c]);
    expect(await tdb.database.db.select().from(githubOutbox).where(eq(githubOutbox.result, "gave-up"))).toEqual([]);
  });

  it("a token without the Deployments permission (404): the deployment is given up, saying what to fix; deploys go on", async () => {
    fake.setMode({ kind: "fail", status: 404 });
    const created = fake.deployments.length;
    const e = await repo.commit({ "index.html": "no permission" });
    const entry = await push(e);
    await deployOf(entry, "succeeded");
    const [row] = await until("e's deployment row", async () => tdb.database.db.select().from(githubDeployments).where(eq(githubDeployments.sha, e)));
    const rows = await until("e's deployment to be given up", async () => {
      const written = await writtenFor(row!.id);
      return written.length > 0 && FINAL.includes(written.at(-1)!.state) && written.every((r) => r.result === "gave-up") ? written : undefined;
    });
    expect(rows.map((r) => r.kind === "deployment" ? "create" : r.state)).toEqual(["create", "queued", "in_progress", "success"]);
    expect(rows[0]!.lastError).toMatch(/GitHub answered 404: .*"Deployments: read and write"/);
    expect(fake.deployments).toHaveLength(created);
    // Nothing is left waiting for a GitHub that will never take it, and `deployq status` says so.
    await allSent();
    const report = await collectStatus(ws.settings, tdb.database.db);
    expect(report.github).toMatchObject({ backlog: 0, lastError: { gaveUp: true, error: expect.stringMatching(/404/) } });
    fake.setMode({ kind: "up" });
  });
});

/** Without [github] deployments, a token sends commit statuses only. */
describe("GitHub Deployments, off by default", () => {
  let ws: Workspace;
  let tdb: TestDatabase;
  let daemon: Daemon;
  let repo: TestRepo;
  let dir: string;
  let fake: FakeGithub;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "deployq-github-deployments-off-"));
    repo = await createRepo(dir);
    fake = await startFakeGithub();
    ws = await createWorkspace({
      topLevel: "[github]\nwrite_interval_ms = 0\ntimeout_ms = 1000\n",
      env: { GITHUB_TOKEN: fake.token, GITHUB_API_URL: fake.url },
      deployments: followingDeployment("app", repo.bare, `restart = { script = ["true"] }`),
    });
    tdb = await createTestDatabase("pglite");
    daemon = await startDaemon({ settings: ws.settings, role: "serve", logger: silentLogger(), database: tdb.database });
  });
  afterAll(async () => {
    await daemon?.close();
    await tdb?.dispose();
    await fake?.close();
    await ws?.dispose();
    await rm(dir, { recursive: true, force: true });
  });

  it("sends commit statuses and not one deployment request", async () => {
    const v1 = await repo.commit({ "index.html": "v1" });
    const res = await post(daemon.url!, await signedDelivery(pushPayload({ repository: "octo-org/app", after: v1 })));
    expect(res.status).toBe(202);
    await until("v1's success to be sent", async () => fake.statusesOf(v1, "deployq/app").at(-1)?.state === "success");
    await until("the outbox to be empty", async () => (await outboxRows(tdb.database.db)).every((r) => r.result !== null));
    expect(fake.requests.length).toBeGreaterThan(0);
    expect(fake.requests.filter((r) => r.path.includes("/deployments"))).toEqual([]);
    expect(fake.deployments).toEqual([]);
    expect(await tdb.database.db.select().from(githubDeployments)).toEqual([]);
    expect((await outboxRows(tdb.database.db)).every((r) => r.kind === "status")).toBe(true);
  });
});
