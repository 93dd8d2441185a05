import { Redis } from "ioredis";
import { errorMessage, redactUrl } from "../errors.ts";

/** Whether a majority of the REDIS_URL nodes answer (what redlock needs to take a lock). */
export async function pingLockService(urls: readonly string[]): Promise<{ ok: boolean; detail: string }> {
  const answers = await Promise.all(
    urls.map(async (url) => {
      const client = new Redis(url, { lazyConnect: true, connectTimeout: 2000, maxRetriesPerRequest: 0, retryStrategy: () => null });
      client.on("error", () => {});
      try {
        await client.connect();
        await client.ping();
        return undefined;
      } catch (err) {
        return `${redactUrl(url)}: ${errorMessage(err)}`;
      } finally {
        client.disconnect();
      }
    }),
  );
  const down = answers.filter((a) => a !== undefined);
  const quorum = Math.floor(urls.length / 2) + 1;
  const ok = urls.length - down.length >= quorum;
  if (!ok) return { ok, detail: down.join("; ") };
  return { ok, detail: down.length === 0 ? `ok (${urls.length} node${urls.length > 1 ? "s" : ""})` : `ok, but ${down.join("; ")}` };
}
