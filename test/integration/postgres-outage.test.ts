import { readFile, readdir } from "node:fs/promises";
import { createRequire } from "node:module";
import net from "node:net";
import path from "node:path";
import postgres from "postgres";
import { afterEach, describe, expect, it } from "vitest";
import { type Daemon, startDaemon } from "../../src/daemon.ts";
import { parseEntryName } from "../../src/queue/entry-name.ts";
import { ADMIN_DATABASE_URL, type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import { silentLogger } from "../../src/log.ts";
import { type PrivatePostgres, createPrivatePostgres } from "../helpers/private-postgres.ts";
import { type Spawned, spawnDeployq } from "../helpers/processes.ts";
import { isRunning, until } from "../helpers/wait.ts";
import { type SignedRequest, type Workspace, createWorkspace, post, pushPayload, randomSha, signedDelivery } from "../helpers/workspace.ts";

/** A promise's outcome, or "hang" if it has none within `ms`: a query that never settles is the failure here. */
async function settled<T>(p: Promise<T>, ms = 5000): Promise<string> {
  let timer: NodeJS.Timeout | undefined;
  const hang = new Promise<string>((resolve) => (timer = setTimeout(() => resolve("hang"), ms)));
  try {
    return await Promise.race([p.then(() => "ok", (err: { code?: string }) => `error ${err.code ?? String(err)}`), hang]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * postgres.js 3.4.9 as published: a backend that dies under a transaction leaves its
 * queries in the connection, and the pool never answers again (porsager/postgres#1208 and
 * its neighbours); scripts/patch-postgres.mjs (npm's postinstall) mends it. Each case
 * kills only a backend it opened itself, on the shared test server.
 */
describe("the Postgres driver when a backend dies", () => {
  const clients: postgres.Sql[] = [];
  const client = (max: number) => {
    const sql = postgres(ADMIN_DATABASE_URL, { max, onnotice: () => {} });
    clients.push(sql);
    return sql;
  };
  afterEach(async () => {
    await Promise.all(clients.splice(0).map((c) => c.end({ timeout: 1 })));
  });

  it("is the patched 3.4.9", async () => {
    const root = path.dirname(path.dirname(path.dirname(createRequire(import.meta.url).resolve("postgres"))));
    expect(JSON.parse(await readFile(path.join(root, "package.json"), "utf8")).version).toBe("3.4.9");
    for (const file of ["src/connection.js", "cjs/src/connection.js", "src/index.js", "cjs/src/index.js"]) {
      expect(await readFile(path.join(root, file), "utf8"), file).toContain("deployq: patched");
    }
  });

  it("rejects a transaction whose backend was terminated, and the pool answers again at once", async () => {
    const sql = client(1);
    const killer = client(1);
    const transaction = sql.begin(async (tx) => {
      const [row] = await tx<{ pid: number }[]>`select pg_backend_pid() as pid`;
      await killer`select pg_terminate_backend(${row!.pid})`;
      await tx`select 1`;
    });
    expect(await settled(transaction)).toMatch(/^error /);
    // Unpatched: the first query fails with the dead backend's 57P01, and every one after it never settles.
    for (let i = 0; i < 3; i++) expect(await settled(sql`select ${i}::int as i`), `query ${i}`).toBe("ok");
    expect(await settled(sql.begin((tx) => tx`select 1`))).toBe("ok");
  });

  it("settles every round of killed transactions, each followed by a query that works", async () => {
    const sql = client(1);
    const killer = client(1);
    for (let round = 0; round < 4; round++) {
      const killed = sql.begin(async (tx) => {
        const [row] = await tx<{ pid: number }[]>`select pg_backend_pid() as pid`;
        await killer`select pg_terminate_backend(${row!.pid})`;
        await tx`select 1`;
      });
      expect(await settled(killed), `round ${round}`).toBe("error CONNECTION_CLOSED");
      expect(await settled(sql`select 1`), `round ${round}`).toBe("ok");
    }
  });

  it("rejects queries on a reserved connection whose backend died, and keeps it out of the pool once released (#1208, #1199)", async () => {
    const sql = client(2);
    const killer = client(1);
    const reserved = await sql.reserve();
    const [row] = await reserved<{ pid: number }[]>`select pg_backend_pid() as pid`;
    await killer`select pg_terminate_backend(${row!.pid})`;
    expect(await settled(reserved`select 1`)).toMatch(/^error /);
    // Unpatched: never settles (or, under load, throws from a timer and ends the process).
    expect(await settled(reserved`select 1`)).toBe("error CONNECTION_CLOSED");
    reserved.release();
    for (let i = 0; i < 3; i++) expect(await settled(sql`select 1`), `query ${i}`).toBe("ok");
  });
});

/** A TCP proxy to the test server that can stop passing bytes, as a hung server or a partitioned network would. */
async function startProxy(target: URL): Promise<{ url: string; hang(): void; close(): Promise<void> }> {
  let hanging = false;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    sockets.add(client);
    client.on("close", () => sockets.delete(client));
    client.on("error", () => {});
    if (hanging) return; // accepted, and never answered
    const upstream = net.connect(Number(target.port || 5432), target.hostname);
    sockets.add(upstream);
    upstream.on("close", () => sockets.delete(upstream));
    upstream.on("error", () => client.destroy());
    client.on("error", () => upstream.destroy());
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  return {
    url: `postgres://${target.username}@127.0.0.1:${port}`,
    hang() {
      hanging = true;
      // Connections stay open, and nothing more passes either way.
      for (const s of sockets) {
        s.unpipe();
        s.pause();
      }
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

describe("receiver when Postgres hangs", () => {
  let daemon: Daemon | undefined;
  let ws: Workspace | undefined;
  let tdb: TestDatabase | undefined;
  let proxy: Awaited<ReturnType<typeof startProxy>> | undefined;
  afterEach(async () => {
    await daemon?.close();
    await proxy?.close();
    await tdb?.dispose();
    await ws?.dispose();
    daemon = ws = tdb = proxy = undefined;
  });

  it("answers 503 by its deadline, well within GitHub's 10 s, and leaves nothing queued", async () => {
    tdb = await createTestDatabase("postgres");
    ws = await createWorkspace();
    const direct = new URL(tdb.url!);
    proxy = await startProxy(direct);
    const databaseUrl = `${proxy.url}${direct.pathname}`;
    const settings = { ...ws.settings, secrets: { ...ws.settings.secrets, databaseUrl } };
    daemon = await startDaemon({ settings, role: "receiver", logger: silentLogger() });
    const first = await post(daemon.url!, await signedDelivery(pushPayload({ repository: "octo-org/api", after: randomSha() })));
    expect(first.status).toBe(202);

    proxy.hang();
    const started = Date.now();
    const res = await post(daemon.url!, await signedDelivery(pushPayload({ repository: "octo-org/api", after: randomSha() })));
    const tookMs = Date.now() - started;
    expect(res.status).toBe(503);
    expect(String(res.body.error)).toMatch(/did not commit within 5 s .*nothing was queued: redeliver it/);
    // The deadline is 5 s; without it the answer waited for the driver (connect_timeout, or for ever on an open connection).
    expect(tookMs).toBeLessThan(9000);
    const names = await readdir(path.join(ws.queuesDir, "router"));
    expect(names).toEqual([first.body.queued]);
  });
});

interface Sent {
  delivery: string;
  request: SignedRequest;
  status: number;
  ms: number;
}

/**
 * A real Postgres of the test's own, crashed (`pg_ctl -m immediate`) and restarted under a
 * `deployq receiver` process that GitHub-like senders keep busy: before the fix the
 * receiver exited when Postgres was down at start, and a crash killed it with postgres.js's
 * uncaught TypeError or left its pool hung.
 */
describe("receiver through Postgres outages", () => {
  let pg: PrivatePostgres | undefined;
  let ws: Workspace | undefined;
  let receiver: Spawned | undefined;
  afterEach(async () => {
    if (receiver && receiver.child.exitCode === null && receiver.child.signalCode === null) receiver.child.kill("SIGKILL");
    await receiver?.exited;
    await pg?.dispose();
    await ws?.dispose();
    receiver = pg = ws = undefined;
  });

  it("starts while Postgres is down, answers 503 until it is up, rides out crashes without exiting, and loses or doubles nothing", { timeout: 180_000 }, async () => {
    pg = await createPrivatePostgres();
    ws = await createWorkspace();
    receiver = spawnDeployq(["receiver", "--port", "0"], { ...ws.env, DATABASE_URL: pg.url, DEPLOYQ_CONFIG: ws.configPath });
    const announce = path.join(ws.settings.dataDir, "run", `${receiver.child.pid}.json`);
    const url = await until("the receiver to listen", async () => {
      try {
        return (JSON.parse(await readFile(announce, "utf8")) as { url: string }).url;
      } catch {
        return undefined;
      }
    });

    // Down at start: it listens anyway, and says why it takes nothing: "not reached yet"
    // until its first attempt has failed (under load, after the listen), then why not.
    const healthOf = async () => {
      const res = await fetch(`${url}/healthz`);
      return { status: res.status, database: ((await res.json()) as { checks: Record<string, string> }).checks.database };
    };
    const first = await healthOf();
    expect(first.status).toBe(503);
    expect(first.database).toMatch(/not reached yet|not reachable/);
    const failed = await until("the first connection attempt to have failed", async () => {
      const h = await healthOf();
      return h.database?.includes("not reachable") ? h : undefined;
    });
    expect(failed.status).toBe(503);
    const early = await signedDelivery(pushPayload({ repository: "octo-org/api", after: randomSha() }));
    const refused = await post(url, early);
    expect(refused).toMatchObject({ status: 503, body: { error: expect.stringMatching(/^deployq is starting: the database .* is not reachable.*nothing was queued/) } });
    expect(await readdir(path.join(ws.queuesDir, "router"))).toEqual([]);

    await pg.start();
    // Redelivered until taken, as an admin would: it is queued once.
    await until("the receiver to take deliveries once Postgres is up", async () => (await post(url, early)).status === 202, 60_000, 200);
    await receiver.waitFor("listening on");

    const sent: Sent[] = [];
    let stop = false;
    const sender = async () => {
      while (!stop) {
        const request = await signedDelivery(pushPayload({ repository: "octo-org/api", after: randomSha() }));
        const started = performance.now();
        const res = await post(url, request);
        sent.push({ delivery: request.headers["x-github-delivery"]!, request, status: res.status, ms: performance.now() - started });
      }
    };
    const senders = Array.from({ length: 6 }, sender);
    const count = (status: number, from: number) => sent.slice(from).filter((s) => s.status === status).length;
    for (let round = 0; round < 3; round++) {
      let mark = sent.length;
      await until(`round ${round}: deliveries queued before the crash`, async () => count(202, mark) >= 20);
      mark = sent.length;
      await pg.crash();
      await until(`round ${round}: 503s while Postgres is down`, async () => count(503, mark) >= 20);
      mark = sent.length;
      await pg.start();
      await until(`round ${round}: deliveries queued again after the restart`, async () => count(202, mark) >= 20, 60_000);
    }
    stop = true;
    await Promise.all(senders);

    expect(await isRunning(receiver.child.pid!)).toBe(true);
    expect(receiver.output()).not.toMatch(/TypeError|uncaught/i);
    expect(new Set(sent.map((s) => s.status))).toEqual(new Set([202, 503]));
    const slowest = Math.max(...sent.map((s) => s.ms));
    expect(slowest, "GitHub gives up after 10 s").toBeLessThan(10_000);

    // Everything refused is redelivered: queued now, or (its COMMIT's answer lost) known.
    for (const s of sent.filter((x) => x.status === 503)) {
      const again = await post(url, s.request);
      expect([202, 200], JSON.stringify(again.body)).toContain(again.status);
    }
    // Every delivery ever answered has exactly one entry, and exactly one row.
    const entries = (await readdir(path.join(ws.queuesDir, "router"))).map((n) => parseEntryName(n)!.deliveryId);
    const all = [early.headers["x-github-delivery"]!, ...sent.map((s) => s.delivery)];
    expect(entries.sort()).toEqual([...all].sort());
    const sql = postgres(pg.url, { max: 1, onnotice: () => {} });
    try {
      // A delivery whose COMMIT's answer was lost gets its row once the receiver retries it (1 s, doubling).
      const expected = JSON.stringify([...all].sort());
      const ids = async () => (await sql<{ delivery_id: string }[]>`select delivery_id from deliveries`).map((r) => r.delivery_id).sort();
      await until("every delivery's row", async () => JSON.stringify(await ids()) === expected, 30_000, 200).catch(() => undefined);
      expect(await ids()).toEqual([...all].sort());
    } finally {
      await sql.end();
    }

    receiver.child.kill("SIGINT");
    expect(await receiver.exited).toEqual({ code: null, signal: "SIGINT" });
  });
});
