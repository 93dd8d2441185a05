/**
 * The dashboard and /metrics under a realistic load of history (bench/run.ts, section
 * `dashboard`): a real `node bin/deployq.js receiver` with 100 deployments in its
 * configuration, 10,000 entries waiting in their queues (100 each) and 10,000 rows in
 * `deploys` (100 per deployment). The bench logs in through the login form with
 * DEPLOYQ_ADMIN_TOKEN, then requests, one after the other and in turns:
 *
 * - GET /dashboard/ (the overview: every deployment's status, queue depth, last deploy);
 * - GET /metrics (the queue gauges read from disk at each scrape);
 * - the baseline: GET /dashboard/login without a session, a page rendered by the same
 *   server with no data behind it (HTTP, Express and the page layout alone).
 *
 * Each request is timed from just before fetch() to the end of its body. Nothing is asserted.
 */
import { randomUUID } from "node:crypto";
import { mkdir, writeFile } from "node:fs/promises";
import path from "node:path";
import postgres from "postgres";
import { pushPayload } from "../src/push-payload.ts";
import { type QueueEntry, serializeEntry } from "../src/queue/entry.ts";
import { entryName } from "../src/queue/entry-name.ts";
import { type DeployBenchOptions, type Distribution, distribution } from "./deploy.ts";

export const TARGET_SCRAPE_MS = 50;
export const TARGET_OVERVIEW_P99_MS = 100;
const ADMIN_TOKEN = "bench-admin-token-dashboard";

export interface DashboardBenchOptions extends Pick<DeployBenchOptions, "workDir" | "repoRoot" | "secret" | "cpuProfileDir" | "createDatabase" | "startChild" | "childEnv" | "addCleanup" | "progress"> {
  deployments: number;
  entries: number;
  deploys: number;
  /** Measured requests of each kind. */
  requests: number;
}

export interface DashboardFigures {
  deployments: number;
  entries: number;
  deploys: number;
  overview: Distribution;
  metrics: Distribution;
  baseline: Distribution;
  overviewBytes: number;
  metricsBytes: number;
}

const name = (i: number) => `app-${String(i).padStart(3, "0")}`;

export async function runDashboardBench(o: DashboardBenchOptions): Promise<DashboardFigures> {
  const dir = path.join(o.workDir, "dashboard");
  const queues = path.join(dir, "queues");
  await mkdir(dir, { recursive: true });
  let config = `data_dir = "./data"
queues_dir = "./queues"

[server]
host = "127.0.0.1"
port = 0
`;
  for (let i = 0; i < o.deployments; i++) {
    config += `
[deployments.${name(i)}]
repository = "octo-org/${name(i)}"
branch = "main"
remote = "/nonexistent/${name(i)}.git"
path = "./apps/${name(i)}"
`;
  }
  const configPath = path.join(dir, "deployq.toml");
  await writeFile(configPath, config);

  // The queued entries: whole files as the receiver writes them, spread evenly over the deployments.
  o.progress(`  dashboard: writing ${o.entries} queued entries over ${o.deployments} deployment queues…`);
  for (let i = 0; i < o.deployments; i++) await mkdir(path.join(queues, "deployments", name(i)), { recursive: true });
  const body = pushPayload({ repository: "octo-org/app-000", branch: "main", after: "a".repeat(40) });
  const writes: Array<Promise<void>> = [];
  for (let i = 0; i < o.entries; i++) {
    const delivery = randomUUID();
    const entry: QueueEntry = { event: "push", delivery_id: delivery, hook_id: "123456", received_at: new Date().toISOString(), source: "github", payload: body };
    writes.push(writeFile(path.join(queues, "deployments", name(i % o.deployments), entryName(delivery)), serializeEntry(entry)));
    if (writes.length >= 200) await Promise.all(writes.splice(0));
  }
  await Promise.all(writes);

  const database = await o.createDatabase();
  o.progress(`  dashboard: starting node bin/deployq.js receiver with ${o.deployments} deployments…`);
  const receiver = o.startChild(
    "deployq receiver (dashboard)",
    process.execPath,
    [...(o.cpuProfileDir ? ["--cpu-prof", "--cpu-prof-dir", o.cpuProfileDir] : []), path.join(o.repoRoot, "bin/deployq.js"), "receiver", "--config", configPath],
    o.childEnv({ GITHUB_WEBHOOK_SECRET: o.secret, DATABASE_URL: database.url, DEPLOYQ_LOG_LEVEL: "warn", DEPLOYQ_ADMIN_TOKEN: ADMIN_TOKEN }),
  );
  const [, url] = await receiver.waitFor(/listening on (http:\/\/\S+)/, 60_000);
  const sql = postgres(database.url, { max: 1, onnotice: () => {}, connect_timeout: 10 });
  o.addCleanup("close the dashboard bench's database client", () => sql.end({ timeout: 5 }));
  // The receiver listens before it migrates: wait for its tables.
  for (let tries = 0; ; tries++) {
    const [row] = await sql<Array<{ t: string | null }>>`select to_regclass('deploys')::text as t`;
    if (row?.t) break;
    if (tries > 600) throw new Error(`dashboard bench: the receiver did not create its tables\n${receiver.output().slice(-2000)}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  // The history: 100 rows per deployment over the last week, mostly succeeded, some superseded and failed.
  o.progress(`  dashboard: inserting ${o.deploys} deploy rows…`);
  await sql`
    insert into deploys (deployment, entry, delivery_id, event, ref, sha, status, attempt, host, pid, started_at, finished_at, duration_ms, release, log_path, error)
    select 'app-' || lpad((i % ${o.deployments})::text, 3, '0'),
           lpad((1700000000000000000 + i)::text, 19, '0') || '-' || md5(i::text) || '.json',
           md5(i::text), 'push', 'refs/heads/main', md5(i::text) || substr(md5(i::text), 1, 8),
           case when i % 10 = 3 then 'superseded' when i % 23 = 5 then 'failed' else 'succeeded' end,
           1, 'bench', 1,
           now() - ((${o.deploys} - i) * interval '1 minute'),
           now() - ((${o.deploys} - i) * interval '1 minute') + interval '40 seconds',
           40000,
           to_char(now() - ((${o.deploys} - i) * interval '1 minute'), 'YYYYMMDD"T"HH24MISS".000Z"') || '-' || substr(md5(i::text), 1, 7),
           null,
           case when i % 23 = 5 then 'npm ci exited with code 1' else null end
    from generate_series(1, ${o.deploys}) as i`;
  await sql`analyze deploys`;

  // A real session: the login form, as a browser posts it.
  const login = await fetch(`${url}/dashboard/login`, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({ token: ADMIN_TOKEN }).toString(),
    redirect: "manual",
  });
  await login.text();
  const cookie = login.headers.get("set-cookie")?.split(";")[0];
  if (login.status !== 303 || !cookie) throw new Error(`dashboard bench: login answered ${login.status} without a session cookie`);

  const timed = async (target: string, headers: Record<string, string>, expect: (text: string) => boolean): Promise<{ ms: number; bytes: number }> => {
    const t0 = performance.now();
    const res = await fetch(`${url}${target}`, { headers, redirect: "manual" });
    const text = await res.text();
    const ms = performance.now() - t0;
    if (res.status !== 200 || !expect(text)) throw new Error(`dashboard bench: GET ${target} answered ${res.status}: ${text.slice(0, 300)}`);
    return { ms, bytes: Buffer.byteLength(text) };
  };
  const last = name(o.deployments - 1);
  const kinds = {
    overview: () => timed("/dashboard/", { cookie }, (t) => t.includes(last)),
    metrics: () => timed("/metrics", {}, (t) => t.includes(`deployq_queue_entries{queue="${last}"}`)),
    baseline: () => timed("/dashboard/login", {}, (t) => t.includes("token")),
  };
  const samples: Record<keyof typeof kinds, number[]> = { overview: [], metrics: [], baseline: [] };
  const bytes = { overview: 0, metrics: 0, baseline: 0 };
  const warmup = Math.min(20, Math.ceil(o.requests / 10));
  o.progress(`  dashboard: ${warmup} warm-up + ${o.requests} requests each of the overview, /metrics and the login page, in turns…`);
  for (let i = 0; i < warmup + o.requests; i++) {
    for (const [kind, get] of Object.entries(kinds) as Array<[keyof typeof kinds, () => Promise<{ ms: number; bytes: number }>]>) {
      const r = await get();
      if (i >= warmup) samples[kind].push(r.ms);
      bytes[kind] = r.bytes;
    }
  }
  await receiver.stop();
  return {
    deployments: o.deployments,
    entries: o.entries,
    deploys: o.deploys,
    overview: distribution(samples.overview),
    metrics: distribution(samples.metrics),
    baseline: distribution(samples.baseline),
    overviewBytes: bytes.overview,
    metricsBytes: bytes.metrics,
  };
}

export function dashboardReport(f: DashboardFigures, table: (rows: string[][]) => string): string {
  const row = (label: string, d: Distribution) => [label, String(d.n), d.p50.toFixed(2), d.p90.toFixed(2), d.p99.toFixed(2), d.max.toFixed(2), d.mean.toFixed(2), `${(d.p99 / f.baseline.p99).toFixed(1)}x`];
  const met = (ok: boolean) => (ok ? "met" : "NOT met");
  return [
    `dashboard and /metrics: ${f.deployments} deployments, ${f.entries} queued entries, ${f.deploys} deploy rows; sequential requests, in turns`,
    table([
      ["request", "n", "p50 ms", "p90 ms", "p99 ms", "max ms", "mean ms", "p99 / baseline"],
      row(`GET /dashboard/ (overview, ${(f.overviewBytes / 1024).toFixed(0)} KiB)`, f.overview),
      row(`GET /metrics (${(f.metricsBytes / 1024).toFixed(0)} KiB)`, f.metrics),
      row("baseline: GET /dashboard/login (no data)", f.baseline),
    ]),
    `overview p99 ${f.overview.p99.toFixed(1)} ms (target < ${TARGET_OVERVIEW_P99_MS} ms: ${met(f.overview.p99 < TARGET_OVERVIEW_P99_MS)}); ` +
      `/metrics scrape p99 ${f.metrics.p99.toFixed(1)} ms (target < ${TARGET_SCRAPE_MS} ms: ${met(f.metrics.p99 < TARGET_SCRAPE_MS)})`,
  ].join("\n");
}
