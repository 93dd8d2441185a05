import { pino } from "pino";
import { afterAll, describe, expect, it } from "vitest";
import { type LockService, deploymentLockName } from "../../src/lock/lock.ts";
import { createRedlockLocks } from "../../src/lock/redlock.ts";
import { type PrivateRedis, privateRedis } from "../helpers/redis.ts";
import { until } from "../helpers/wait.ts";

/**
 * Found by `npm run torture -- --only redis-outage` (two workers processes, one Redis stopped
 * and started again at once, empty, while a build ran): the holder went on building until its
 * next extension, half a TTL later, while the other process took the lock from the restarted
 * Redis and built too. A holder now loses its lock as soon as fewer than a quorum of the nodes
 * it took it on are still connected.
 */
describe("a lock node that restarts empty", () => {
  const services: LockService[] = [];
  const nodes: PrivateRedis[] = [];
  afterAll(async () => {
    await Promise.all(services.map((s) => s.close()));
    for (const n of nodes) await n.stop();
  });
  const make = (urls: string[]) => {
    const locks = createRedlockLocks({ urls, ttlMs: 30_000, logger: pino({ level: "silent" }), acquireTimeoutMs: 3000 });
    services.push(locks);
    return locks;
  };
  const hold = (locks: LockService, name: string) => {
    let release!: () => void;
    let signal!: AbortSignal;
    let holds!: () => void;
    const holding = new Promise<void>((r) => (holds = r));
    const done = locks.using(name, (s) => {
      signal = s;
      holds();
      return new Promise<void>((r) => (release = r));
    });
    return { holding, done, release: () => release(), signal: () => signal };
  };

  it("with one node: the holder's signal aborts when the node goes, before anyone can take the lock from it restarted", async () => {
    const redis = await privateRedis();
    nodes.push(redis);
    await redis.start();
    const a = make([redis.url]);
    const b = make([redis.url]);
    const name = deploymentLockName("restart-one");
    const first = hold(a, name);
    await first.holding;
    await redis.stop();
    // Well within the TTL (30 s) and its first extension (15 s): only the dropped connection can tell it.
    await until("the holder to lose its lock", async () => first.signal().aborted, 3000);
    await redis.start();
    let bTook = 0;
    await b.using(name, async () => {
      bTook = Date.now();
    });
    expect(bTook).toBeGreaterThan(0);
    first.release();
    await first.done;
  });

  it("with three nodes: one going keeps the lock held; a second going loses it", async () => {
    const three = [await privateRedis(), await privateRedis(), await privateRedis()];
    nodes.push(...three);
    for (const n of three) await n.start();
    const a = make(three.map((n) => n.url));
    const first = hold(a, deploymentLockName("restart-three"));
    await first.holding;
    await three[0]!.stop();
    await three[0]!.start();
    // Its connection came back, to a node without the lock: it is held on the other two only.
    await until("the client to reconnect", async () => (await fetchPing(three[0]!)) === true, 10_000, 50);
    expect(first.signal().aborted).toBe(false);
    await three[1]!.stop();
    await until("the holder to lose its lock", async () => first.signal().aborted, 3000);
    first.release();
    await first.done;
  });
});

async function fetchPing(node: PrivateRedis): Promise<boolean> {
  const { Redis } = await import("ioredis");
  const client = new Redis(node.port, "127.0.0.1", { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  client.on("error", () => {});
  try {
    await client.connect();
    return (await client.ping()) === "PONG";
  } catch {
    return false;
  } finally {
    client.disconnect();
  }
}
