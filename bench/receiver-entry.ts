/**
 * A profiling variant of `deployq receiver` for bench/run.ts (--pool, --cpu-prof, and the
 * observability section's pair: metrics and the event stream on, and off): the same
 * composition root (startDaemon) with a Postgres pool of a chosen size, and a plain
 * process.exit on SIGTERM so that `node --cpu-prof` writes its profile. The default bench
 * figures always come from the real `node bin/deployq.js receiver`.
 *
 *   node --import tsx bench/receiver-entry.ts [--no-observability] <config> [<pool size>]
 */
import { loadSettings } from "../src/config/load.ts";
import { startDaemon } from "../src/daemon.ts";
import { openDatabase } from "../src/db/client.ts";
import { createLogger } from "../src/log.ts";

const args = process.argv.slice(2);
const observability = !args.includes("--no-observability");
const [configPath, pool] = args.filter((a) => a !== "--no-observability");
const settings = loadSettings({ configPath });
const logger = createLogger();
const database = await openDatabase({
  databaseUrl: settings.secrets.databaseUrl,
  dataDir: settings.dataDir,
  poolSize: pool ? Number(pool) : undefined,
});
const daemon = await startDaemon({ settings, role: "receiver", logger, database, observability });
process.stderr.write(`deployq receiver (bench variant, pool ${pool ?? "default"}, observability ${observability ? "on" : "off"}) listening on ${daemon.url}\n`);

const stop = () => {
  void daemon
    .close()
    .then(() => database.close())
    .finally(() => process.exit(0));
};
process.once("SIGTERM", stop);
process.once("SIGINT", stop);
