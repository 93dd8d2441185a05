import { mkdir, rename, writeFile } from "node:fs/promises";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Daemon, startDaemon } from "../../src/daemon.ts";
import { silentLogger } from "../../src/log.ts";
import { serializeEntry } from "../../src/queue/entry.ts";
import { queueLayout } from "../../src/queue/layout.ts";
import { removePause, writePause } from "../../src/queue/pause.ts";
import { scanStats } from "../../src/queue/scan.ts";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import { entryNames, plannedNames, pushEntry } from "../helpers/load.ts";
import { until } from "../helpers/wait.ts";
import { type Workspace, createWorkspace } from "../helpers/workspace.ts";

const BACKLOG = 3_000;

/**
 * A paused deployment's queue filling up (the router hands it a batch at a time) used to be
 * listed and sorted whole after every batch: quadratic in its backlog (bench/scale.ts found
 * it: 108 names read per entry at 40,000). Paused, it is not read at all; resumed, it is.
 */
describe("a paused deployment's backlog", () => {
  let ws: Workspace;
  let tdb: TestDatabase;
  let daemon: Daemon | undefined;
  beforeAll(async () => {
    ws = await createWorkspace();
    tdb = await createTestDatabase("postgres");
  });
  afterAll(async () => {
    await daemon?.close();
    await tdb?.dispose();
    await ws?.dispose();
  });

  it(`is not listed while paused, however much is handed to it (${BACKLOG} entries), and is once resumed`, async () => {
    const layout = queueLayout(ws.queuesDir);
    await writePause(layout, "api", { reason: "test", by: "test", at: new Date().toISOString() });
    daemon = await startDaemon({ settings: ws.settings, role: "workers", logger: silentLogger(), database: tdb.database });
    const api = layout.deployment("api");
    const staging = path.join(ws.dir, "staging");
    await mkdir(staging);
    const names = plannedNames(BACKLOG);
    for (const name of names) await writeFile(path.join(staging, name), serializeEntry(pushEntry(name)));
    for (const name of names) await rename(path.join(staging, name), path.join(layout.router, name));
    await until(`all ${BACKLOG} handed to api`, async () => (await entryNames(api)).length === BACKLOG, 60_000, 100);
    // The router's own queue was read, of course: many passes, thousands of names.
    expect(scanStats.get(layout.router) ?? 0).toBeGreaterThanOrEqual(BACKLOG);
    expect(scanStats.get(api) ?? 0).toBe(0);

    await removePause(layout, "api");
    // Resumed: the rescan (100 ms here) finds it, and the newest wins (the remote does not exist, so that deploy ends in dead-letter/).
    await until("api's queue taken", async () => (await entryNames(api)).length === 0, 60_000, 100);
    expect(scanStats.get(api) ?? 0).toBeGreaterThanOrEqual(BACKLOG);
  }, 120_000);
});
