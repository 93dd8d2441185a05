/**
 * The fleet part of `npm run bench` (issue 13; `--only fleet` runs it alone).
 *
 * Three real `node bin/deployq.js serve` hosts on this machine (their own data dirs, queue
 * roots, ports and host_names), one fresh Postgres database, three private redis-server
 * processes as the lock quorum; one deployment with no commands, no restart and no health
 * check (what is measured is deployq's own coordination, not an app's), listing the three
 * hosts. Baseline, in the same run: the same deployment on a fourth host alone (no `hosts`),
 * on the same database and quorum.
 *
 * 1. Webhook -> last host's switch: a commit is pushed to the bare repository (untimed), then
 *    the clock starts just before the signed POST to web1's receiver and stops at the
 *    latest `finished_at` of the commit's deploy rows on the hosts it must reach (the same
 *    end for the fleet and the single host: the final row, written right after the switch),
 *    for `parallel = 1` and `parallel = 3` (each a fleet of its own), and for the host alone.
 *    The next push waits until the previous one is done everywhere.
 * 2. Notification latency: from the router's transaction (the rollout's created_at, taken
 *    inside it, so a little before its commit: the figure errs high) to the moment each
 *    other host had the entry durably in its queue (its hand-over row's handed_at), with
 *    `rescan_interval_ms` left at its 5 s default: what is measured is LISTEN/NOTIFY, not
 *    the poll. Target p99 < 100 ms.
 *
 * It asserts nothing about time. Everything it starts is stopped through `addCleanup`.
 */
import { randomUUID } from "node:crypto";
import { createServer } from "node:net";
import { mkdir, writeFile } from "node:fs/promises";
import path from "node:path";
import { sign } from "@octokit/webhooks-methods";
import postgres from "postgres";
import { pushPayload } from "../src/push-payload.ts";
import { type DeployBenchOptions, type Distribution, createRepository, distribution, git, until } from "./deploy.ts";

export type FleetBenchOptions = Pick<DeployBenchOptions, "workDir" | "repoRoot" | "secret" | "createDatabase" | "startChild" | "childEnv" | "addCleanup" | "progress"> & {
  /** Measured pushes per configuration. */
  pushes: number;
};

export interface FleetFigures {
  pushes: number;
  /** Webhook -> the last host's final deploy row, ms. */
  single: Distribution;
  parallel1: Distribution;
  parallel3: Distribution;
  /** Router's transaction -> another host's hand-over (entry durable in its queue), ms; both fleets' pushes. */
  notify: Distribution;
  seconds: number;
}

export const TARGET_NOTIFY_P99_MS = 100;

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

export async function runFleetBench(o: FleetBenchOptions): Promise<FleetFigures> {
  const started = performance.now();
  const dir = path.join(o.workDir, "fleet");
  await mkdir(dir, { recursive: true });
  // The deploy bench's repository, with no files but version.txt: what is measured is coordination, not checkout size.
  const { origin, work } = await createRepository(dir, 0);
  let count = 0;
  const commit = async (): Promise<string> => {
    count++;
    await writeFile(path.join(work, "version.txt"), `push ${count}\n`);
    await git(work, "commit", "--quiet", "-a", "-m", `push ${count}`);
    await git(work, "push", "--quiet", "origin", "HEAD:refs/heads/main");
    return git(work, "rev-parse", "HEAD");
  };

  o.progress("  fleet: three redis-server nodes, a fresh database…");
  const redisUrls: string[] = [];
  for (let i = 0; i < 3; i++) {
    const port = await freePort();
    const node = o.startChild(`redis-server ${port}`, "redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], process.env);
    await node.waitFor(/Ready to accept connections/, 15_000);
    redisUrls.push(`redis://127.0.0.1:${port}`);
  }
  const database = await o.createDatabase();
  const sql = postgres(database.url, { max: 1, onnotice: () => {}, connect_timeout: 10 });
  o.addCleanup("close the fleet bench's database client", () => sql.end({ timeout: 5 }));

  /** Starts `deployq serve` as `host` with deployment `name` (listing `hosts`, or none: the host alone). */
  const startHost = async (host: string, name: string, extra: string) => {
    const hostDir = path.join(dir, host);
    await mkdir(hostDir, { recursive: true });
    const configPath = path.join(hostDir, "deployq.toml");
    await writeFile(
      configPath,
      `host_name = "${host}"
data_dir = "./data"
queues_dir = "./queues"

[server]
host = "127.0.0.1"
port = 0

[deployments.${name}]
repository = "octo-org/app"
branch = "main"
remote = ${JSON.stringify(origin)}
path = "./apps/${name}"
coalesce_ms = 0
${extra}
`,
    );
    const child = o.startChild(
      `deployq serve (${host})`,
      process.execPath,
      [path.join(o.repoRoot, "bin/deployq.js"), "serve", "--config", configPath],
      o.childEnv({ GITHUB_WEBHOOK_SECRET: o.secret, DATABASE_URL: database.url, REDIS_URL: redisUrls.join(","), DEPLOYQ_LOG_LEVEL: "warn" }),
    );
    const [, url] = await child.waitFor(/listening on (http:\/\/\S+)/, 60_000);
    await child.waitFor(/send it a signed test delivery/, 60_000);
    return { url: url!, child };
  };

  // The host alone and the two fleets follow the same branch, but each push is posted to one of them only.
  const post = async (url: string, sha: string) => {
    const body = JSON.stringify(pushPayload({ repository: "octo-org/app", branch: "main", after: sha }));
    const signature = await sign(o.secret, body);
    const t0 = Date.now();
    const res = await fetch(`${url}/github-webhook`, {
      method: "POST",
      headers: { "content-type": "application/json", "user-agent": "GitHub-Hookshot/bench", "x-github-event": "push", "x-github-delivery": randomUUID(), "x-github-hook-id": "1", "x-hub-signature-256": signature },
      body,
    });
    await res.text();
    if (res.status !== 202) throw new Error(`fleet bench: the receiver answered ${res.status}`);
    return t0;
  };
  /** The latest final row of `sha` in `deployment` once there is one per host, as ms since the epoch. */
  const lastFinished = (deployment: string, sha: string, hosts: number) =>
    until(`${deployment} to deploy ${sha} on ${hosts} host(s)`, async () => {
      const rows = await sql<Array<{ host: string; finished_at: Date | null; status: string }>>`
        select host, finished_at, status from deploys where deployment = ${deployment} and sha = ${sha} and status in ('succeeded', 'already-deployed', 'failed')`;
      if (rows.some((r) => r.status === "failed")) throw new Error(`fleet bench: a deploy of ${sha} failed`);
      return rows.length >= hosts ? Math.max(...rows.map((r) => r.finished_at!.getTime())) : undefined;
    }, 60_000);

  const single = await startHost("solo", "solo", "");
  const measure = async (deployment: string, url: string, hosts: number) => {
    const times: number[] = [];
    // One unmeasured push first: it fills the empty mirrors.
    for (let i = 0; i <= o.pushes; i++) {
      const sha = await commit();
      const t0 = await post(url, sha);
      const end = await lastFinished(deployment, sha, hosts);
      if (i > 0) times.push(end - t0);
    }
    return times;
  };
  /** The other hosts' hand-overs (the receiving host's own follower is kicked by its router, not notified). */
  const notifyLatencies = async (deployment: string, receiving: string) => {
    const rows = await sql<Array<{ ms: number }>>`
      select extract(epoch from (h.handed_at - r.created_at)) * 1000 as ms
      from rollouts r join rollout_hosts h on h.rollout_id = r.id
      where r.deployment = ${deployment} and h.host <> ${receiving}`;
    return rows.map((r) => Number(r.ms));
  };

  o.progress(`  fleet: the host alone, ${o.pushes} pushes…`);
  const singleTimes = await measure("solo", single.url, 1);
  const figures: Record<string, number[]> = {};
  const notify: number[] = [];
  for (const parallel of [1, 3]) {
    const name = `fleet${parallel}`;
    o.progress(`  fleet: three hosts, parallel = ${parallel}, ${o.pushes} pushes…`);
    const hosts = [];
    for (const host of ["web1", "web2", "web3"]) hosts.push(await startHost(`${host}-${name}`, name, `hosts = ["web1-${name}", "web2-${name}", "web3-${name}"]\nrollout = { parallel = ${parallel} }`));
    figures[name] = await measure(name, hosts[0]!.url, 3);
    notify.push(...(await notifyLatencies(name, `web1-${name}`)).filter(Number.isFinite));
    for (const h of hosts) await h.child.stop();
  }
  await single.child.stop();
  return {
    pushes: o.pushes,
    single: distribution(singleTimes),
    parallel1: distribution(figures.fleet1!),
    parallel3: distribution(figures.fleet3!),
    notify: distribution(notify),
    seconds: (performance.now() - started) / 1000,
  };
}

export function fleetReport(f: FleetFigures, table: (rows: string[][]) => string): string {
  const row = (label: string, d: Distribution, base?: Distribution) => [label, String(d.n), d.p50.toFixed(0), d.p90.toFixed(0), d.max.toFixed(0), d.mean.toFixed(0), base ? `${(d.mean / base.mean).toFixed(2)}x` : ""];
  return [
    `fleet: webhook -> the last host's final deploy row, ${f.pushes} pushes each (3 deployq serve hosts, one Postgres, 3 redis-server nodes; no commands, restart or health check)`,
    table([
      ["", "n", "p50 ms", "p90 ms", "max ms", "mean ms", "vs one host"],
      row("one host (no hosts key)", f.single),
      row("3 hosts, parallel = 1", f.parallel1, f.single),
      row("3 hosts, parallel = 3", f.parallel3, f.single),
    ]),
    `notification: router's transaction -> the entry durable in another host's queue (LISTEN/NOTIFY; rescan every 5 s), n = ${f.notify.n}: ` +
      `p50 ${f.notify.p50.toFixed(1)} ms, p99 ${f.notify.p99.toFixed(1)} ms, max ${f.notify.max.toFixed(1)} ms ` +
      `(target p99 < ${TARGET_NOTIFY_P99_MS} ms: ${f.notify.p99 < TARGET_NOTIFY_P99_MS ? "met" : "NOT met"})`,
    `(${f.seconds.toFixed(0)} s)`,
  ].join("\n");
}
