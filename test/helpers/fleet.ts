import { createServer, type Server } from "node:http";
import { mkdtemp, readlink, rm } from "node:fs/promises";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { eq } from "drizzle-orm";
import { type RolloutHost, rolloutHosts, rollouts } from "../../src/db/schema.ts";
import { type TestDatabase, createTestDatabase } from "./db.ts";
import { type TestRepo, createRepo } from "./git.ts";
import type { FakeGithub } from "./fake-github.ts";
import { type Spawned, spawnDeployq } from "./processes.ts";
import { type PrivateRedis, privateRedis } from "./redis.ts";
import { type Workspace, createWorkspace, followingDeployment, post, pushPayload, signedDelivery } from "./workspace.ts";

/**
 * The configuration of the tests that write a fleet's rows by hand (no hosts run): fleet
 * deployments "app" (web1-3, a canary) and "shop" (s1, s2, parallel 2, rollback), and
 * "plain", which is no fleet.
 */
export const FLEET_FIXTURE_DEPLOYMENTS =
  followingDeployment("app", "/nonexistent/app.git", `hosts = ["web1", "web2", "web3"]\nrollout = { canary = "web1" }`) +
  followingDeployment("shop", "/nonexistent/shop.git", `hosts = ["s1", "s2"]\nrollout = { parallel = 2, on_failure = "rollback" }`) +
  followingDeployment("plain", "/nonexistent/plain.git");

/** One deployq host of a test fleet: its own workspace (data dir, queue root, port), its `serve` process when running. */
export interface FleetHost {
  name: string;
  ws: Workspace;
  /** What its processes run with (DATABASE_URL, REDIS_URL, DEPLOYQ_CONFIG…). */
  env: NodeJS.ProcessEnv;
  proc: Spawned | undefined;
  url: string | undefined;
  /** Starts `deployq serve` and waits until it takes deliveries and its workers run. */
  start(): Promise<void>;
  /** SIGTERM (a clean stop), or SIGKILL. */
  stop(signal?: NodeJS.Signals): Promise<void>;
  /** The release `current` points at (its directory name), if any. */
  current(): Promise<string | undefined>;
}

export interface TestFleet {
  hosts: FleetHost[];
  repo: TestRepo;
  tdb: TestDatabase;
  redis: PrivateRedis[];
  /** Answers each host's health check: 200, or 503 for a host whose name is in it. */
  unhealthy: Set<string>;
  /** When set, decides instead of `unhealthy` whether a host's health check passes. */
  judge: ((host: string) => boolean) | undefined;
  /** Signs and posts a push of `sha` to `host`'s receiver; returns the HTTP status. */
  push(host: FleetHost, sha: string): Promise<number>;
  /** The rollout of `sha` (the newest, if several), once it exists. */
  rolloutOf(sha: string): Promise<typeof rollouts.$inferSelect | undefined>;
  hostRows(rolloutId: number): Promise<RolloutHost[]>;
  dispose(): Promise<void>;
}

/**
 * Three (or `names.length`) deployq hosts on this machine, as a fleet: separate data dirs,
 * queue roots, ports and host_names, one Postgres database, a quorum of private Redis
 * servers. Each deploys deployment "app" (releases, a restart script that takes a moment,
 * a health check served by the test), with `rollout` as given.
 */
export async function createFleet(options: { names?: string[]; rollout: string; redisNodes?: number; restartSeconds?: number; github?: FakeGithub }): Promise<TestFleet> {
  const names = options.names ?? ["web1", "web2", "web3"];
  const dir = await mkdtemp(path.join(tmpdir(), "deployq-fleet-"));
  const repo = await createRepo(dir);
  const tdb = await createTestDatabase("postgres");
  const redis: PrivateRedis[] = [];
  for (let i = 0; i < (options.redisNodes ?? 3); i++) {
    const node = await privateRedis();
    await node.start();
    redis.push(node);
  }
  const unhealthy = new Set<string>();
  // eslint-disable-next-line prefer-const -- assigned below, read by the health server's requests
  let fleet: TestFleet;
  const health: Server = createServer((req, res) => {
    const host = (req.url ?? "/").slice(1);
    const ok = fleet.judge ? fleet.judge(host) : !unhealthy.has(host);
    res.writeHead(ok ? 200 : 503).end(ok ? "ok\n" : "unhealthy\n");
  });
  await new Promise<void>((resolve) => health.listen(0, "127.0.0.1", resolve));
  const healthPort = (health.address() as AddressInfo).port;
  const hosts: FleetHost[] = [];
  for (const name of names) {
    const ws = await createWorkspace({
      topLevel: `host_name = "${name}"\nlock_ttl_ms = 2000${options.github ? "\n[github]\nwrite_interval_ms = 0\ntimeout_ms = 2000\ndeployments = true" : ""}`,
      deployments: followingDeployment(
        "app",
        repo.bare,
        `
hosts = ${JSON.stringify(names)}
rollout = ${options.rollout}
coalesce_ms = 0
restart = { script = ["sh", "-c", "sleep ${options.restartSeconds ?? 0.3}"] }
health = { url = "http://127.0.0.1:${healthPort}/${name}", timeout_s = 1 }
`,
      ),
    });
    const env = {
      ...ws.env,
      DATABASE_URL: tdb.url,
      REDIS_URL: redis.map((r) => r.url).join(","),
      DEPLOYQ_CONFIG: ws.configPath,
      DEPLOYQ_LOG_LEVEL: "info",
      ...(options.github ? { GITHUB_TOKEN: options.github.token, GITHUB_API_URL: options.github.url } : {}),
    };
    const host: FleetHost = {
      name,
      ws,
      env,
      proc: undefined,
      url: undefined,
      async start() {
        const proc = spawnDeployq(["serve"], env, ws.dir);
        host.proc = proc;
        await proc.waitFor(/listening on (http:\/\/127\.0\.0\.1:\d+)/, 60_000);
        host.url = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(proc.output())![1]!;
        await proc.waitFor("deployq started", 60_000);
      },
      async stop(signal = "SIGTERM") {
        const proc = host.proc;
        if (!proc) return;
        proc.child.kill(signal);
        await proc.exited;
        host.proc = undefined;
        host.url = undefined;
      },
      async current() {
        return readlink(path.join(ws.dir, "apps", "app", "current")).then(
          (target) => path.basename(target),
          () => undefined,
        );
      },
    };
    hosts.push(host);
  }
  fleet = {
    hosts,
    repo,
    tdb,
    redis,
    unhealthy,
    judge: undefined,
    async push(host, sha) {
      const request = await signedDelivery(pushPayload({ repository: "octo-org/app", branch: "main", after: sha }));
      return (await post(host.url!, request)).status;
    },
    async rolloutOf(sha) {
      const rows = await tdb.database.db.select().from(rollouts).where(eq(rollouts.sha, sha));
      return rows.sort((a, b) => b.id - a.id)[0];
    },
    hostRows(rolloutId) {
      return tdb.database.db.select().from(rolloutHosts).where(eq(rolloutHosts.rolloutId, rolloutId)).orderBy(rolloutHosts.host);
    },
    async dispose() {
      await Promise.all(hosts.map((h) => h.stop("SIGKILL")));
      await new Promise<void>((resolve) => health.close(() => resolve()));
      for (const node of redis) await node.stop();
      await tdb.dispose();
      for (const h of hosts) await h.ws.dispose();
      await rm(dir, { recursive: true, force: true });
    },
  };
  return fleet;
}
