import { Redis } from "ioredis";

/**
 * Reads how long the deployment locks held in Dragonfly/Redis have left, for whoever shows
 * them (the dashboard), without taking them. Redlock keeps a lock as a key named after it
 * on each node, with the lock's TTL; a lock is held when a majority of the nodes have it.
 * Read-only (PTTL), one pipeline per node, with the nodes asked at once.
 */
export interface LockInspector {
  /**
   * The time left (ms) of each held lock among `names` (full names, prefix included);
   * a name missing from the map is not held. Undefined when the service cannot answer.
   */
  ttls(names: readonly string[]): Promise<Map<string, number> | undefined>;
  close(): Promise<void>;
}

export function createLockInspector(urls: readonly string[]): LockInspector {
  // Lazily connected, and failing at once while down: the dashboard shows "unknown" rather than waiting.
  const clients = urls.map((url) => {
    const client = new Redis(url, { lazyConnect: true, enableOfflineQueue: false, maxRetriesPerRequest: 0, connectTimeout: 1000, retryStrategy: (times) => Math.min(times * 500, 5000) });
    client.on("error", () => {});
    return client;
  });
  const quorum = Math.floor(urls.length / 2) + 1;
  return {
    async ttls(names) {
      if (names.length === 0) return new Map();
      const perNode = await Promise.all(
        clients.map(async (client) => {
          try {
            if (client.status === "wait") await client.connect();
            const pipeline = client.pipeline();
            for (const name of names) pipeline.pttl(name);
            const answers = (await pipeline.exec()) ?? [];
            // A node that failed any of them (its connection dropped meanwhile) did not answer.
            if (answers.length !== names.length || answers.some(([err]) => err)) return undefined;
            return answers.map(([, ttl]) => Number(ttl));
          } catch {
            return undefined;
          }
        }),
      );
      const answering = perNode.filter((n) => n !== undefined);
      if (answering.length < quorum) return undefined;
      const held = new Map<string, number>();
      names.forEach((name, i) => {
        // The time a majority still agree on: the quorum-th longest of the nodes' TTLs.
        const left = answering
          .map((n) => n[i]!)
          .filter((t) => t > 0)
          .sort((a, b) => b - a);
        if (left.length >= quorum) held.set(name, left[quorum - 1]!);
      });
      return held;
    },
    async close() {
      for (const client of clients) client.disconnect();
    },
  };
}
