import { createServer } from "node:net";
import { type Spawned, spawnTracked } from "./processes.ts";

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

/** A Redis of the test's own on a free port (stands in for one Dragonfly node), to stop and start at will. */
export interface PrivateRedis {
  url: string;
  port: number;
  start(): Promise<void>;
  stop(): Promise<void>;
}

export async function privateRedis(): Promise<PrivateRedis> {
  const port = await freePort();
  let proc: Spawned | undefined;
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    async start() {
      proc = spawnTracked("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--loglevel", "warning"]);
      const { Redis } = await import("ioredis");
      const deadline = Date.now() + 15_000;
      for (;;) {
        const client = new Redis(port, "127.0.0.1", { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
        client.on("error", () => {});
        try {
          await client.connect();
          await client.ping();
          client.disconnect();
          return;
        } catch {
          client.disconnect();
          if (Date.now() > deadline) throw new Error(`redis-server on ${port} did not start: ${proc.output()}`);
          await new Promise((r) => setTimeout(r, 50));
        }
      }
    },
    async stop() {
      if (!proc) return;
      proc.child.kill("SIGKILL");
      await proc.exited;
      proc = undefined;
    },
  };
}
