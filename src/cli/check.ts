import { access, constants, stat } from "node:fs/promises";
import path from "node:path";
import { sql } from "drizzle-orm";
import { type Settings, loadSettings } from "../config/load.ts";
import { getJson, withDatabase } from "./database-access.ts";
import { errorMessage } from "../errors.ts";
import { printJson } from "./output.ts";
import { checkCertbot } from "../steps/certbot.ts";
import type { CheckResult } from "../steps/check-command.ts";
import { checkNginx } from "../steps/nginx.ts";
import { checkPm2 } from "../steps/pm2.ts";


async function nearestExisting(dir: string): Promise<string> {
  let current = path.resolve(dir);
  for (;;) {
    try {
      await stat(current);
      return current;
    } catch {
      const parent = path.dirname(current);
      if (parent === current) return current;
      current = parent;
    }
  }
}

async function checkQueues(settings: Settings): Promise<CheckResult> {
  const root = settings.queuesDir;
  const existing = await nearestExisting(root);
  try {
    await access(existing, constants.W_OK);
  } catch {
    return { name: "queues", ok: false, detail: `${existing} is not writable by this user: fix its owner or set DEPLOYQ_QUEUES_DIR` };
  }
  return { name: "queues", ok: true, detail: existing === root ? `${root} is writable` : `${root} will be created (in ${existing}, writable)` };
}

async function checkDatabase(settings: Settings): Promise<CheckResult> {
  try {
    const detail = await withDatabase(
      settings,
      async (db) => {
        await db.execute(sql`select 1`);
        return settings.secrets.databaseUrl ? "Postgres answers" : `PGlite in ${settings.dataDir} opens`;
      },
      async (base) => {
        // PGlite has one owner: ask the running daemon instead of opening it a second time.
        const health = await getJson<{ checks?: Record<string, string> }>(`${base}/healthz`).catch(() => ({ checks: undefined }));
        const db = health.checks?.database ?? "no answer from /healthz";
        if (db !== "ok") throw new Error(`embedded PGlite is owned by the running deployq at ${base}, which reports: ${db}`);
        return `embedded PGlite, owned by the running deployq at ${base}; it reports: ok`;
      },
    );
    return { name: "database", ok: true, detail };
  } catch (err) {
    return { name: "database", ok: false, detail: `${errorMessage(err)}: check DATABASE_URL (unset, deployq uses PGlite in ${settings.dataDir})` };
  }
}

/** Whether each configured deploy step can run on this host, changing nothing. */
async function checkSteps(settings: Settings): Promise<CheckResult[]> {
  const deployments = [...settings.deployments.values()].filter((d) => d.enabled);
  const results: CheckResult[] = [];
  const pm2Users = deployments.filter((d) => d.restart && "pm2" in d.restart).map((d) => d.name);
  if (pm2Users.length > 0) {
    const pm2 = await checkPm2(settings.pm2Home);
    results.push({ name: "pm2", ok: pm2.ok, detail: `${pm2.detail} (for ${pm2Users.join(", ")})` });
  }
  const withSites = deployments.filter((d) => d.nginx);
  if (withSites.length > 0) {
    const confDirs = [...new Set(withSites.map((d) => d.nginx!.conf_dir))];
    results.push(...(await checkNginx(settings.nginx, confDirs)));
    const wantCertificates = withSites.filter((d) => d.nginx!.certificates).map((d) => d.name);
    if (wantCertificates.length > 0 && settings.certbot) results.push(...(await checkCertbot(settings.certbot)));
    else if (wantCertificates.length > 0) {
      results.push({ name: "certbot", ok: true, detail: `no [certbot] table: no certificates are requested for the sites of ${wantCertificates.join(", ")}` });
    }
  }
  return results;
}

export async function runChecks(settings: Settings): Promise<CheckResult[]> {
  const results: CheckResult[] = [
    { name: "config", ok: true, detail: `${settings.configPath}: ${settings.deployments.size} deployment(s)` },
    settings.secrets.webhookSecrets.length > 0
      ? { name: "secret", ok: true, detail: `${settings.secrets.webhookSecrets.length} webhook secret(s) from GITHUB_WEBHOOK_SECRET` }
      : { name: "secret", ok: false, detail: "GITHUB_WEBHOOK_SECRET is not set: the receiver refuses to start without it" },
  ];
  results.push(await checkDatabase(settings));
  results.push(await checkQueues(settings));
  results.push(...(await checkSteps(settings)));
  return results;
}

export async function runCheck(configPath: string | undefined, json: boolean): Promise<number> {
  let results: CheckResult[];
  try {
    results = await runChecks(loadSettings({ configPath }));
  } catch (err) {
    results = [{ name: "config", ok: false, detail: errorMessage(err) }];
  }
  if (json) printJson(results);
  else for (const r of results) process.stdout.write(`${r.ok ? "ok  " : "FAIL"}  ${r.name.padEnd(12)} ${r.detail}\n`);
  return results.every((r) => r.ok) ? 0 : 1;
}
