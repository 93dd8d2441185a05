import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { claimSenderLease, enqueueStatuses, markGaveUp, markSent, newestUnsent, outboxRows, outboxStatus, releaseSenderLease } from "../../src/github/outbox.ts";
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
