import { randomUUID } from "node:crypto";
import { mkdir, writeFile } from "node:fs/promises";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startDaemon } from "../../src/daemon.ts";
import { deliveries } from "../../src/db/schema.ts";
import { silentLogger } from "../../src/log.ts";
import { entryName } from "../../src/queue/entry-name.ts";
import { serializeEntry } from "../../src/queue/entry.ts";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import { type Workspace, createWorkspace, post, pushPayload, signedDelivery } from "../helpers/workspace.ts";

/** An entry name as a process whose clock is `aheadMs` in front of this one would have issued it. */
const issuedAhead = (aheadMs: number) => entryName(randomUUID(), BigInt(Date.now() + aheadMs) * 1_000_000n);

/**
 * A restarted receiver whose clock is behind the one before it (an NTP step, a VM restored
 * from a snapshot) must still name its entries after every entry already issued, or an
 * older push sorts after a newer one.
 */
describe("entry names across a restart with a clock that is behind", () => {
  let ws: Workspace;
  let tdb: TestDatabase;
  beforeAll(async () => {
    ws = await createWorkspace();
    tdb = await createTestDatabase("postgres");
  });
  afterAll(async () => {
    await tdb?.dispose();
    await ws?.dispose();
  });

  const sendOne = async (url: string) => {
    const res = await post(url, await signedDelivery(pushPayload({ repository: "octo-org/web", branch: "main", after: "4".repeat(40) })));
    expect(res.status).toBe(202);
    return res.body.queued as string;
  };

  it("starts after the newest name in any queue on disk (here a dead letter), and after the newest the database recorded", async () => {
    const planted = issuedAhead(3_600_000);
    const deadWeb = path.join(ws.queuesDir, "dead-letter", "web");
    await mkdir(deadWeb, { recursive: true });
    await writeFile(
      path.join(deadWeb, planted),
      serializeEntry({ event: "push", delivery_id: planted.slice(20, -5), hook_id: "", received_at: new Date().toISOString(), payload: {} }),
    );
    let daemon = await startDaemon({ settings: ws.settings, role: "receiver", logger: silentLogger(), database: tdb.database });
    try {
      const first = await sendOne(daemon.url!);
      expect(first > planted, `${first} sorts after ${planted}`).toBe(true);
    } finally {
      await daemon.close();
    }

    // Handled and gone from disk: only the deliveries table remembers it.
    const recorded = issuedAhead(7_200_000);
    await tdb.database.db.insert(deliveries).values({ hookId: "1", deliveryId: recorded.slice(20, -5), event: "push", entry: recorded, outcome: "routed" });
    daemon = await startDaemon({ settings: ws.settings, role: "receiver", logger: silentLogger(), database: tdb.database });
    try {
      const next = await sendOne(daemon.url!);
      expect(next > recorded, `${next} sorts after ${recorded}`).toBe(true);
    } finally {
      await daemon.close();
    }
  });
});
