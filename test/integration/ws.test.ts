import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { createServer } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { WebSocket } from "ws";
import { type Daemon, startDaemon } from "../../src/daemon.ts";
import { startLiveStream } from "../../src/http/ws.ts";
import { silentLogger } from "../../src/log.ts";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import { type TestRepo, createRepo } from "../helpers/git.ts";
import { type Spawned, spawnDeployq } from "../helpers/processes.ts";
import { until } from "../helpers/wait.ts";
import { type Workspace, createWorkspace, followingDeployment, post, pushPayload, signedDelivery } from "../helpers/workspace.ts";

const TOKEN = "ws-test-token-0123456789";
/** Lines the "big" deployment's build prints, 1 KB each: far more than the kernel's socket buffers and the 1 MB bound. */
const BIG_LINES = 20_000;

type Message = Record<string, unknown> & { type: string };

/** A real `ws` client that records what it receives. */
class Client {
  readonly messages: Message[] = [];
  closed: { code: number; reason: string } | undefined;
  private constructor(readonly ws: WebSocket) {
    ws.on("message", (data) => this.messages.push(JSON.parse(data.toString()) as Message));
    ws.on("close", (code, reason) => (this.closed = { code, reason: reason.toString() }));
    ws.on("error", () => {});
  }

  static async connect(base: string, options: { origin?: string; query?: string } = {}): Promise<Client> {
    const ws = new WebSocket(`${base.replace(/^http/, "ws")}/ws/v0/${options.query ?? ""}`, options.origin ? { origin: options.origin } : {});
    await new Promise<void>((resolve, reject) => {
      ws.once("open", resolve);
      ws.once("error", reject);
    });
    return new Client(ws);
  }

  send(message: unknown): void {
    this.ws.send(JSON.stringify(message));
  }

  /** Waits for the next Response after the `n`-th message. */
  async response(after: number): Promise<Message> {
    return until("a Response", async () => this.messages.slice(after).find((m) => m.type === "Response"));
  }

  async authenticate(token = TOKEN, since?: number): Promise<Message> {
    const n = this.messages.length;
    this.send({ type: "AuthenticationRequest", token, ...(since === undefined ? {} : { since }) });
    return this.response(n);
  }

  async subscribe(deployments: string[]): Promise<Message> {
    const n = this.messages.length;
    this.send({ type: "Subscribe", deployments });
    return this.response(n);
  }

  events(entry?: string): Message[] {
    return this.messages.filter((m) => (m.type === "DeployEvent" || m.type === "DeliveryEvent") && (entry === undefined || m.entry === entry));
  }

  async close(): Promise<void> {
    if (this.ws.readyState === WebSocket.CLOSED) return;
    const done = new Promise((resolve) => this.ws.once("close", resolve));
    this.ws.terminate();
    await done;
  }
}

const clients: Client[] = [];
async function connect(base: string, options?: { origin?: string; query?: string }): Promise<Client> {
  const c = await Client.connect(base, options);
  clients.push(c);
  return c;
}

async function upgradeStatus(base: string, options: { origin?: string; query?: string }): Promise<number> {
  const ws = new WebSocket(`${base.replace(/^http/, "ws")}/ws/v0/${options.query ?? ""}`, options.origin ? { origin: options.origin } : {});
  return new Promise<number>((resolve, reject) => {
    ws.once("unexpected-response", (_req, res) => {
      resolve(res.statusCode ?? 0);
      res.resume();
      ws.terminate();
    });
    ws.once("open", () => {
      ws.terminate();
      reject(new Error("the upgrade was accepted"));
    });
    ws.once("error", () => {});
  });
}

const finishedIn = (c: Client, entry: string) => until(`the finished event of ${entry}`, async () => c.events(entry).find((m) => m.name === "finished"));

describe("/ws/v0 under serve", () => {
  let ws: Workspace;
  let tdb: TestDatabase;
  let daemon: Daemon;
  let repo: TestRepo;
  let reposDir: string;

  beforeAll(async () => {
    reposDir = await mkdtemp(path.join(tmpdir(), "deployq-repos-"));
    repo = await createRepo(reposDir);
    ws = await createWorkspace({
      deployments:
        followingDeployment("app", repo.bare, `commands = [["sh", "-c", "echo built; echo second line"]]`) +
        followingDeployment("big", repo.bare, `commands = [["awk", "BEGIN { s = sprintf(\\"%0990d\\", 0); for (i = 0; i < ${BIG_LINES}; i++) print \\"big\\", i, s }"]]`),
      env: { DEPLOYQ_ADMIN_TOKEN: TOKEN },
    });
    tdb = await createTestDatabase("postgres");
    // [server] public_url, as loadSettings gives it (src/config/public-url.test.ts checks that).
    daemon = await startDaemon({ settings: { ...ws.settings, publicUrl: "https://deploy.example.com" }, role: "serve", logger: silentLogger(), database: tdb.database });
  });
  afterEach(async () => {
    await Promise.all(clients.splice(0).map((c) => c.close()));
  });
  afterAll(async () => {
    await daemon?.close();
    await tdb?.dispose();
    await ws?.dispose();
    await rm(reposDir, { recursive: true, force: true });
  });

  async function push(deployment: string): Promise<string> {
    const sha = await repo.commit({ "index.html": `${deployment} ${Math.random()}` });
    const res = await post(daemon.url!, await signedDelivery(pushPayload({ repository: `octo-org/${deployment}`, after: sha })));
    expect(res.status).toBe(202);
    return res.body.queued as string;
  }

  it("gives two clients authenticated at once the same deploy events, in sequence", async () => {
    const a = await connect(daemon.url!);
    const b = await connect(daemon.url!);
    expect(await a.authenticate()).toEqual({ type: "Response", status: "success" });
    expect(await b.authenticate()).toEqual({ type: "Response", status: "success" });
    const entry = await push("app");
    const endA = await finishedIn(a, entry);
    await finishedIn(b, entry);
    expect(endA).toMatchObject({ type: "DeployEvent", kind: "deploy", deployment: "app", outcome: "succeeded" });
    const names = (c: Client) => c.events(entry).map((m) => `${m.type}:${m.name as string}:${m.seq as number}`);
    expect(names(a)).toEqual(names(b));
    expect(names(a).slice(0, 4).map((n) => n.split(":").slice(0, 2).join(":"))).toEqual(["DeliveryEvent:received", "DeliveryEvent:routed", "DeployEvent:queued", "DeployEvent:started"]);
    const seqs = a.messages.filter((m) => typeof m.seq === "number").map((m) => m.seq as number);
    expect(seqs).toEqual([...seqs].sort((x, y) => x - y));
    // Without a Subscribe, no log lines.
    expect(a.messages.some((m) => m.type === "LogLine")).toBe(false);
  });

  it("answers a wrong token with an error Response and closes; refuses anything before authentication", async () => {
    const wrong = await connect(daemon.url!);
    expect(await wrong.authenticate("not-the-token")).toEqual({ type: "Response", status: "error", errors: ["invalid token"] });
    await until("the wrong token's connection to close", async () => wrong.closed);
    expect(wrong.closed!.code).toBe(1008);

    const early = await connect(daemon.url!);
    expect(await early.subscribe(["app"])).toMatchObject({ type: "Response", status: "error" });
    await until("the early client's connection to close", async () => early.closed);
  });

  it("closes a client that never authenticates", async () => {
    const silent = await connect(daemon.url!);
    await until("the silent client to be closed", async () => silent.closed, 15_000);
    expect(silent.closed!.code).toBe(1008);
    expect(silent.messages).toEqual([{ type: "Response", status: "error", errors: ["no AuthenticationRequest within 5 s"] }]);
  });

  it("refuses a browser page of another origin and a token in the URL at the upgrade; lets the public origin in", async () => {
    expect(await upgradeStatus(daemon.url!, { origin: "https://evil.example.net" })).toBe(403);
    expect(await upgradeStatus(daemon.url!, { query: `?token=${TOKEN}` })).toBe(400);
    const page = await connect(daemon.url!, { origin: "https://deploy.example.com" });
    expect(await page.authenticate()).toMatchObject({ status: "success" });
  });

  it("cuts a connection that stops answering pings, and keeps one that answers", async () => {
    // The daemon's own stream pings every 15 s; one on a server of its own, every 50 ms, on the same feed.
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const live = startLiveStream({ server, feed: daemon.feed!, token: TOKEN, publicOrigin: undefined, dataDir: ws.settings.dataDir, deployments: ["app"], logger: silentLogger(), heartbeatMs: 50 });
    const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const mute = new WebSocket(`${base.replace(/^http/, "ws")}/ws/v0/`, { autoPong: false });
    mute.on("error", () => {});
    const muteClosed = new Promise<number>((resolve) => mute.once("close", (code) => resolve(code)));
    await new Promise((resolve) => mute.once("open", resolve));
    const alive = await connect(base);
    expect(await alive.authenticate()).toMatchObject({ status: "success" });
    expect(await muteClosed).toBe(1006); // cut, without a closing handshake
    await until("the server to forget the mute connection", async () => live.connections === 1);
    expect(alive.closed).toBeUndefined();
    await alive.close();
    await live.close();
    await new Promise((resolve) => server.close(resolve));
  });

  it("narrows the stream to subscribed deployments, sends their log lines, and catches a returning client up from `since`", async () => {
    const narrow = await connect(daemon.url!);
    await narrow.authenticate();
    expect(await narrow.subscribe(["nope"])).toEqual({ type: "Response", status: "error", errors: ["no deployment named nope is configured"] });
    expect(await narrow.subscribe(["app"])).toEqual({ type: "Response", status: "success" });
    const all = await connect(daemon.url!);
    await all.authenticate();
    const entry = await push("app");
    const end = await finishedIn(narrow, entry);
    const deployId = end.deployId as number;
    const logEnd = await until("the LogEnd", async () => narrow.messages.find((m) => m.type === "LogEnd" && m.deployId === deployId));
    expect(logEnd).toEqual({ type: "LogEnd", deployment: "app", deployId });
    const lines = narrow.messages.filter((m) => m.type === "LogLine" && m.deployId === deployId);
    expect(lines.map((m) => m.line)).toEqual(expect.arrayContaining(["built", "second line"]));
    expect(lines[0]).toMatchObject({ deployment: "app", offset: 0 });
    const offsets = lines.map((m) => m.offset as number);
    expect(offsets).toEqual([...offsets].sort((x, y) => x - y));
    // Only app's events (and every delivery event).
    expect(narrow.messages.every((m) => m.type !== "DeployEvent" || m.deployment === "app")).toBe(true);
    await finishedIn(all, entry);
    expect(all.messages.some((m) => m.type === "LogLine")).toBe(false);

    // Back with the sequence number of "started": exactly what came after it.
    const started = all.events(entry).find((m) => m.name === "started")!;
    const back = await connect(daemon.url!);
    await back.authenticate(TOKEN, started.seq as number);
    const after = all.messages.filter((m) => typeof m.seq === "number" && (m.seq as number) > (started.seq as number)).map((m) => m.seq);
    await until("the catch-up", async () => back.messages.filter((m) => typeof m.seq === "number").length >= after.length);
    expect(back.messages.filter((m) => typeof m.seq === "number").map((m) => m.seq)).toEqual(after);
  });

  it("drops a client that stops reading while the deploy and the other clients go on unaffected", async () => {
    const slow = await connect(daemon.url!);
    await slow.authenticate();
    await slow.subscribe(["big"]);
    const good = await connect(daemon.url!);
    await good.authenticate();
    await good.subscribe(["big"]);
    const socket = (slow.ws as unknown as { _socket: Socket })._socket;
    socket.pause();
    const before = daemon.live!.slowConsumersDropped;

    const entry = await push("big");
    await until("the slow client to be dropped", async () => daemon.live!.slowConsumersDropped > before);
    const end = await finishedIn(good, entry);
    expect(end).toMatchObject({ deployment: "big", outcome: "succeeded" });
    const deployId = end.deployId as number;
    await until("the good client's LogEnd", async () => good.messages.find((m) => m.type === "LogEnd" && m.deployId === deployId));
    const big = good.messages.filter((m) => m.type === "LogLine" && m.deployId === deployId && String(m.line).startsWith("big "));
    expect(big.length).toBe(BIG_LINES);
    expect(big.map((m) => Number(String(m.line).split(" ")[1]))).toEqual([...Array(BIG_LINES).keys()]);
    // Cut on the server's side; once it reads again, it hears the close.
    await until("the slow connection to be gone from the server", async () => daemon.live!.connections === 1);
    socket.resume();
    await until("the slow client to see its connection closed", async () => slow.closed);
    expect(slow.messages.filter((m) => m.type === "LogLine").length).toBeLessThan(BIG_LINES);
  });
});

describe("/ws/v0 without DEPLOYQ_ADMIN_TOKEN", () => {
  it("is off: the upgrade is refused with a 404", async () => {
    const ws = await createWorkspace();
    const tdb = await createTestDatabase("postgres");
    const receiver = await startDaemon({ settings: ws.settings, role: "receiver", logger: silentLogger(), database: tdb.database });
    try {
      expect(receiver.live).toBeUndefined();
      expect(await upgradeStatus(receiver.url!, {})).toBe(404);
    } finally {
      await receiver.close();
      await tdb.dispose();
      await ws.dispose();
    }
  });
});

describe("/ws/v0 with the receiver and the workers as two processes", () => {
  let ws: Workspace;
  let tdb: TestDatabase;
  let receiver: Daemon;
  let workers: Spawned;
  let repo: TestRepo;
  let reposDir: string;

  beforeAll(async () => {
    reposDir = await mkdtemp(path.join(tmpdir(), "deployq-repos-"));
    repo = await createRepo(reposDir);
    ws = await createWorkspace({ deployments: followingDeployment("app", repo.bare, `commands = [["sh", "-c", "echo built by the workers"]]`), env: { DEPLOYQ_ADMIN_TOKEN: TOKEN } });
    tdb = await createTestDatabase("postgres");
    receiver = await startDaemon({ settings: ws.settings, role: "receiver", logger: silentLogger(), database: tdb.database });
    workers = spawnDeployq(["workers"], { ...ws.env, DATABASE_URL: tdb.url, DEPLOYQ_CONFIG: ws.configPath, DEPLOYQ_LOG_LEVEL: "info" });
    await workers.waitFor("deployq started");
  });
  afterAll(async () => {
    await Promise.all(clients.splice(0).map((c) => c.close()));
    if (workers && workers.child.exitCode === null && workers.child.signalCode === null) workers.child.kill("SIGINT");
    await workers?.exited;
    await receiver?.close();
    await tdb?.dispose();
    await ws?.dispose();
    await rm(reposDir, { recursive: true, force: true });
  });

  it("streams the workers' deploy events and log lines to the receiver's clients", async () => {
    const a = await connect(receiver.url!);
    const b = await connect(receiver.url!);
    await a.authenticate();
    await b.authenticate();
    await b.subscribe(["app"]);
    const sha = await repo.commit({ "index.html": "v1" });
    const res = await post(receiver.url!, await signedDelivery(pushPayload({ repository: "octo-org/app", after: sha })));
    expect(res.status).toBe(202);
    const entry = res.body.queued as string;
    const end = await finishedIn(a, entry);
    expect(end).toMatchObject({ outcome: "succeeded", sha, pid: workers.child.pid });
    await finishedIn(b, entry);
    expect(b.events(entry).map((m) => m.seq)).toEqual(a.events(entry).map((m) => m.seq));
    await until("the workers' build output as log lines", async () => b.messages.find((m) => m.type === "LogLine" && m.line === "built by the workers"));
  });
});
