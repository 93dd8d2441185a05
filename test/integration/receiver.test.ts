import { randomUUID } from "node:crypto";
import { readFile, readdir } from "node:fs/promises";
import path from "node:path";
import { eq } from "drizzle-orm";
import { deliveries } from "../../src/db/schema.ts";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Daemon, startDaemon } from "../../src/daemon.ts";
import { silentLogger } from "../../src/log.ts";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import { type Workspace, createWorkspace, listFiles, post, pushPayload, randomSha, signedDelivery } from "../helpers/workspace.ts";

describe.each(["postgres", "pglite"] as const)("receiver on %s", (kind) => {
  let ws: Workspace;
  let tdb: TestDatabase;
  let daemon: Daemon;
  let url: string;

  beforeAll(async () => {
    ws = await createWorkspace();
    tdb = await createTestDatabase(kind);
    // The receiver alone: accepted entries stay in router/ where the test can read them.
    daemon = await startDaemon({ settings: ws.settings, role: "receiver", logger: silentLogger(), database: tdb.database });
    url = daemon.url!;
  });
  afterAll(async () => {
    await daemon?.close();
    await tdb?.dispose();
    await ws?.dispose();
  });

  const routerFiles = () => readdir(path.join(ws.queuesDir, "router"));

  it("queues a signed push durably and answers 202 with the entry name", async () => {
    const sha = randomSha();
    const req = await signedDelivery(pushPayload({ repository: "octo-org/api", branch: "main", after: sha }));
    const res = await post(url, req);
    expect(res.status).toBe(202);
    const name = res.body.queued as string;
    expect(name).toMatch(/^\d{19}-[0-9a-f-]{36}\.json$/);
    expect(name.endsWith(`${req.headers["x-github-delivery"]}.json`)).toBe(true);
    const entry = JSON.parse(await readFile(path.join(ws.queuesDir, "router", name), "utf8"));
    expect(entry).toMatchObject({ event: "push", delivery_id: req.headers["x-github-delivery"], hook_id: "123456", source: "github" });
    expect(entry.payload.after).toBe(sha);
    const rows = await tdb.database.db.select().from(deliveries).where(eq(deliveries.deliveryId, req.headers["x-github-delivery"]!));
    expect(rows).toMatchObject([{ outcome: "queued", entry: name, afterSha: sha, hookId: "123456" }]);
  });
});
