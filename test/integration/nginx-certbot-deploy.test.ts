import { mkdtemp, readFile, readdir, readlink, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { and, eq } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadSettings } from "../../src/config/load.ts";
import { type Daemon, startDaemon } from "../../src/daemon.ts";
import { deploys } from "../../src/db/schema.ts";
import { silentLogger } from "../../src/log.ts";
import { NGINX_LOCK, lockName, withLockPrefix } from "../../src/lock/lock.ts";
import { createRedlockLocks } from "../../src/lock/redlock.ts";
import { readReleaseMeta } from "../../src/steps/release.ts";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import { type TestRepo, createRepo } from "../helpers/git.ts";
import { freePort } from "../helpers/load.ts";
import { runDeployq, spawnDeployq } from "../helpers/processes.ts";
import { privateRedis } from "../helpers/redis.ts";
import { type PrivateNginx, serverBlock, startNginx } from "../helpers/nginx.ts";
import { type Pebble, certbotDirs, certificateNames, readRecordedCalls, recordingCommand, startPebble } from "../helpers/pebble.ts";
import { until } from "../helpers/wait.ts";
import { type Workspace, createWorkspace, followingDeployment, queuePush } from "../helpers/workspace.ts";

/**
 * Two deployments whose repositories carry nginx sites, deployed by the daemon into a
 * private nginx, with certificates from the real certbot against pebble (through a
 * recorder that notes each call's argv, start and end).
 */
describe("nginx sites and certificates through the daemon", () => {
  let dir: string;
  let nginx: PrivateNginx;
  let pebble: Pebble;
  let ws: Workspace;
  let tdb: TestDatabase;
  let daemon: Daemon;
  let record: string;
  const repos: Record<string, TestRepo> = {};
  const ports: Record<string, number> = {};

  const site = (name: string, body: string, names: string) => serverBlock({ port: ports[name]!, body, serverName: names });
  const get = async (name: string) => (await fetch(`http://127.0.0.1:${ports[name]}/`)).text();
  const finished = (deployment: string, sha: string) =>
    until(`the deploy of ${deployment} ${sha}`, async () => {
      const rows = await tdb.database.db.select().from(deploys).where(and(eq(deploys.deployment, deployment), eq(deploys.sha, sha)));
      return rows.find((r) => r.status !== "running" && r.status !== "retrying");
    }, 120_000);

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "deployq-sites-"));
    [nginx, pebble] = await Promise.all([startNginx(), startPebble()]);
    record = path.join(dir, "certbot-calls.jsonl");
    const certbot = certbotDirs(dir);
    for (const name of ["shop", "blog"]) {
      repos[name] = await createRepo(dir, name);
      ports[name] = await freePort();
    }
    const sites = `nginx = { sites_dir = "nginx/sites", conf_dir = "${nginx.confDir}" }`;
    ws = await createWorkspace({
      topLevel: `
[nginx]
test_command = ${JSON.stringify(nginx.host.test_command)}
reload_command = ${JSON.stringify(nginx.host.reload_command)}
pid_file = "${nginx.host.pid_file}"

[certbot]
command = ${JSON.stringify(recordingCommand(record, pebble.certbotCommand(dir)))}
email = "ops@example.com"
webroot = "${certbot.webroot}"
`,
      deployments: followingDeployment("shop", repos.shop!.bare, sites) + followingDeployment("blog", repos.blog!.bare, sites),
    });
    tdb = await createTestDatabase("pglite");
    daemon = await startDaemon({ settings: ws.settings, role: "serve", logger: silentLogger(), database: tdb.database });
  });

  afterAll(async () => {
    await daemon?.close();
    await tdb?.dispose();
    await Promise.all([nginx?.stop(), pebble?.stop()]);
    await ws?.dispose();
    await rm(dir, { recursive: true, force: true });
  });

  it("deploys both sites with their certificates, one certbot at a time", { timeout: 180_000 }, async () => {
    const shop = await repos.shop!.commit({ "nginx/sites/shop.conf": site("shop", "shop v1", "shop.example.com www.shop.example.com _") });
    const blog = await repos.blog!.commit({ "nginx/sites/blog.conf": site("blog", "blog v1", "blog.example.com") });
    await Promise.all([queuePush(ws.queuesDir, { deployment: "shop" }, "octo-org/shop", shop), queuePush(ws.queuesDir, { deployment: "blog" }, "octo-org/blog", blog)]);
    expect((await finished("shop", shop)).status).toBe("succeeded");
    expect((await finished("blog", blog)).status).toBe("succeeded");

    expect(await get("shop")).toBe("shop v1");
    expect(await get("blog")).toBe("blog v1");
    expect((await readdir(nginx.confDir)).sort()).toEqual(["blog.conf", "shop.conf"]);
    const live = path.join(certbotDirs(dir).configDir, "live");
    expect(await certificateNames(path.join(live, "shop", "cert.pem"))).toEqual(["shop.example.com", "www.shop.example.com"]);
    expect(await certificateNames(path.join(live, "blog", "cert.pem"))).toEqual(["blog.example.com"]);

    const calls = await readRecordedCalls(record);
    expect(calls).toHaveLength(2);
    const [first, second] = calls;
    expect(first!.end, "the first certbot run ended before the second started").toBeLessThanOrEqual(second!.start);
  });

  it("leaves an unchanged domain list alone, and reissues the same certificate when a name is added", { timeout: 180_000 }, async () => {
    const cert = path.join(certbotDirs(dir).configDir, "live", "shop", "cert.pem");
    const before = await readFile(cert);
    const v2 = await repos.shop!.commit({ "nginx/sites/shop.conf": site("shop", "shop v2", "shop.example.com www.shop.example.com _") });
    await queuePush(ws.queuesDir, { deployment: "shop" }, "octo-org/shop", v2);
    expect((await finished("shop", v2)).status).toBe("succeeded");
    expect(await get("shop")).toBe("shop v2");
    expect(await readRecordedCalls(record)).toHaveLength(2);
    expect(await readFile(cert)).toEqual(before);

    const v3 = await repos.shop!.commit({ "nginx/sites/shop.conf": site("shop", "shop v3", "shop.example.com www.shop.example.com api.shop.example.com") });
    await queuePush(ws.queuesDir, { deployment: "shop" }, "octo-org/shop", v3);
    expect((await finished("shop", v3)).status).toBe("succeeded");
    const calls = await readRecordedCalls(record);
    expect(calls).toHaveLength(3);
    expect(calls[2]!.argv.slice(calls[2]!.argv.indexOf("--cert-name"))).toEqual([
      "--cert-name", "shop", "--email", "ops@example.com", "-d", "api.shop.example.com", "-d", "shop.example.com", "-d", "www.shop.example.com",
    ]);
    expect(await certificateNames(cert)).toEqual(["api.shop.example.com", "shop.example.com", "www.shop.example.com"]);
    expect((await readdir(path.join(certbotDirs(dir).configDir, "live"))).filter((d) => d.startsWith("shop"))).toEqual(["shop"]);
    expect(await get("shop")).toBe("shop v3");
  });

  it("rolls a release with a broken site back: the site file stays byte for byte, the previous release serves, the new one is bad", { timeout: 180_000 }, async () => {
    const conf = path.join(nginx.confDir, "shop.conf");
    const good = await readFile(conf);
    const current = path.join(ws.dir, "apps", "shop", "current");
    const goodRelease = await readlink(current);
    const v4 = await repos.shop!.commit({ "nginx/sites/shop.conf": site("shop", "shop v4", "shop.example.com").replace("default_type", "defualt_type") });
    await queuePush(ws.queuesDir, { deployment: "shop" }, "octo-org/shop", v4);
    const row = await finished("shop", v4);
    expect(row.status).toBe("failed");
    expect(row.error).toMatch(/\[emerg\] unknown directive "defualt_type"/);
    expect(await readFile(conf)).toEqual(good);
    expect(await readlink(current)).toBe(goodRelease);
    expect(await get("shop")).toBe("shop v3");
    const releases = path.join(ws.dir, "apps", "shop", "releases");
    const bad = (await readdir(releases)).find((r) => r.endsWith(v4.slice(0, 7)));
    expect((await readReleaseMeta(path.join(releases, bad!)))?.bad?.reason).toMatch(/unknown directive/);
    // Its names are a subset of what the certificate holds: certbot was not run for it.
    expect(await readRecordedCalls(record)).toHaveLength(3);
  });

  it("drops names from the certificate only once the site file without them is live", { timeout: 180_000 }, async () => {
    const v5 = await repos.shop!.commit({ "nginx/sites/shop.conf": site("shop", "shop v5", "shop.example.com") });
    await queuePush(ws.queuesDir, { deployment: "shop" }, "octo-org/shop", v5);
    expect((await finished("shop", v5)).status).toBe("succeeded");
    expect(await get("shop")).toBe("shop v5");
    const calls = await readRecordedCalls(record);
    expect(calls).toHaveLength(4);
    expect(calls[3]!.argv.slice(calls[3]!.argv.indexOf("--cert-name"))).toEqual(["--cert-name", "shop", "--email", "ops@example.com", "-d", "shop.example.com"]);
    expect(await certificateNames(path.join(certbotDirs(dir).configDir, "live", "shop", "cert.pem"))).toEqual(["shop.example.com"]);
  });

  it("shows each site and its certificate in status, and `sites remove` takes a deployment's sites out once its nginx key is gone", { timeout: 180_000 }, async () => {
    const shopConf = path.join(nginx.confDir, "shop.conf");
    const blogConf = path.join(nginx.confDir, "blog.conf");
    const blogBytes = await readFile(blogConf);
    const env = { ...ws.env, DATABASE_URL: "", REDIS_URL: "" };
    const text = await readFile(ws.configPath, "utf8");
    const [head, blogPart] = text.split("[deployments.blog]") as [string, string];
    const withoutShopSites = path.join(ws.dir, "without-shop-sites.toml");
    await writeFile(withoutShopSites, `${head.replace(/^nginx = \{.*\}$/m, "")}[deployments.blog]${blogPart}`);
    const withoutBlog = path.join(ws.dir, "without-blog.toml");
    await writeFile(withoutBlog, head.replace(/^nginx = \{.*\}$/m, ""));

    // Still configured to deploy sites: its next deploy would put them back.
    const configured = await runDeployq(["--config", ws.configPath, "sites", "remove", "shop"], env);
    expect(configured.code).toBe(2);
    expect(configured.stderr).toBe(
      `deployq: shop still deploys nginx sites (its nginx key in ${ws.configPath}), so its next deploy would put them back: remove that key and restart the workers first, then run this again\n`,
    );
    // The workers run here with in-process locks, so deployq:nginx lives in them.
    const running = await runDeployq(["--config", withoutShopSites, "sites", "remove", "shop"], env);
    expect(running.code).toBe(2);
    expect(running.stderr).toContain(`deployq process ${process.pid} runs the workers with in-process locks (REDIS_URL is unset)`);
    expect((await readdir(nginx.confDir)).sort()).toEqual(["blog.conf", "shop.conf"]);

    await daemon.close();
    expect((await runDeployq(["--config", withoutShopSites, "migrate"], env)).code).toBe(0);
    const status = await runDeployq(["--config", withoutShopSites, "status"], env);
    expect(status.code).toBe(0);
    expect(status.stdout).toMatch(new RegExp(`  sites: +shop  ${shopConf}  certificate: shop\\.example\\.com \\(.+ ago\\)\n +\\(no nginx key any more: these files stay live; \`deployq sites remove shop\` takes them out\\)\n`));
    expect(status.stdout).toMatch(new RegExp(`  sites: +blog  ${blogConf}  certificate: blog\\.example\\.com \\(.+ ago\\)\n\n`));

    const removed = await runDeployq(["--config", withoutShopSites, "sites", "remove", "shop"], env);
    expect(removed.stderr).toBe("");
    expect(removed.code).toBe(0);
    expect(removed.stdout).toContain(`removed shop: ${shopConf} (its certificate stays; \`certbot delete --cert-name shop\` as root removes it)\nnginx tested, reloaded and verified without them\n`);
    expect(await readdir(nginx.confDir)).toEqual(["blog.conf"]);
    expect(await readFile(blogConf)).toEqual(blogBytes);
    await expect(get("shop")).rejects.toThrow();
    expect(await get("blog")).toBe("blog v1");
    expect((await runDeployq(["--config", withoutShopSites, "sites", "remove", "shop"], env)).stdout).toBe("shop owns no nginx site files: nothing to remove\n");
    expect((await runDeployq(["--config", withoutShopSites, "status", "shop"], env)).stdout).not.toContain("sites:");

    // A deployment gone from the configuration: status still names its live files, and with
    // REDIS_URL the command waits for the nginx lock while someone else holds it.
    const gone = await runDeployq(["--config", withoutBlog, "status"], env);
    expect(gone.stdout).toContain(`blog  (no longer configured) still owns nginx site files: ${blogConf}\n  \`deployq sites remove blog\` takes them out\n`);
    const redis = await privateRedis();
    await redis.start();
    // The lock as the workers of this install take it: under the install's lock_prefix.
    const prefix = loadSettings({ configPath: withoutBlog, env: { ...process.env, ...env } }).lockPrefix;
    const locks = withLockPrefix(createRedlockLocks({ urls: [redis.url], ttlMs: 5_000, logger: silentLogger() }), prefix);
    try {
      let release!: () => void;
      const released = new Promise<void>((resolve) => (release = resolve));
      let holding!: () => void;
      const held = new Promise<void>((resolve) => (holding = resolve));
      const holder = locks.using(NGINX_LOCK, async () => {
        holding();
        await released;
      });
      await held;
      const waiting = spawnDeployq(["--config", withoutBlog, "sites", "remove", "blog"], { ...env, REDIS_URL: redis.url });
      await waiting.waitFor(`taking ${lockName(prefix, NGINX_LOCK)}`);
      expect(await readdir(nginx.confDir), "nothing is removed while another holds the nginx lock").toEqual(["blog.conf"]);
      release();
      await holder;
      expect(await waiting.exited).toEqual({ code: 0, signal: null });
      expect(waiting.output()).toContain(`removed blog: ${blogConf}`);
      expect(await readdir(nginx.confDir)).toEqual([]);
      await expect(get("blog")).rejects.toThrow();
    } finally {
      await locks.close();
      await redis.stop();
    }
  });
});
