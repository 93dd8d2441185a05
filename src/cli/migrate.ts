import { loadSettings } from "../config/load.ts";
import { openDatabase } from "../db/client.ts";

export async function runMigrate(configPath: string | undefined): Promise<void> {
  const settings = loadSettings({ configPath });
  const database = await openDatabase({ databaseUrl: settings.secrets.databaseUrl, dataDir: settings.dataDir });
  try {
    await database.migrate();
    process.stdout.write(`migrations applied to ${database.describe}\n`);
  } finally {
    await database.close();
  }
}
