import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { eq } from "drizzle-orm";
import { githubDeployments } from "../../src/db/schema.ts";
import {
  type DeploymentState,
  type DeploymentStatusWrite,
  claimSenderLease,
  enqueueGithubWrites,
  enqueueStatuses,
  githubDeploymentId,
  markDeploymentCreated,
  markGaveUp,
  markSent,
  newestUnsent,
  outboxRows,
  outboxStatus,
  pruneOutbox,
  releaseSenderLease,
} from "../../src/github/outbox.ts";
import type { StatusRow } from "../../src/github/statuses.ts";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";

const row = (sha: string, context: string, state: StatusRow["state"], description: string): StatusRow => ({
  repository: "octo-org/app",
  sha,
  context,
  state,
  description,
  targetUrl: null,
  deployment: context.slice("deployq/".length),
  deployId: null,
});

/** The outbox's queries, on both databases deployq runs on. */
describe.each(["postgres", "pglite"] as const)("the GitHub outbox on %s", (kind) => {
  let tdb: TestDatabase;
  const a = "a".repeat(40);
  const b = "b".repeat(40);

  beforeAll(async () => {
    tdb = await createTestDatabase(kind);
  });
  afterAll(async () => {
    await tdb?.dispose();
  });

  it("offers the newest unsent state of each key, collapses the older ones into it once sent, and keeps what came after", async () => {
    const db = tdb.database.db;
    await enqueueStatuses(db, [row(a, "deployq/app", "pending", "Queued"), row(a, "deployq/app", "pending", "Deploying"), row(a, "deployq/web", "pending", "Queued"), row(b, "deployq/app", "pending", "Queued")]);
    await enqueueStatuses(db, [row(a, "deployq/app", "success", "Live")]);
    const offered = await newestUnsent(db, 10);
    expect(offered.map((r) => `${r.sha[0]} ${r.context} ${r.description}`)).toEqual(["a deployq/web Queued", "b deployq/app Queued", "a deployq/app Live"]);

    const live = offered.find((r) => r.description === "Live")!;
    // A state written while the send is under way stays to be sent after it.
    await enqueueStatuses(db, [row(a, "deployq/app", "failure", "Rolled back")]);
    await markSent(db, live);
    const rows = (await outboxRows(db)).filter((r) => r.sha === a && r.context === "deployq/app");
    expect(rows.map((r) => `${r.description}: ${r.result}`)).toEqual(["Queued: collapsed", "Deploying: collapsed", "Live: sent", "Rolled back: null"]);
    expect((await newestUnsent(db, 10)).map((r) => r.description)).toEqual(["Queued", "Queued", "Rolled back"]);

    const web = (await newestUnsent(db, 10))[0]!;
    await markGaveUp(db, web, "GitHub answered 404: give the token access");
    const status = await outboxStatus(db);
    expect(status).toMatchObject({ backlog: 2, lastError: { context: "deployq/web", gaveUp: true, error: "GitHub answered 404: give the token access" } });
  });

  const dep = (entry: string, sha: string, state: DeploymentState, description: string, replaces?: string): DeploymentStatusWrite => ({
    kind: "deployment_status",
    target: { deployment: "app", entry, sha, repository: "octo-org/app", context: "deployq/app", environment: "production", productionEnvironment: true },
    state,
    description,
    logUrl: null,
    environmentUrl: null,
    deployId: null,
    ...(replaces ? { replaces: { description: replaces } } : {}),
  });
  const c = "c".repeat(40);
  const d = "d".repeat(40);
  const ofKey = async (key: string) => (await outboxRows(tdb.database.db)).filter((r) => r.key === key).map((r) => `${r.state}: ${r.result}`);

  it("a deployment's creation is sent first, alone and once, never collapsed; its statuses after it, collapsed", async () => {
    const db = tdb.database.db;
    await db.transaction((tx) => enqueueGithubWrites(tx as unknown as typeof db, [dep("e1", c, "queued", "Queued")]));
    // Written again (a second hand-over after a crash, a retry): still one deployment, one creation.
    await db.transaction((tx) => enqueueGithubWrites(tx as unknown as typeof db, [dep("e1", c, "in_progress", "Deploying")]));
    await db.transaction((tx) => enqueueGithubWrites(tx as unknown as typeof db, [dep("e1", c, "success", "Live", "Replaced")]));
    const [row] = await db.select().from(githubDeployments).where(eq(githubDeployments.sha, c));
    const key = `deployment:${row!.id}`;
    expect(row).toMatchObject({ entry: "e1", environment: "production", live: true, githubId: null });
    const first = (await newestUnsent(db, 10)).filter((r) => r.key === key);
    expect(first.map((r) => `${r.kind} ${r.state}`)).toEqual(["deployment create"]);
    await markDeploymentCreated(db, first[0]!, 4242);
    expect(await githubDeploymentId(db, row!.id)).toBe(4242);
    expect(await ofKey(key)).toEqual(["create: sent", "queued: null", "in_progress: null", "success: null"]);
    const next = (await newestUnsent(db, 10)).filter((r) => r.key === key);
    expect(next.map((r) => r.state)).toEqual(["success"]);
    await markSent(db, next[0]!);
    expect(await ofKey(key)).toEqual(["create: sent", "queued: collapsed", "in_progress: collapsed", "success: sent"]);

    // The next success: the previous live deployment gets `inactive`, after its own states.
    await db.transaction((tx) => enqueueGithubWrites(tx as unknown as typeof db, [dep("e2", d, "success", "Live", `Replaced by ${d.slice(0, 7)}`)]));
    expect(await ofKey(key)).toEqual(["create: sent", "queued: collapsed", "in_progress: collapsed", "success: sent", "inactive: null"]);
    const live = await db.select().from(githubDeployments).where(eq(githubDeployments.live, true));
    expect(live.map((r) => r.sha)).toEqual([d]);
  });

  it("a refused creation gives up every row of its deployment", async () => {
    const db = tdb.database.db;
    const e = "e".repeat(40);
    await db.transaction((tx) => enqueueGithubWrites(tx as unknown as typeof db, [dep("e3", e, "queued", "Queued"), dep("e3", e, "in_progress", "Deploying")]));
    const [row] = await db.select().from(githubDeployments).where(eq(githubDeployments.sha, e));
    const creation = (await newestUnsent(db, 10)).find((r) => r.key === `deployment:${row!.id}`)!;
    expect(creation.kind).toBe("deployment");
    await markGaveUp(db, creation, "GitHub answered 404: give the token \"Deployments: read and write\"");
    expect(await ofKey(`deployment:${row!.id}`)).toEqual(["create: gave-up", "queued: gave-up", "in_progress: gave-up"]);
    expect((await outboxStatus(db)).lastError).toMatchObject({ kind: "deployment", sha: e, gaveUp: true });
    // Pruned: the deployments nothing waits for and that are not live (c still has its inactive to send, d is live).
    await pruneOutbox(db, 0);
    expect((await db.select().from(githubDeployments)).map((r) => r.sha).sort()).toEqual([c, d]);
    expect((await outboxRows(db)).every((r) => r.result === null)).toBe(true);
  });

  it("lets one sender hold the lease at a time", async () => {
    const db = tdb.database.db;
    expect(await claimSenderLease(db, "one", 60_000)).toBe(true);
    expect(await claimSenderLease(db, "two", 60_000)).toBe(false);
    expect(await claimSenderLease(db, "one", 60_000)).toBe(true);
    expect(await claimSenderLease(db, "two", 60_000, "one")).toBe(true);
    await releaseSenderLease(db, "two");
    expect(await claimSenderLease(db, "one", 60_000)).toBe(true);
  });
});
