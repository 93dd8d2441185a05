/**
 * A profiling variant of `deployq receiver` for bench/run.ts (--pool, --cpu-prof): the same
 * composition root (startDaemon) with a Postgres pool of a chosen size, and a plain
 * process.exit on SIGTERM so that `node --cpu-prof` writes its profile. The default bench
 * figures always come from the real `node bin/deployq.js receiver`.
 *
 *   node --import tsx bench/receiver-entry.ts <config> <pool size>
 */
import { loadSettings } from "../src/config/load.ts";
import { startDaemon } from "../src/daemon.ts";
import { openDatabase } from "../src/db/client.ts";
import { createLogger } from "../src/log.ts";

const [configPath, pool] = process.argv.slice(2);
const settings = loadSettings({ configPath });
const logger = createLogger();
const database = await openDatabase({
  databaseUrl: settings.secrets.databaseUrl,
  dataDir: settings.dataDir,
  poolSize: pool ? Number(pool) : undefined,
});
const daemon = await startDaemon({ settings, role: "receiver", logger, database });
process.stderr.write(`deployq receiver (bench variant, pool ${pool ?? "default"}) listening on ${daemon.url}\n`);

const stop = () => {
  void daemon
    .close()
    .then(() => database.close())
    .finally(() => process.exit(0));
};
process.once("SIGTERM", stop);
process.once("SIGINT", stop);
