import { execFile } from "node:child_process";
import { mkdir, readFile, readdir, rm, stat, writeFile } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Daemon, startDaemon } from "../../src/daemon.ts";
import { silentLogger } from "../../src/log.ts";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import { type SignedRequest, type Workspace, createWorkspace, post, pushPayload, randomSha, signedDelivery } from "../helpers/workspace.ts";

const run = promisify(execFile);
const entries = async (dir: string) => (await readdir(dir)).filter((n) => n.endsWith(".json"));

describe("hostile bodies", () => {
  let ws: Workspace;
  let tdb: TestDatabase;
  let daemon: Daemon;
  beforeAll(async () => {
    ws = await createWorkspace();
    tdb = await createTestDatabase("postgres");
    daemon = await startDaemon({ settings: ws.settings, role: "receiver", logger: silentLogger(), database: tdb.database });
  });
  afterAll(async () => {
    await daemon?.close();
    await tdb?.dispose();
    await ws?.dispose();
  });

  it("answers 400 for JSON nested deeper than any payload, alone: the deliveries in its batch are queued", async () => {
    const deep = `{"ref":"refs/heads/main","repository":{"full_name":"octo-org/api"},"after":"${"5".repeat(40)}","x":${"[".repeat(5000)}${"]".repeat(5000)}}`;
    const good = await Promise.all(Array.from({ length: 15 }, () => signedDelivery(pushPayload({ repository: "octo-org/api", branch: "main", after: randomSha() }))));
    const answers = await Promise.all([post(daemon.url!, await signedDelivery(deep)), ...good.map((g) => post(daemon.url!, g))]);
    expect(answers[0]).toMatchObject({ status: 400, body: { error: expect.stringMatching(/nests deeper than 256 levels/) } });
    for (const a of answers.slice(1)) expect(a.status).toBe(202);
    expect(await entries(path.join(ws.queuesDir, "router"))).toHaveLength(15);
  });

  it("bounds what an entry grows to: a body that indentation would multiply is stored compact", async () => {
    // Arrays nested 250 deep, many times over: pretty-printed, each level is a line indented by its depth.
    const nest = `${"[".repeat(250)}1${"]".repeat(250)}`;
    const body = `{"ref":"refs/heads/main","repository":{"full_name":"octo-org/web"},"after":"${"6".repeat(40)}","x":[${Array.from({ length: 120 }, () => nest).join(",")}]}`;
    const res = await post(daemon.url!, await signedDelivery(body));
    expect(res.status).toBe(202);
    const file = path.join(ws.queuesDir, "router", res.body.queued as string);
    const size = (await stat(file)).size;
    expect(size).toBeLessThanOrEqual(body.length * 4 + 64 * 1024 + 1024);
    expect(JSON.parse(await readFile(file, "utf8")).payload.x).toHaveLength(120);
  });
});

/**
 * The queue root on a small tmpfs (as root: CI runs as root) that a batch fills part way:
 * some of its files are written, then one fails, and the batch's transaction rolls back.
 */
describe("a batch whose files do not all fit", () => {
  let ws: Workspace;
  let tdb: TestDatabase;
  let daemon: Daemon;
  let filler: string;
  beforeAll(async () => {
    ws = await createWorkspace();
    await mkdir(ws.queuesDir, { recursive: true });
    await run("mount", ["-t", "tmpfs", "-o", "size=8m", "tmpfs", ws.queuesDir]);
    tdb = await createTestDatabase("postgres");
    daemon = await startDaemon({ settings: ws.settings, role: "receiver", logger: silentLogger(), database: tdb.database });
    filler = path.join(ws.queuesDir, "filler");
  });
  afterAll(async () => {
    await daemon?.close();
    await tdb?.dispose();
    if (ws) await run("umount", [ws.queuesDir]).catch(() => run("umount", ["-l", ws.queuesDir]));
    await ws?.dispose();
  });

  it("leaves no file behind a 503 (nothing is queued), and each redelivery is queued exactly once", async () => {
    // Room for about two of the ten ~300 KB entries.
    const { bavail, bsize } = await import("node:fs/promises").then((fs) => fs.statfs(ws.queuesDir));
    await writeFile(filler, Buffer.alloc(Math.max(0, bavail * bsize - 700 * 1024)));
    const requests: SignedRequest[] = await Promise.all(
      Array.from({ length: 10 }, () => signedDelivery({ ...pushPayload({ repository: "octo-org/api", branch: "main", after: randomSha() }), padding: "x".repeat(300 * 1024) })),
    );
    const answers = await Promise.all(requests.map((r) => post(daemon.url!, r)));
    const accepted = answers.filter((a) => a.status === 202);
    const refused = answers.filter((a) => a.status === 503);
    expect(accepted.length + refused.length).toBe(10);
    expect(refused.length).toBeGreaterThan(0);
    const router = path.join(ws.queuesDir, "router");
    // /healthz says the queue root is full (its directory is still writable).
    const full = await fetch(`${daemon.url}/healthz`);
    expect(full.status).toBe(503);
    expect(((await full.json()) as { checks: Record<string, string> }).checks.queues).toMatch(/is full \(\d+ KB free\): deliveries get 503 until space is freed/);
    // Exactly the acknowledged entries, nothing for a 503.
    expect((await entries(router)).sort()).toEqual(accepted.map((a) => a.body.queued as string).sort());

    await rm(filler);
    expect((await fetch(`${daemon.url}/healthz`)).status).toBe(200);
    const again = await Promise.all(requests.map((r) => post(daemon.url!, r)));
    expect(again.map((a) => a.status).sort()).toEqual([...accepted.map(() => 200), ...refused.map(() => 202)].sort());
    expect(await entries(router)).toHaveLength(10);
    const ids = new Set<string>();
    for (const name of await entries(router)) ids.add(JSON.parse(await readFile(path.join(router, name), "utf8")).delivery_id);
    expect(ids.size).toBe(10);
  });
});
