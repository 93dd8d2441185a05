import { type Spawned, spawnTracked } from "./processes.ts";
import { freePort } from "./load.ts";


/** A Redis of the test's own on a free port (stands in for one Dragonfly node), to stop and start at will. */
export interface PrivateRedis {
  url: string;
  port: number;
  start(): Promise<void>;
  stop(): Promise<void>;
}

export async function privateRedis(): Promise<PrivateRedis> {
  let port = await freePort();
  let proc: Spawned | undefined;
  const self: PrivateRedis = {
    url: `redis://127.0.0.1:${port}`,
    port,
    async start() {
      const { Redis } = await import("ioredis");
      for (let tries = 0; ; tries++) {
        proc = spawnTracked("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--loglevel", "warning"]);
        const deadline = Date.now() + 15_000;
        let owner: number | undefined;
        while (owner === undefined && proc.child.exitCode === null && Date.now() < deadline) {
          const client = new Redis(port, "127.0.0.1", { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
          client.on("error", () => {});
          try {
            await client.connect();
            owner = Number(/process_id:(\d+)/.exec(await client.info("server"))?.[1]);
          } catch {
            await new Promise((r) => setTimeout(r, 50));
          } finally {
            client.disconnect();
          }
        }
        // Test files run in parallel: make sure the server answering is ours, not another file's on the same port.
        if (owner === proc.child.pid) return;
        await self.stop();
        if (tries >= 5) throw new Error(`could not start a private redis-server (last port ${port})`);
        port = await freePort();
        self.port = port;
        self.url = `redis://127.0.0.1:${port}`;
      }
    },
    async stop() {
      if (!proc) return;
      proc.child.kill("SIGKILL");
      await proc.exited;
      proc = undefined;
    },
  };
  return self;
}
