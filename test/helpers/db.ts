import { randomBytes } from "node:crypto";
import postgres from "postgres";
import { type Database, openDatabase } from "../../src/db/client.ts";

/** The Postgres server the tests use: DATABASE_URL, or the machine's own (trust auth). */
export const ADMIN_DATABASE_URL = process.env.DATABASE_URL || "postgres://postgres@127.0.0.1:5432/postgres";

export interface TestDatabase {
  kind: "postgres" | "pglite";
  /** The database URL (postgres only), for child processes. */
  url: string | undefined;
  database: Database;
  /** Closes the connection and drops the database. */
  dispose(): Promise<void>;
}

/** A fresh, migrated database of its own for one test file: real Postgres, or in-memory PGlite. */
export async function createTestDatabase(kind: "postgres" | "pglite" = "postgres"): Promise<TestDatabase> {
  if (kind === "pglite") {
    const database = await openDatabase({ databaseUrl: undefined, dataDir: "memory://" });
    await database.migrate();
    return { kind, url: undefined, database, dispose: () => database.close() };
  }
  const name = `deployq_test_${randomBytes(6).toString("hex")}`;
  const admin = postgres(ADMIN_DATABASE_URL, { max: 1, onnotice: () => {} });
  try {
    await admin.unsafe(`create database ${name}`);
  } finally {
    await admin.end();
  }
  const url = new URL(ADMIN_DATABASE_URL);
  url.pathname = `/${name}`;
  const database = await openDatabase({ databaseUrl: url.toString(), dataDir: "unused" });
  await database.migrate();
  return {
    kind,
    url: url.toString(),
    database,
    async dispose() {
      await database.close();
      const a = postgres(ADMIN_DATABASE_URL, { max: 1, onnotice: () => {} });
      try {
        await a.unsafe(`drop database if exists ${name} with (force)`);
      } finally {
        await a.end();
      }
    },
  };
}
