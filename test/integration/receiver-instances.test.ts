import { readFile } from "node:fs/promises";
import path from "node:path";
import { sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { deliveries } from "../../src/db/schema.ts";
import { queueLayout } from "../../src/queue/layout.ts";
import { ensureQueueDirs, writeEntryDurably } from "../../src/queue/write.ts";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import { entryNames, plannedNames, pushEntry } from "../helpers/load.ts";
import { type Spawned, spawnDeployq } from "../helpers/processes.ts";
import { type Workspace, createWorkspace, post, pushPayload, signedDelivery } from "../helpers/workspace.ts";

const ORPHANS = 40;
const HOOK_ID = "777";

/**
 * pm2 starts the receiver's two cluster-mode instances at the same moment (ecosystem.config.cjs),
 * and during a rolling reload a new one starts while the other serves. Here: two `deployq
 * receiver` processes started at once against a database that is not migrated yet and a
 * router/ full of entries without a row (a receiver died between its rename and its commit).
 */
describe("two receivers starting at once on one queue root and one Postgres", () => {
  let tdb: TestDatabase;
  let ws: Workspace;
  const running: Spawned[] = [];

  beforeAll(async () => {
    tdb = await createTestDatabase("postgres");
    // As before the first start: no schema at all, so both receivers find migrations to run.
    await tdb.database.db.execute(sql.raw("drop schema if exists drizzle cascade; drop schema public cascade; create schema public"));
    ws = await createWorkspace({ port: 3400 });
  });
  afterAll(async () => {
    for (const p of running) {
      if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill("SIGKILL");
      await p.exited;
    }
    await tdb?.dispose();
    await ws?.dispose();
  });

  it("both migrate and adopt the same orphans without an error or a second row, and announce the port each really listens on", { timeout: 120_000 }, async () => {
    const layout = queueLayout(ws.queuesDir);
    await ensureQueueDirs(layout);
    const names = plannedNames(ORPHANS);
    const entries = new Map(names.map((n) => [n, pushEntry(n, { repository: "octo-org/nothing", hookId: HOOK_ID })]));
    for (const [name, entry] of entries) await writeEntryDurably(layout, layout.router, name, entry);

    // --port 0 (over the file's 3400): each picks a free port, and says which.
    const env = { ...ws.env, DATABASE_URL: tdb.url, DEPLOYQ_CONFIG: ws.configPath, DEPLOYQ_PORT: "3400" };
    const receivers = [spawnDeployq(["receiver", "--port", "0"], env), spawnDeployq(["receiver", "--port", "0"], env)];
    running.push(...receivers);
    const urls: string[] = [];
    for (const r of receivers) {
      await r.waitFor(/listening on http:\/\/\S+ /);
      const url = /listening on (http:\/\/\S+) /.exec(r.output())![1]!;
      expect(url).not.toMatch(/:(0|3400)$/);
      urls.push(url);
    }

    // Every orphan got exactly one row, however the two divided the work between them.
    const rows = await tdb.database.db.select().from(deliveries);
    expect(rows.map((r) => r.entry).sort()).toEqual(names);
    for (const r of rows) expect(r).toMatchObject({ hookId: HOOK_ID, outcome: "queued" });
    const adopted = receivers.map((r) => [...r.output().matchAll(/"entries":(\d+)/g)].reduce((sum, m) => sum + Number(m[1]), 0));
    expect(adopted[0]! + adopted[1]!, `adopted by each: ${adopted.join(", ")}`).toBe(ORPHANS);
    expect(await entryNames(layout.router)).toEqual(names);

    // Each serves: a redelivery of an orphan is a duplicate, a new delivery is queued once.
    for (const [i, url] of urls.entries()) {
      const name = names[i]!;
      const entry = entries.get(name)!;
      expect(await post(url, await signedDelivery(entry.payload, { delivery: entry.delivery_id, hookId: HOOK_ID }))).toMatchObject({ status: 200, body: { duplicate: true } });
      const fresh = await post(url, await signedDelivery(pushPayload({ repository: "octo-org/web", branch: "main" })));
      expect(fresh.status).toBe(202);
    }
    expect(await entryNames(layout.router)).toHaveLength(ORPHANS + 2);

    // Each announced itself in data_dir/run/<pid>.json with the address it really listens on.
    for (const [i, r] of receivers.entries()) {
      const file = path.join(ws.settings.dataDir, "run", `${r.child.pid}.json`);
      expect(JSON.parse(await readFile(file, "utf8"))).toEqual({ pid: r.child.pid, role: "receiver", url: urls[i] });
    }

    for (const r of receivers) r.child.kill("SIGINT");
    for (const r of receivers) expect(await r.exited).toEqual({ code: null, signal: "SIGINT" });
    for (const r of receivers) {
      await expect(readFile(path.join(ws.settings.dataDir, "run", `${r.child.pid}.json`))).rejects.toThrow(/ENOENT/);
      expect(r.output()).not.toMatch(/"level":(50|60)/);
    }
  });
});
