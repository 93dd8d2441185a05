import { access, constants, stat } from "node:fs/promises";
import path from "node:path";
import { sql } from "drizzle-orm";
import { type Settings, isFleet, loadSettings, notifierProblems, requireFleetServices } from "../config/load.ts";
import { seenHosts } from "../fleet/rollouts.ts";
import { embeddedDatabaseMissing, getJson, withDatabase } from "./database-access.ts";
import { gitReason, shownRemote } from "./deploy.ts";
import { errorMessage } from "../errors.ts";
import { pingLockService } from "../lock/ping.ts";
import { lsRemote } from "../steps/git.ts";
import { branchMatches } from "../config/branch.ts";
import { printJson } from "./output.ts";
import { META_CACHE_FILE, cachedHookRanges } from "../github/meta.ts";
import { parseRange } from "../http/address-range.ts";
import { checkCertbot } from "../steps/certbot.ts";
import type { CheckResult } from "../steps/check-command.ts";
import { checkNginx } from "../steps/nginx/check.ts";
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

/** A directory can be written, or created inside the nearest existing parent. */
async function checkWritable(dir: string, what: string): Promise<{ ok: boolean; detail: string }> {
  const existing = await nearestExisting(dir);
  try {
    await access(existing, constants.W_OK);
  } catch {
    return { ok: false, detail: `${existing} is not writable by this user, so ${what} cannot be made or used: fix its owner` };
  }
  return { ok: true, detail: existing === dir ? `${dir} is writable` : `${dir} will be created (in ${existing}, writable)` };
}

async function checkQueues(settings: Settings): Promise<CheckResult> {
  const writable = await checkWritable(settings.queuesDir, "the queue root");
  return { name: "queues", ok: writable.ok, detail: writable.ok ? writable.detail : `${writable.detail}, or set DEPLOYQ_QUEUES_DIR` };
}

/** Where DATABASE_URL points, for a hint: user, host, port and database, never the password. */
function describeDatabaseUrl(url: string): string {
  try {
    const u = new URL(url);
    return `${u.username ? `${decodeURIComponent(u.username)}@` : ""}${u.hostname}${u.port ? `:${u.port}` : ""}${u.pathname.length > 1 ? u.pathname : " (no database named: the user's own)"}`;
  } catch {
    return "an unparseable URL";
  }
}

async function checkDatabase(settings: Settings): Promise<CheckResult> {
  const url = settings.secrets.databaseUrl;
  // A check creates nothing: opening PGlite where there is none yet would make a whole cluster.
  const missing = embeddedDatabaseMissing(settings);
  if (missing) {
    const queues = await checkWritable(settings.dataDir, "the data directory");
    if (!queues.ok) return { name: "database", ok: false, detail: queues.detail };
    return { name: "database", ok: true, detail: `PGlite in ${missing}: not created yet: the daemon creates it at first start (${queues.detail})` };
  }
  try {
    const detail = await withDatabase(
      settings,
      async (db) => {
        await db.execute(sql`select 1`);
        return url ? `Postgres answers (${describeDatabaseUrl(url)})` : `PGlite in ${settings.dataDir} opens`;
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
    const hint = url
      ? `DATABASE_URL points at ${describeDatabaseUrl(url)}: is that server running and reachable from here, does the database exist, may that user log in?`
      : `DATABASE_URL is unset, so deployq uses PGlite in ${settings.dataDir}`;
    return { name: "database", ok: false, detail: `${errorMessage(err)}: ${hint}` };
  }
}

/** The lock service the workers would use: every REDIS_URL node answers PING (a quorum must), or in-process locks. */
async function checkLocks(settings: Settings): Promise<CheckResult> {
  const urls = settings.secrets.redisUrls;
  if (urls.length === 0) return { name: "locks", ok: true, detail: "in-process (no REDIS_URL): one workers process only" };
  const ping = await pingLockService(urls);
  return ping.ok
    ? { name: "locks", ok: true, detail: `redlock on REDIS_URL: ${ping.detail}` }
    : { name: "locks", ok: false, detail: `no quorum of REDIS_URL answers PING (${ping.detail}): start Dragonfly/Redis or fix REDIS_URL; until then deploys wait in their queues` };
}

/** Each enabled deployment's remote answers `git ls-remote` (no prompt, a timeout), and has the branch it follows. */
async function checkRemotes(settings: Settings): Promise<CheckResult[]> {
  const deployments = [...settings.deployments.values()].filter((d) => d.enabled);
  return Promise.all(
    deployments.map(async (d): Promise<CheckResult> => {
      const remote = shownRemote(d.remote);
      let heads: Map<string, string>;
      try {
        heads = await lsRemote(d.remote, { timeoutMs: 20_000 });
      } catch (err) {
        const reason = gitReason(err, d.remote);
        return { name: "remote", ok: false, detail: `${d.name}: git ls-remote ${remote} failed (${reason}): check the remote's address and this user's access (ssh key, token)` };
      }
      const followed = [...heads.keys()].filter((b) => branchMatches(d.branch, b));
      const glob = /[*?]/.test(d.branch);
      const branches =
        followed.length === 0
          ? `no branch ${glob ? "matching " : ""}${d.branch} yet: a push to one deploys it`
          : glob
            ? `${followed.length} branch${followed.length === 1 ? "" : "es"} matching ${d.branch}`
            : `${d.branch} at ${heads.get(d.branch)!.slice(0, 7)}`;
      return { name: "remote", ok: true, detail: `${d.name}: ${remote} answers, ${branches}` };
    }),
  );
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

/** [[notify]]: each notifier's URL (and a json one's key) is set; none is called (that would send a message). */
function checkNotifiers(settings: Settings): CheckResult[] {
  return settings.notify.map((n) => {
    const problems = notifierProblems(n);
    const of = n.deployments ? [...n.deployments].join(", ") : "every deployment";
    return problems.length > 0
      ? { name: "notify", ok: false, detail: `${problems.join("; ")}: the workers refuse to start until then` }
      : { name: "notify", ok: true, detail: `${n.name}: ${n.format}, of ${[...n.events].join(", ")} for ${of} (its URL is set; check does not call it)` };
  });
}

/**
 * [github] allowlist: GitHub's GET /meta answers hook ranges from here (asked once, nothing
 * written), and the receiver can see GitHub's address (behind a proxy on this host, only
 * with trust_proxy).
 */
async function checkAllowlist(settings: Settings): Promise<CheckResult[]> {
  if (!settings.github.allowlist) return [];
  const results: CheckResult[] = [];
  const url = `${settings.github.apiUrl}/meta`;
  const cached = await cachedHookRanges(settings.dataDir, settings.github.apiUrl);
  const cache = cached ? `; cached in ${path.join(settings.dataDir, META_CACHE_FILE)}: ${cached.hooks.length} ranges from ${cached.fetchedAt}` : "";
  try {
    const res = await fetch(url, {
      headers: { accept: "application/vnd.github+json", "user-agent": "deployq", ...(settings.secrets.githubToken ? { authorization: `Bearer ${settings.secrets.githubToken}` } : {}) },
      signal: AbortSignal.timeout(settings.github.timeoutMs),
    });
    const body = res.ok ? ((await res.json()) as { hooks?: unknown }) : (await res.arrayBuffer(), undefined);
    const hooks = Array.isArray(body?.hooks) ? body.hooks.filter((h): h is string => typeof h === "string" && parseRange(h) !== undefined) : [];
    results.push(
      hooks.length > 0
        ? { name: "allowlist", ok: true, detail: `${url} lists ${hooks.length} webhook source ranges${cache}` }
        : { name: "allowlist", ok: false, detail: `${url} answered ${res.status}${res.ok ? " without `hooks` ranges (GitHub Enterprise Server may not list them: turn [github] allowlist off)" : ""}${cache || "; nothing is cached: deliveries get 503 until the ranges are fetched"}` },
    );
  } catch (err) {
    results.push({ name: "allowlist", ok: false, detail: `cannot reach ${url} (${errorMessage(err)}): let this host reach GitHub's API (GITHUB_API_URL)${cache || "; nothing is cached: deliveries get 503 until the ranges are fetched"}` });
  }
  const loopback = ["127.0.0.1", "::1", "localhost"].includes(settings.host);
  if (loopback && settings.trustProxy.length === 0) {
    results.push({ name: "trust_proxy", ok: false, detail: `the receiver listens on ${settings.host} and trusts no proxy: the reverse proxy in front of it is every delivery's client, outside GitHub's ranges, so all are refused; set [server] trust_proxy = ["127.0.0.1"] and have the proxy send X-Forwarded-For` });
  } else if (settings.trustProxy.length > 0) {
    results.push({ name: "trust_proxy", ok: true, detail: `X-Forwarded-For is believed from ${settings.trustProxy.join(", ")}` });
  }
  return results;
}

/** A host of a fleet counts as seen when its workers checked in this recently (they do at every rescan). */
const SEEN_WITHIN_MS = 60_000;

/** Each fleet deployment: its services are shared, and which of its hosts have checked in lately. */
async function checkFleet(settings: Settings): Promise<CheckResult[]> {
  const fleet = [...settings.deployments.values()].filter((d) => d.enabled && isFleet(d));
  if (fleet.length === 0) return [];
  try {
    requireFleetServices(settings);
  } catch (err) {
    return [{ name: "fleet", ok: false, detail: errorMessage(err) }];
  }
  let seen: Map<string, Date>;
  try {
    seen = await withDatabase(
      settings,
      async (db) => new Map((await seenHosts(db)).map((h) => [h.host, h.lastSeen])),
      async () => new Map(),
    );
  } catch (err) {
    return [{ name: "fleet", ok: false, detail: `cannot read which hosts have been seen: ${errorMessage(err)}` }];
  }
  const now = Date.now();
  return fleet.map((d): CheckResult => {
    const hosts = d.hosts!;
    const recent = hosts.filter((h) => now - (seen.get(h)?.getTime() ?? 0) <= SEEN_WITHIN_MS);
    const missing = hosts.filter((h) => !recent.includes(h));
    const ago = (h: string) => {
      const at = seen.get(h);
      return at ? `last seen ${Math.round((now - at.getTime()) / 1000)} s ago` : "never seen";
    };
    const here = hosts.includes(settings.hostName) ? `this host is ${settings.hostName}` : `this host (${settings.hostName}) is not one of them: it routes the pushes, and deploys none`;
    return missing.length === 0
      ? { name: "fleet", ok: true, detail: `${d.name}: all ${hosts.length} hosts seen in the last minute (${hosts.join(", ")}); ${here}` }
      : {
          name: "fleet",
          ok: false,
          detail:
            `${d.name}: ${recent.length > 0 ? `seen: ${recent.join(", ")}; ` : ""}not seen in the last minute: ${missing.map((h) => `${h} (${ago(h)})`).join(", ")}: ` +
            `start deployq's workers there (with this host_name), or remove the host from hosts; ${here}`,
        };
  });
}

export async function runChecks(settings: Settings): Promise<CheckResult[]> {
  const results: CheckResult[] = [
    { name: "config", ok: true, detail: `${settings.configPath}: ${settings.deployments.size} deployment(s)` },
    settings.secrets.webhookSecrets.length > 0
      ? { name: "secret", ok: true, detail: `${settings.secrets.webhookSecrets.length} webhook secret(s) from GITHUB_WEBHOOK_SECRET` }
      : { name: "secret", ok: false, detail: "GITHUB_WEBHOOK_SECRET is not set: the receiver refuses to start without it" },
  ];
  results.push(await checkDatabase(settings));
  results.push(await checkLocks(settings));
  results.push(await checkQueues(settings));
  results.push(...(await checkRemotes(settings)));
  results.push(...(await checkSteps(settings)));
  results.push(...(await checkAllowlist(settings)));
  results.push(...checkNotifiers(settings));
  results.push(...(await checkFleet(settings)));
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
