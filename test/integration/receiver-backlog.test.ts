import { readdir } from "node:fs/promises";
import postgres from "postgres";
import { afterEach, describe, expect, it } from "vitest";
import { type Daemon, startDaemon } from "../../src/daemon.ts";
import { deliveries } from "../../src/db/schema.ts";
import { silentLogger } from "../../src/log.ts";
import { queueLayout } from "../../src/queue/layout.ts";
import { ensureQueueDirs, writeEntryDurably } from "../../src/queue/write.ts";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import { plannedNames, pushEntry } from "../helpers/load.ts";
import { until } from "../helpers/wait.ts";
import { type Workspace, createWorkspace, post, pushPayload, randomSha, signedDelivery } from "../helpers/workspace.ts";

const ORPHANS = 1200;
const HOOK_ID = "4242";

/**
 * A receiver killed with a backlog leaves entries in router/ without their rows, and the
 * next one records them at start. It used to do so before it listened (53-102 s with 50,000
 * entries, the port closed meanwhile); now it listens and takes deliveries first, and a
 * redelivery of an entry not recorded yet is known from the entry's name.
 */
describe("receiver restarted with a backlog of unrecorded entries", () => {
  let ws: Workspace | undefined;
  let tdb: TestDatabase | undefined;
  let daemon: Daemon | undefined;
  let blocker: postgres.Sql | undefined;
  let starting: Promise<Daemon> | undefined;
  afterEach(async () => {
    await blocker?.end({ timeout: 1 });
    daemon ??= await starting?.catch(() => undefined);
    await daemon?.close();
    await tdb?.dispose();
    await ws?.dispose();
    ws = tdb = daemon = blocker = starting = undefined;
  });

  it("takes deliveries while it records them, and answers a redelivery of one of them as a duplicate", { timeout: 120_000 }, async () => {
    ws = await createWorkspace();
    tdb = await createTestDatabase("postgres");
    const layout = queueLayout(ws.queuesDir);
    await ensureQueueDirs(layout);
    const names = plannedNames(ORPHANS);
    const entries = names.map((n) => pushEntry(n, { hookId: HOOK_ID }));
    for (const [i, entry] of entries.entries()) await writeEntryDurably(layout, layout.router, names[i]!, entry);

    // Hold the recording up for as long as the test needs: another transaction has inserted
    // (not committed) the first orphan's row, so the receiver's INSERT of its batch waits on it.
    let letGo!: () => void;
    const release = new Promise<void>((resolve) => (letGo = resolve));
    blocker = postgres(tdb.url!, { max: 1, onnotice: () => {} });
    const held: Promise<unknown> = blocker.begin(async (tx) => {
      await tx`insert into deliveries (hook_id, delivery_id, event, received_at, outcome) values (${HOOK_ID}, ${entries[0]!.delivery_id}, 'push', now(), 'queued')`;
      await release;
      throw new Error("rolled back on purpose");
    });
    held.catch(() => {}); // awaited below; a failing test must not leave it unhandled

    let url: string | undefined;
    let started = false;
    starting = startDaemon({ settings: ws.settings, role: "receiver", logger: silentLogger(), database: tdb.database, onListening: (u) => (url = u) });
    void starting.then(() => (started = true), () => {});
    await until("the receiver to listen", async () => url);

    // An orphan of the first batch, whose row cannot be recorded yet.
    const orphan = entries[1]!;
    const redelivery = await signedDelivery(orphan.payload, { delivery: orphan.delivery_id, hookId: HOOK_ID });
    const answer = await until("the receiver to take deliveries", async () => {
      const res = await post(url!, redelivery);
      return res.status === 503 ? undefined : res;
    });
    expect(answer).toMatchObject({ status: 200, body: { duplicate: true } });
    const fresh = await post(url!, await signedDelivery(pushPayload({ repository: "octo-org/api", after: randomSha() }), { hookId: HOOK_ID }));
    expect(fresh.status).toBe(202);
    // Still recording: the start has not finished.
    expect(started).toBe(false);
    expect(await tdb.database.db.$count(deliveries)).toBe(1);

    letGo();
    await expect(held).rejects.toThrow(/on purpose/);
    daemon = await starting;
    const rows = await tdb.database.db.select().from(deliveries);
    expect(rows).toHaveLength(ORPHANS + 1);
    // Once recorded, the same redelivery is a duplicate by its row; nothing was queued twice.
    expect(await post(daemon.url!, redelivery)).toMatchObject({ status: 200, body: { duplicate: true } });
    expect(await readdir(layout.router)).toHaveLength(ORPHANS + 1);
  });
});
