import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { PGlite } from "@electric-sql/pglite";
import type { PgDatabase, PgQueryResultHKT } from "drizzle-orm/pg-core";
import { drizzle as drizzlePglite } from "drizzle-orm/pglite";
import { migrate as migratePglite } from "drizzle-orm/pglite/migrator";
import { drizzle as drizzlePostgres } from "drizzle-orm/postgres-js";
import { migrate as migratePostgres } from "drizzle-orm/postgres-js/migrator";
import postgres from "postgres";
import { acquireDataDirLock } from "../pid-lock.ts";
import * as schema from "./schema.ts";
import { redactUrl } from "../errors.ts";

export type Schema = typeof schema;
export type Db = PgDatabase<PgQueryResultHKT, Schema>;

export const MIGRATIONS_DIR = fileURLToPath(new URL("../../migrations", import.meta.url));

export interface Database {
  db: Db;
  kind: "postgres" | "pglite";
  /** Where it lives, without credentials: for logs and `deployq check`. */
  describe: string;
  migrate(): Promise<void>;
  /**
   * LISTENs on `channel` (Postgres: other processes NOTIFY it) until the returned function
   * is called; reconnects by itself. PGlite lives in one process: nothing to listen to.
   */
  listen(channel: string, onNotify: (payload: string) => void): Promise<() => Promise<void>>;
  close(): Promise<void>;
}

export interface OpenDatabaseOptions {
  databaseUrl: string | undefined;
  /** The data directory for the embedded PGlite; "memory://" keeps it in memory (tests). */
  dataDir: string;
  /** Postgres connections in the pool (each in-flight receiver request holds one briefly). */
  poolSize?: number;
}

/** Where the embedded PGlite cluster lives in the data directory. */
export const pgliteDir = (dataDir: string) => path.join(dataDir, "pglite");

export async function openDatabase(options: OpenDatabaseOptions): Promise<Database> {
  if (options.databaseUrl) return openPostgres(options.databaseUrl, options.poolSize ?? 20);
  return openPglite(options.dataDir);
}

function openPostgres(url: string, max: number): Database {
  const client = postgres(url, { max, onnotice: () => {}, connect_timeout: 10 });
  const db = drizzlePostgres(client, { schema }) as unknown as Db;
  let closing: Promise<void> | undefined;
  return {
    db,
    kind: "postgres",
    describe: redactUrl(url),
    async migrate() {
      // Receiver and workers may start together: one migrates, the other waits on the lock.
      const single = postgres(url, { max: 1, onnotice: () => {}, connect_timeout: 10 });
      try {
        await single`select pg_advisory_lock(hashtext('deployq:migrate'))`;
        await migratePostgres(drizzlePostgres(single), { migrationsFolder: MIGRATIONS_DIR });
      } finally {
        await single.end({ timeout: 5 });
      }
    },
    async listen(channel, onNotify) {
      const request = await client.listen(channel, onNotify);
      return () => request.unlisten();
    },
    close() {
      closing ??= client.end({ timeout: 5 });
      return closing;
    },
  };
}

async function openPglite(dataDir: string): Promise<Database> {
  const inMemory = dataDir === "memory://";
  const lock = inMemory ? undefined : acquireDataDirLock(dataDir);
  let pg: PGlite;
  try {
    pg = inMemory ? new PGlite() : new PGlite(pgliteDir(dataDir));
    await pg.waitReady;
  } catch (err) {
    lock?.release();
    throw err;
  }
  const db = drizzlePglite(pg, { schema });
  let closing: Promise<void> | undefined;
  return {
    db: db as unknown as Db,
    kind: "pglite",
    describe: inMemory ? "PGlite (in memory)" : `PGlite in ${pgliteDir(dataDir)}`,
    async migrate() {
      await migratePglite(db, { migrationsFolder: MIGRATIONS_DIR });
    },
    async listen() {
      return async () => {};
    },
    close() {
      closing ??= pg.close().finally(() => lock?.release());
      return closing;
    },
  };
}

/** Connection-level SQLSTATEs: the server is down, restarting, or full, not the query wrong. */
const UNREACHABLE_SQLSTATE = /^(08...|57P0[123]|53300)$/;
const UNREACHABLE_CODES = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EPIPE",
  "CONNECT_TIMEOUT",
  "CONNECTION_CLOSED",
  "CONNECTION_DESTROYED",
  "CONNECTION_ENDED",
]);

/**
 * Whether an error says that Postgres cannot be reached right now (down, restarting, a
 * network failure), which waiting mends, rather than that something is wrong with the
 * configuration or the query (a bad password, a missing database), which it does not.
 */
export function databaseUnreachable(err: unknown): boolean {
  for (let e: unknown = err, depth = 0; e && typeof e === "object" && depth < 5; e = (e as { cause?: unknown }).cause, depth++) {
    if (e instanceof AggregateError && e.errors.some((inner) => databaseUnreachable(inner))) return true;
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string" && (UNREACHABLE_CODES.has(code) || UNREACHABLE_SQLSTATE.test(code))) return true;
  }
  return false;
}

/**
 * Whether the installed postgres.js carries scripts/patch-postgres.mjs (npm runs it after
 * install; not after `npm ci --ignore-scripts`). Unpatched, a Postgres restart can wedge
 * the pool or end the process.
 */
export function postgresDriverPatched(): boolean {
  try {
    const root = path.resolve(path.dirname(createRequire(import.meta.url).resolve("postgres")), "..", "..");
    return readFileSync(path.join(root, "src", "connection.js"), "utf8").includes("deployq: patched");
  } catch {
    return false;
  }
}
