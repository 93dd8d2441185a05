import { execFile } from "node:child_process";
import { mkdir, mkdtemp, readFile, readdir, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { eq } from "drizzle-orm";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startDaemon } from "../../src/daemon.ts";
import { deliveries, deploys } from "../../src/db/schema.ts";
import { serializeEntry } from "../../src/queue/entry.ts";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import { LogCollector } from "../helpers/log-collector.ts";
import { plannedNames, pushEntry } from "../helpers/load.ts";
import { until } from "../helpers/wait.ts";
import { type Workspace, createWorkspace } from "../helpers/workspace.ts";

const run = promisify(execFile);
/** What an outside file holds, that must never reach an error, the database or a log line. */
const SECRET_CONTENT = "root:x:0:0:this-must-never-be-quoted";

/**
 * Files that are not entries, planted in a queue: each is moved aside to dead-letter/ with a
 * reason in deployq's own words (never the file's content), never followed, never read
 * through a link, and never blocking the entries behind it.
 */
describe("hostile files in the queues", () => {
  let ws: Workspace;
  let tdb: TestDatabase;
  let outside: string;
  beforeAll(async () => {
    ws = await createWorkspace();
    tdb = await createTestDatabase("postgres");
    outside = await mkdtemp(path.join(tmpdir(), "deployq-outside-"));
  });
  afterAll(async () => {
    await tdb?.dispose();
    await ws?.dispose();
    if (outside) await rm(outside, { recursive: true, force: true });
  });

  it("moves aside a FIFO, a directory, symlinks (dangling, to an outside file, to an outside valid entry) and a truncated entry, and routes what is behind them", async () => {
    const router = path.join(ws.queuesDir, "router");
    const api = path.join(ws.queuesDir, "deployments", "api");
    await mkdir(router, { recursive: true });
    await mkdir(api, { recursive: true });
    const [fifo, directory, dangling, toSecret, toEntry, truncated, valid, apiFifo, apiValid] = plannedNames(9);
    await run("mkfifo", [path.join(router, fifo!)]);
    await mkdir(path.join(router, directory!));
    await symlink(path.join(outside, "gone.json"), path.join(router, dangling!));
    await writeFile(path.join(outside, "secret"), `${SECRET_CONTENT}\n`);
    await symlink(path.join(outside, "secret"), path.join(router, toSecret!));
    await writeFile(path.join(outside, "entry.json"), serializeEntry(pushEntry(toEntry!, { repository: "octo-org/web" })));
    await symlink(path.join(outside, "entry.json"), path.join(router, toEntry!));
    await writeFile(path.join(router, truncated!), `{"event":"push","delivery_id":"${SECRET_CONTENT}`);
    await writeFile(path.join(router, valid!), serializeEntry(pushEntry(valid!, { repository: "octo-org/web" })));
    // And in a deployment's own queue.
    await run("mkfifo", [path.join(api, apiFifo!)]);
    await writeFile(path.join(api, apiValid!), serializeEntry(pushEntry(apiValid!, { repository: "octo-org/api" })));

    const logs = new LogCollector();
    const logger = pino({ level: "debug" }, logs);
    const daemon = await startDaemon({ settings: ws.settings, role: "serve", logger, database: tdb.database });
    try {
      await until("router/ to empty and the valid entry to be routed", async () => {
        const [row] = await tdb.database.db.select().from(deliveries).where(eq(deliveries.entry, valid!));
        return (await readdir(router)).length === 0 && row?.outcome === "routed";
      });
      await until("the api entry behind the FIFO to be handled", async () => (await tdb.database.db.select().from(deploys).where(eq(deploys.entry, apiValid!))).length > 0);
    } finally {
      await daemon.close();
    }

    const dead = path.join(ws.queuesDir, "dead-letter", "router");
    const reasons = new Map<string, string>();
    for (const name of [fifo, directory, dangling, toSecret, toEntry, truncated]) reasons.set(name!, await readFile(path.join(dead, `${name}.error`), "utf8"));
    expect(reasons.get(fifo!)).toMatch(/a FIFO, not an entry/);
    expect(reasons.get(directory!)).toMatch(/a directory, not an entry/);
    for (const link of [dangling, toSecret, toEntry]) expect(reasons.get(link!)).toMatch(/a symbolic link, not an entry/);
    expect(reasons.get(truncated!)).toMatch(/not valid JSON \(\d+ bytes/);
    // The outside valid entry was not routed through the link, and the links still point where they did (moved, not followed).
    expect(await tdb.database.db.select().from(deliveries).where(eq(deliveries.entry, toEntry!))).toMatchObject([{ outcome: "dead-letter" }]);
    expect((await readdir(path.join(ws.queuesDir, "deployments", "web"))).includes(toEntry!)).toBe(false);
    expect(await readFile(path.join(outside, "secret"), "utf8")).toBe(`${SECRET_CONTENT}\n`);
    // (the valid api entry is there too: its remote does not exist, which fails its deploy for good)
    expect(await readdir(path.join(ws.queuesDir, "dead-letter", "api"))).toEqual(expect.arrayContaining([apiFifo!, `${apiFifo}.error`]));
    expect(await readFile(path.join(ws.queuesDir, "dead-letter", "api", `${apiFifo}.error`), "utf8")).toMatch(/a FIFO, not an entry/);

    // Nothing of the outside file's content was quoted anywhere.
    const recorded = JSON.stringify(await tdb.database.db.select().from(deliveries));
    for (const text of [recorded, logs.text, ...reasons.values()]) expect(text).not.toContain("root:x:0:0");
  });
});
