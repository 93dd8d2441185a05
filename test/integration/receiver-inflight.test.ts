import { randomUUID } from "node:crypto";
import net from "node:net";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { type Daemon, startDaemon } from "../../src/daemon.ts";
import { BODY_BUDGET_BYTES, RETRY_AFTER_S, SMALL_BODY_BYTES, SMALL_BODY_RESERVE_BYTES, receiverBodyBudget } from "../../src/http/admission.ts";
import { BODY_LIMIT_BYTES } from "../../src/http/server.ts";
import { silentLogger } from "../../src/log.ts";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import { until } from "../helpers/wait.ts";
import { type Workspace, createWorkspace, post, pushPayload, randomSha, signedDelivery } from "../helpers/workspace.ts";

interface RawAnswer {
  status: number;
  headers: Record<string, string>;
  body: Record<string, unknown>;
}

/**
 * One request on a socket of its own (node:net, so that a body can really be sent only in
 * part): the head and the first bytes of the body are sent at once, the rest when asked.
 */
interface RawRequest {
  socket: net.Socket;
  /** Body bytes written so far. */
  sent: number;
  /** The answer, once it has arrived whole. */
  answer: Promise<RawAnswer>;
  answered: boolean;
  /** Resolves when the server has ended the connection. */
  ended: Promise<void>;
}

const sockets = new Set<net.Socket>();

function parseAnswer(raw: Buffer): RawAnswer | undefined {
  const end = raw.indexOf("\r\n\r\n");
  if (end < 0) return undefined;
  const [statusLine, ...lines] = raw.subarray(0, end).toString("latin1").split("\r\n");
  const headers = Object.fromEntries(lines.map((l) => [l.slice(0, l.indexOf(":")).toLowerCase(), l.slice(l.indexOf(":") + 1).trim()]));
  const body = raw.subarray(end + 4);
  if (body.length < Number(headers["content-length"])) return undefined;
  return { status: Number(statusLine!.split(" ")[1]), headers, body: JSON.parse(body.toString("utf8")) as Record<string, unknown> };
}

async function openRequest(url: string, head: Record<string, string>, firstBytes: number): Promise<RawRequest> {
  const { hostname, port } = new URL(url);
  const socket = net.connect(Number(port), hostname);
  sockets.add(socket);
  socket.on("error", () => {}); // a write after the server closed; the answer (or its absence) is what is checked
  await new Promise<void>((resolve, reject) => socket.once("connect", resolve).once("error", reject));
  const headers = { host: hostname, "content-type": "application/json", "x-github-event": "push", "x-github-delivery": randomUUID(), ...head };
  socket.write(`POST /github-webhook HTTP/1.1\r\n${Object.entries(headers).map(([k, v]) => `${k}: ${v}`).join("\r\n")}\r\n\r\n`);
  const request: RawRequest = {
    socket,
    sent: firstBytes,
    answered: false,
    answer: new Promise<RawAnswer>((resolve, reject) => {
      let data = Buffer.alloc(0);
      socket.on("data", (chunk: Buffer) => {
        data = Buffer.concat([data, chunk]);
        const answer = parseAnswer(data);
        if (answer && !request.answered) {
          request.answered = true;
          resolve(answer);
        }
      });
      socket.on("close", () => reject(new Error(`the connection closed without a whole answer: ${JSON.stringify(data.toString("latin1"))}`)));
    }),
    ended: new Promise<void>((resolve) => socket.once("end", resolve)),
  };
  request.answer.catch(() => {}); // awaited where it matters
  if (firstBytes > 0) socket.write(Buffer.alloc(firstBytes, 0x20));
  return request;
}

/** A large body with a bad signature, declared whole and sent only in part. */
const attack = (url: string, declared = BODY_LIMIT_BYTES) =>
  openRequest(url, { "content-length": String(declared), "x-hub-signature-256": `sha256=${"0".repeat(64)}` }, 64 * 1024);

describe("receiver under a flood of large bodies", () => {
  let ws: Workspace;
  let tdb: TestDatabase;
  let daemon: Daemon;
  let url: string;

  beforeAll(async () => {
    ws = await createWorkspace();
    tdb = await createTestDatabase("postgres");
    daemon = await startDaemon({ settings: ws.settings, role: "receiver", logger: silentLogger(), database: tdb.database });
    url = daemon.url!;
  });
  afterEach(() => {
    for (const s of sockets) s.destroy();
    sockets.clear();
  });
  afterAll(async () => {
    await daemon?.close();
    await tdb?.dispose();
    await ws?.dispose();
  });

  /** Large bodies fit only while they leave the small bodies' reserve free. */
  const largeThatFit = Math.floor((BODY_BUDGET_BYTES - SMALL_BODY_RESERVE_BYTES) / BODY_LIMIT_BYTES);
  const admitted = () => receiverBodyBudget.reserved / BODY_LIMIT_BYTES;

  it("holds no more than its budget of bodies: beyond it, 503 at once and the connection closed unread; small deliveries still get through", async () => {
    expect(largeThatFit).toBeGreaterThan(0);
    expect(receiverBodyBudget.reserved).toBe(0);
    const requests = await Promise.all(Array.from({ length: largeThatFit + 3 }, () => attack(url)));
    const refused = () => requests.filter((r) => r.answered);
    await until(
      "every request admitted (its body being read) or answered",
      async () => refused().length + admitted() === requests.length,
      10_000,
    ).catch((err: Error) => {
      throw new Error(`${err.message}: ${admitted()} admitted, ${refused().length} answered of ${requests.length}`);
    });

    expect(admitted()).toBe(largeThatFit);
    expect(receiverBodyBudget.reserved).toBeLessThanOrEqual(BODY_BUDGET_BYTES);
    expect(refused()).toHaveLength(3);
    for (const r of refused()) {
      const answer = await r.answer;
      expect(answer).toMatchObject({
        status: 503,
        headers: { "retry-after": String(RETRY_AFTER_S), connection: "close" },
        body: { error: expect.stringMatching(/already reading \d+ MB of request bodies \(its budget is 100 MB\).*redeliver it/) },
      });
      // Answered and closed by the server with 64 KB of its 25 MB sent: its body was never waited for.
      await r.ended;
    }

    // A body over the small size that would eat into the reserve is refused too...
    const intoReserve = await attack(url, BODY_BUDGET_BYTES - SMALL_BODY_RESERVE_BYTES - receiverBodyBudget.reserved + 1);
    expect((await intoReserve.answer).status).toBe(503);
    // ...and a chunked one, with its length unknown, counts as the largest body there may be...
    const chunked = await openRequest(url, { "transfer-encoding": "chunked", "x-hub-signature-256": `sha256=${"0".repeat(64)}` }, 0);
    chunked.socket.write("4\r\n{}  \r\n");
    expect((await chunked.answer).status).toBe(503);
    // So does a compressed one, whatever its length on the wire: it would be buffered decompressed.
    const gzipped = await openRequest(url, { "content-length": "100", "content-encoding": "gzip", "x-hub-signature-256": `sha256=${"0".repeat(64)}` }, 10);
    expect((await gzipped.answer).status).toBe(503);

    // ...while ordinary deliveries keep being queued, and give their reservation back.
    for (const padding of ["", "x".repeat(SMALL_BODY_BYTES - 4096)]) {
      const res = await post(url, await signedDelivery({ ...pushPayload({ repository: "octo-org/api", branch: "main", after: randomSha() }), padding }));
      expect(res).toMatchObject({ status: 202, body: { deployments: ["api"] } });
    }
    expect(admitted()).toBe(largeThatFit);

    // An admitted body, sent whole, is read and refused for its signature; its reservation is back at the answer.
    const [first, ...others] = requests.filter((r) => !r.answered);
    first!.socket.write(Buffer.alloc(BODY_LIMIT_BYTES - first!.sent, 0x20));
    first!.sent = BODY_LIMIT_BYTES;
    expect(await first!.answer).toMatchObject({ status: 401 });
    expect(admitted()).toBe(largeThatFit - 1);

    // The others hang up part way: their reservations are released with their connections.
    for (const r of others) r.socket.destroy();
    await until("the reservations of closed connections released", async () => receiverBodyBudget.reserved === 0, 10_000);
    const later = await Promise.all(Array.from({ length: largeThatFit }, () => attack(url)));
    await until("the later large bodies admitted", async () => admitted() === largeThatFit, 10_000);
    expect(later.filter((r) => r.answered)).toEqual([]);
  });

  it("admits a whole 25 MB body again once nothing else is in flight", async () => {
    await until("the previous test's reservations released", async () => receiverBodyBudget.reserved === 0, 10_000);
    const req = await signedDelivery("{}");
    const res = await post(url, { headers: req.headers, body: Buffer.alloc(BODY_LIMIT_BYTES, 0x20) });
    expect(res.status).toBe(401);
    expect(receiverBodyBudget.reserved).toBe(0);
  });
});
