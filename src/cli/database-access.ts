import { existsSync } from "node:fs";
import path from "node:path";
import type { Settings } from "../config/load.ts";
import { findDaemon } from "../daemon.ts";
import { type Db, openDatabase, pgliteDir } from "../db/client.ts";
import { DeployqError, errorMessage } from "../errors.ts";
import { deployqCommandOf, lockOwner } from "../pid-lock.ts";

/**
 * Where the embedded database would be, when it does not exist yet (DATABASE_URL unset, no
 * daemon has started): commands that only read must not create it (a whole PGlite cluster).
 */
export function embeddedDatabaseMissing(settings: Settings): string | undefined {
  if (settings.secrets.databaseUrl) return undefined;
  const dir = pgliteDir(settings.dataDir);
  return existsSync(dir) ? undefined : dir;
}

/**
 * The embedded database has one owner. A CLI command that needs it while a daemon owns it
 * asks that daemon over its local HTTP endpoint (`viaDaemon`, with the daemon's base URL);
 * otherwise (Postgres, or no daemon running) it opens the database itself.
 */
export async function withDatabase<T>(settings: Settings, direct: (db: Db) => Promise<T>, viaDaemon: (baseUrl: string) => Promise<T>): Promise<T> {
  if (!settings.secrets.databaseUrl) {
    const owner = lockOwner(path.join(settings.dataDir, "deployq.lock"));
    if (owner !== undefined && owner !== process.pid) {
      const daemon = await findDaemon(settings.dataDir, owner);
      if (!daemon) {
        throw new DeployqError(
          "DATA_DIR_LOCKED",
          `the embedded database is held by ${deployqCommandOf(owner) ? `\`deployq ${deployqCommandOf(owner)}\` (process ${owner})` : `deployq process ${owner}`}, ` +
            "which has no HTTP endpoint to ask (only `serve` and `receiver` answer): run `deployq serve` instead of it, " +
            `or stop process ${owner} to run this command, or set DATABASE_URL to a Postgres server that every process can share`,
        );
      }
      return viaDaemon(daemon.url);
    }
    const missing = embeddedDatabaseMissing(settings);
    if (missing) {
      throw new DeployqError(
        "UNAVAILABLE",
        `there is no embedded database yet (${missing}): the daemon creates it at first start (\`deployq serve\`), so nothing has been deployed or recorded yet`,
      );
    }
  }
  const database = await openDatabase({ databaseUrl: settings.secrets.databaseUrl, dataDir: settings.dataDir, poolSize: 2 });
  try {
    return await direct(database.db);
  } catch (err) {
    const cause = (err as { cause?: { code?: string } }).cause;
    if (cause?.code === "42P01") {
      throw new DeployqError("CONFIG", `${database.describe} has no deployq tables yet: run \`deployq migrate\` (the daemon also migrates at start)`);
    }
    throw err;
  } finally {
    await database.close();
  }
}

export async function getJson<T>(url: string): Promise<T> {
  let res: Response;
  try {
    res = await fetch(url, { signal: AbortSignal.timeout(10_000) });
  } catch (err) {
    throw new DeployqError("UNAVAILABLE", `the running deployq at ${url} did not answer (${errorMessage(err)})`);
  }
  if (!res.ok) throw new DeployqError("UNAVAILABLE", `the running deployq answered ${res.status} for ${url}`);
  return (await res.json()) as T;
}
