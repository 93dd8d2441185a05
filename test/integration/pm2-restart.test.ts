import { execFile } from "node:child_process";
import { mkdir, mkdtemp, readFile, realpath, rm, writeFile } from "node:fs/promises";
import { request } from "node:http";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DeployqError } from "../../src/errors.ts";
import type { CommandContext } from "../../src/steps/command-context.ts";
import { PM2_BIN, type Pm2Process, type Pm2RestartOptions, checkPm2, listProcesses, pm2Restart } from "../../src/steps/pm2.ts";
import { type DeploymentPaths, deploymentPaths, switchCurrent } from "../../src/steps/release.ts";
import { freePort } from "../helpers/load.ts";
import { killPm2, processesUsing } from "../helpers/pm2.ts";
import { LogCollector } from "../helpers/log-collector.ts";
import { until } from "../helpers/wait.ts";

const run = promisify(execFile);

/**
 * The app of every release: answers its version (and what it sees of its environment),
 * says "ready" to pm2 once it listens (wait_ready), and drains on SIGINT (pm2's kill signal).
 *
 * In cluster mode the primary (pm2's daemon) accepts the connections and passes each to a
 * worker over IPC. A worker that exits right after server.close() can take a connection
 * still on its way with it, and that client hangs (seen here: 1 request in ~1,200).
 * cluster.worker.disconnect() closes the server, waits until the primary has acknowledged
 * (connections sent before that are handed back to the primary and go to another worker),
 * then disconnects; the process ends once its last connection is answered.
 */
const APP = (version: string) => `
const cluster = require("node:cluster");
const http = require("node:http");
const server = http.createServer((req, res) => {
  res.setHeader("content-type", "application/json");
  res.end(JSON.stringify({ version: ${JSON.stringify(version)}, pid: process.pid, cwd: process.cwd(), file: __filename,
    deployment: process.env.DEPLOYQ_DEPLOYMENT ?? null, extra: process.env.EXTRA ?? null, secret: process.env.DAEMON_SECRET ?? null }));
});
server.listen(Number(process.env.PORT), "127.0.0.1", () => process.send && process.send("ready"));
process.on("SIGINT", () => {
  if (cluster.isWorker) cluster.worker.disconnect();
  else server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 4000).unref();
});
`;

/** A process that only waits: the operator's own app and another deployment's app. */
const IDLE = `setInterval(() => {}, 1 << 30); process.on("SIGINT", () => process.exit(0));\n`;

interface Answer {
  version: string;
  pid: number;
  cwd: string;
  file: string;
  deployment: string | null;
  extra: string | null;
  secret: string | null;
}

/** GET / on a fresh connection (no keep-alive): the answer, or the error. */
function get(port: number): Promise<{ ok: true; answer: Answer } | { ok: false; error: string }> {
  return new Promise((resolve) => {
    const req = request({ host: "127.0.0.1", port, path: "/", agent: false, timeout: 5_000 }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => (body += chunk));
      res.on("end", () => {
        if (res.statusCode !== 200) resolve({ ok: false, error: `status ${res.statusCode}` });
        else {
          try {
            resolve({ ok: true, answer: JSON.parse(body) as Answer });
          } catch {
            resolve({ ok: false, error: `unparseable body ${JSON.stringify(body)}` });
          }
        }
      });
      res.on("error", (err) => resolve({ ok: false, error: err.message }));
    });
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.on("error", (err: NodeJS.ErrnoException) => resolve({ ok: false, error: err.code ?? err.message }));
    req.end();
  });
}

async function answers(port: number, version: string): Promise<Answer> {
  return until(`127.0.0.1:${port} to answer ${version}`, async () => {
    const r = await get(port);
    return r.ok && r.answer.version === version ? r.answer : undefined;
  });
}

describe("pm2Restart: real pm2 in a private PM2_HOME, releases switched under `current`", () => {
  let dir: string;
  let pm2Home: string;
  let paths: DeploymentPaths;
  let env: NodeJS.ProcessEnv;
  let daemonStarted = false;
  let log: LogCollector;
  const ports = { fork: 0, cluster: 0, extra: 0, naiveFork: 0, naiveCluster: 0 };
  const DEPLOYMENT = "shop";

  const ctx = (): CommandContext => ({ log, timeoutMs: 90_000 });

  /** The pm2 CLI as the operator would run it (the test's own environment, this PM2_HOME). */
  async function pm2(args: string[]): Promise<string> {
    daemonStarted = true;
    const { stdout } = await run(process.execPath, [PM2_BIN, ...args], { cwd: dir, env, timeout: 60_000, maxBuffer: 16 * 1024 * 1024 });
    return stdout;
  }

  async function list(): Promise<Pm2Process[]> {
    daemonStarted = true;
    return listProcesses(pm2Home, { log: new LogCollector(), timeoutMs: 60_000 });
  }

  /**
   * A complete release: the app (answering `version`) and an ecosystem file with `apps`.
   * `ecosystem` replaces the file's text (a broken one).
   */
  async function release(name: string, version: string, apps: string[], ecosystem?: string, root = paths): Promise<void> {
    const rel = path.join(root.releases, name);
    await mkdir(rel, { recursive: true });
    await writeFile(path.join(rel, "app.cjs"), APP(version));
    const defs: Record<string, string> = {
      // cwd from __dirname: the resolved release, which pm2Restart must turn into a path through `current`.
      "web-fork": `{ name: "web-fork", script: "app.cjs", cwd: __dirname, env: { PORT: "${ports.fork}", EXTRA: "from-file" }, wait_ready: true, listen_timeout: 15000, kill_timeout: 5000 }`,
      // an absolute script from __dirname, no cwd.
      "web-cluster": `{ name: "web-cluster", script: path.join(__dirname, "app.cjs"), exec_mode: "cluster", instances: 2, env: { PORT: "${ports.cluster}" }, wait_ready: true, listen_timeout: 15000, kill_timeout: 5000 }`,
      extra: `{ name: "extra", script: "./app.cjs", env: { PORT: "${ports.extra}" }, wait_ready: true, listen_timeout: 15000 }`,
      operator: `{ name: "operator", script: "./app.cjs", env: { PORT: "${ports.extra}" } }`,
    };
    const text = ecosystem ?? `const path = require("node:path");\nmodule.exports = { apps: [\n  ${apps.map((a) => defs[a]).join(",\n  ")}\n] };\n`;
    await writeFile(path.join(rel, "ecosystem.config.cjs"), text);
  }

  function options(extra: Partial<Pm2RestartOptions> = {}): Pm2RestartOptions {
    return {
      pm2Home,
      deployment: DEPLOYMENT,
      appDir: paths.current,
      restart: { pm2: "ecosystem.config.cjs", env: { EXTRA: "from-restart-env" } },
      env: { DEPLOYQ_DEPLOYMENT: DEPLOYMENT, DEPLOYQ_SHA: "0123456789abcdef0123456789abcdef01234567" },
      ...extra,
    };
  }

  /** What `pm2 save` wrote: `pm2 resurrect` starts these after a reboot. */
  async function readDump(): Promise<Array<{ name: string; pm_cwd: string; env?: Record<string, string> }>> {
    return JSON.parse(await readFile(path.join(pm2Home, "dump.pm2"), "utf8")) as Array<{ name: string; pm_cwd: string; env?: Record<string, string> }>;
  }

  async function restart(extra: Partial<Pm2RestartOptions> = {}): Promise<number> {
    daemonStarted = true;
    const started = Date.now();
    await pm2Restart(options(extra), ctx());
    return Date.now() - started;
  }

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "deployq-pm2-restart-"));
    pm2Home = path.join(dir, "pm2");
    paths = deploymentPaths(path.join(dir, "app"));
    await mkdir(paths.releases, { recursive: true });
    ports.fork = await freePort();
    ports.cluster = await freePort();
    ports.extra = await freePort();
    ports.naiveFork = await freePort();
    ports.naiveCluster = await freePort();
    const inherited = { ...process.env };
    for (const key of Object.keys(inherited)) if (key.startsWith("DEPLOYQ_") || key.startsWith("PM2_")) delete inherited[key];
    env = { ...inherited, PM2_HOME: pm2Home };
    // A secret in deployq's own environment must never reach an app.
    process.env.DAEMON_SECRET = "daemon-only";
  });

  afterAll(async () => {
    delete process.env.DAEMON_SECRET;
    let left: Array<{ pid: number; cmdline: string }> = [];
    // Stops the apps (SIGINT, drain) and the daemon, whatever the test left running.
    if (daemonStarted) left = await killPm2(pm2Home, env);
    if (dir) await rm(dir, { recursive: true, force: true });
    expect(left, "processes of the private PM2_HOME left after pm2 kill").toEqual([]);
  });

  it("checkPm2 before any daemon: PM2_HOME missing but creatable, and it starts nothing", async () => {
    const result = await checkPm2(pm2Home);
    expect(result).toMatchObject({ ok: true });
    expect(result.detail).toContain("does not exist yet");
    expect(await processesUsing(pm2Home)).toEqual([]);
    expect((await checkPm2(path.join(dir, "no", "such", "parent"))).ok).toBe(false);
    // An rpc.sock nobody listens on (a daemon that died): no `pm2 ping`, which would start one.
    const stale = path.join(dir, "stale-home");
    await mkdir(stale);
    await writeFile(path.join(stale, "rpc.sock"), "");
    const staleResult = await checkPm2(stale);
    expect(staleResult).toMatchObject({ ok: true });
    expect(staleResult.detail).toContain("no longer runs");
    expect(await processesUsing(stale)).toEqual([]);
  });

  it(
    "v1: fork and cluster apps start through `current`, tagged, with restart.env and without deployq's own env; pm2 save wrote the dump",
    async () => {
      log = new LogCollector();
      await release("a", "v1", ["web-fork", "web-cluster", "extra"]);
      await switchCurrent(paths, "a");
      const ms = await restart();
      const releaseA = await realpath(path.join(paths.releases, "a"));

      const fork = await answers(ports.fork, "v1");
      expect(fork).toMatchObject({ cwd: releaseA, file: path.join(releaseA, "app.cjs"), deployment: DEPLOYMENT, extra: "from-restart-env", secret: null });
      expect((await answers(ports.cluster, "v1")).cwd).toBe(releaseA);
      await answers(ports.extra, "v1");

      // pm2 recorded paths through `current`, never the resolved release.
      const procs = await list();
      const mine = procs.filter((p) => p.deployment === DEPLOYMENT);
      expect(mine.map((p) => `${p.name} ${p.exec_mode}`).sort()).toEqual(["extra fork_mode", "web-cluster cluster_mode", "web-cluster cluster_mode", "web-fork fork_mode"]);
      for (const p of mine) {
        expect(p.pm_cwd, p.name).toBe(paths.current);
        expect(p.pm_exec_path, p.name).toBe(path.join(paths.current, "app.cjs"));
        expect(p.status, p.name).toBe("online");
      }

      const dump = await readDump();
      expect(dump.map((p) => p.name).sort()).toEqual(["extra", "web-cluster", "web-cluster", "web-fork"]);
      expect(dump.every((p) => p.env?.DEPLOYQ_DEPLOYMENT === DEPLOYMENT && p.pm_cwd === paths.current)).toBe(true);
      expect(log.text).toContain("pm2 plan: start web-fork, web-cluster, extra");
      expect(log.text).not.toContain("daemon-only");
      console.info(`pm2Restart v1 (fresh daemon, 3 apps started): ${ms} ms`);
    },
    120_000,
  );

  it(
    "v2: the cluster app reloads with zero failed requests, the fork app restarts, the removed app is deleted, other apps are left alone",
    async () => {
      log = new LogCollector();
      // The operator's own app (no tag) and another deployment's app, in the same PM2_HOME.
      const others = path.join(dir, "others");
      await mkdir(others, { recursive: true });
      await writeFile(path.join(others, "idle.cjs"), IDLE);
      await writeFile(
        path.join(others, "others.json"),
        JSON.stringify({
          apps: [
            { name: "operator", script: path.join(others, "idle.cjs") },
            { name: "other-deployment", script: path.join(others, "idle.cjs"), env: { DEPLOYQ_DEPLOYMENT: "other" } },
          ],
        }),
      );
      await pm2(["start", path.join(others, "others.json")]);
      const othersBefore = (await list()).filter((p) => p.name === "operator" || p.name === "other-deployment");
      expect(othersBefore.map((p) => [p.name, p.deployment, p.status])).toEqual([
        ["operator", null, "online"],
        ["other-deployment", "other", "online"],
      ]);

      const before = await list();
      const clusterPidsBefore = before.filter((p) => p.name === "web-cluster").map((p) => p.pid);
      expect(clusterPidsBefore).toHaveLength(2);

      await release("b", "v2", ["web-fork", "web-cluster"]);
      await switchCurrent(paths, "b");
      const releaseB = await realpath(path.join(paths.releases, "b"));

      // Requests to the cluster app, one after another on fresh connections, all through the reload.
      let reloaded = false;
      const results: Array<{ ok: boolean; version?: string; error?: string; at: number }> = [];
      const loop = (async () => {
        const deadline = Date.now() + 120_000;
        let afterReload = 0;
        while (Date.now() < deadline && (!reloaded || afterReload < 50 || results.length < 200)) {
          const r = await get(ports.cluster);
          results.push(r.ok ? { ok: true, version: r.answer.version, at: Date.now() } : { ok: false, error: r.error, at: Date.now() });
          if (reloaded) afterReload++;
        }
      })();
      let ms: number;
      let startedAt = 0;
      try {
        await until("a few requests before the reload", async () => results.length >= 20, 30_000);
        startedAt = Date.now();
        ms = await restart();
      } finally {
        reloaded = true;
        await loop;
      }
      const failed = results.filter((r) => !r.ok);
      const versions = results.map((r) => r.version);
      expect(failed, `${failed.length} of ${results.length} requests failed`).toEqual([]);
      expect(results.length).toBeGreaterThanOrEqual(200);
      const during = results.filter((r) => r.at >= startedAt && r.at <= startedAt + ms).length;
      expect(during, "requests answered while pm2Restart ran").toBeGreaterThan(20);
      expect(new Set(versions)).toEqual(new Set(["v1", "v2"]));
      // Once the new workers answer, the old ones are gone: no v1 after the first v2... except the
      // old worker that is still draining; the last answers are v2 only.
      expect(versions.slice(-50).every((v) => v === "v2")).toBe(true);

      // Both cluster workers run the new release, in new processes.
      const seen = new Map<number, Answer>();
      await until("both cluster workers answered v2", async () => {
        const r = await get(ports.cluster);
        if (r.ok && r.answer.version === "v2") seen.set(r.answer.pid, r.answer);
        return seen.size >= 2;
      });
      for (const a of seen.values()) {
        expect(a).toMatchObject({ cwd: releaseB, file: path.join(releaseB, "app.cjs"), deployment: DEPLOYMENT, extra: "from-restart-env", secret: null });
        expect(clusterPidsBefore).not.toContain(a.pid);
      }
      expect(await answers(ports.fork, "v2")).toMatchObject({ cwd: releaseB, extra: "from-restart-env" });

      const after = await list();
      // The app removed from the file is gone, and its port is closed.
      expect(after.filter((p) => p.name === "extra")).toEqual([]);
      await until("the removed app's port is closed", async () => !(await get(ports.extra)).ok, 30_000);
      // The operator's app and the other deployment's app were not touched.
      const othersAfter = after.filter((p) => p.name === "operator" || p.name === "other-deployment");
      expect(othersAfter.map((p) => [p.name, p.pid, p.status, p.restart_time])).toEqual(othersBefore.map((p) => [p.name, p.pid, "online", p.restart_time]));
      // The cluster app was reloaded (restart_time counts reloads), not deleted and started again.
      expect(after.filter((p) => p.name === "web-cluster").map((p) => p.restart_time)).toEqual([1, 1]);
      expect(log.text).toContain("pm2 plan: delete extra (not in ecosystem.config.cjs any more); delete and start web-fork; rolling reload web-cluster");

      expect((await readDump()).map((p) => p.name).sort()).toEqual(["operator", "other-deployment", "web-cluster", "web-cluster", "web-fork"]);

      const check = await checkPm2(pm2Home);
      expect(check).toMatchObject({ ok: true });
      expect(check.detail).toContain("answers");
      console.info(
        `pm2Restart v2: ${ms} ms (delete extra, restart web-fork, rolling reload of 2 cluster workers); ` +
          `${results.length} requests (${during} while it ran), ${failed.length} failed, ${versions.filter((v) => v === "v1").length} answered v1`,
      );
    },
    180_000,
  );

  it(
    "a broken ecosystem file, an unknown `only` app, an app name owned by someone else: a clear DeployqError, and nothing changes",
    async () => {
      log = new LogCollector();
      const before = await list();
      const running = (ps: Pm2Process[]) => ps.map((p) => `${p.name}:${p.pid}:${p.status}`).sort();

      await release("c", "v3", [], `module.exports = { apps: [ { name: "web-fork", script: "app.cjs" } ] ;\n`);
      await switchCurrent(paths, "c");
      const broken = await restart().then(
        () => undefined,
        (err: unknown) => err,
      );
      expect(broken).toBeInstanceOf(DeployqError);
      expect((broken as DeployqError).code).toBe("DEPLOY");
      expect((broken as Error).message).toMatch(/the pm2 ecosystem file ecosystem\.config\.cjs could not be loaded; fix it in the repository:[\s\S]*SyntaxError/);

      await release("d", "v4", [], `module.exports = { apps: [ { name: "web-fork", script: "app.cjs", env: { PORT: process.env.NOPE.length } } ] };\n`);
      await switchCurrent(paths, "d");
      await expect(restart()).rejects.toThrow(/could not be loaded[\s\S]*TypeError: Cannot read properties of undefined/);

      await release("e", "v5", ["web-fork", "web-cluster"]);
      await switchCurrent(paths, "e");
      await expect(restart({ restart: { pm2: "ecosystem.config.cjs", only: ["web-fork", "api"], env: {} } })).rejects.toThrow(
        "restart.only names api, which the pm2 ecosystem file ecosystem.config.cjs does not define (it defines web-fork, web-cluster)",
      );
      await expect(restart({ restart: { pm2: "missing.config.cjs", env: {} } })).rejects.toThrow(/the pm2 ecosystem file missing\.config\.cjs is not in/);

      await release("f", "v6", ["web-fork", "operator"]);
      await switchCurrent(paths, "f");
      await expect(restart()).rejects.toThrow(/already runs an app named operator that deployq did not start for shop \(no DEPLOYQ_DEPLOYMENT in its env\)/);

      await release("g", "v7", [], `module.exports = { apps: [ { name: "all", script: "app.cjs" } ] };\n`);
      await switchCurrent(paths, "g");
      await expect(restart()).rejects.toThrow(/has the name "all", which deployq cannot pass to pm2/);

      // The running apps are the same processes, still serving v2.
      expect(running(await list())).toEqual(running(before));
      expect(await answers(ports.fork, "v2")).toBeTruthy();
      expect(await answers(ports.cluster, "v2")).toBeTruthy();
      await switchCurrent(paths, "b");
    },
    120_000,
  );

  it(
    "rollback: switching `current` back to v1 and calling pm2Restart again serves v1 (only: web-cluster deletes web-fork)",
    async () => {
      log = new LogCollector();
      await switchCurrent(paths, "a");
      await restart({ restart: { pm2: "ecosystem.config.cjs", only: ["web-cluster"], env: {} } });
      await answers(ports.cluster, "v1");
      expect(log.text).toContain("pm2 plan: delete web-fork (not in restart.only any more); rolling reload web-cluster");
      const after = await list();
      expect(after.filter((p) => p.deployment === DEPLOYMENT).map((p) => p.name)).toEqual(["web-cluster", "web-cluster"]);
      expect(after.filter((p) => p.name === "operator" || p.name === "other-deployment")).toHaveLength(2);
      await until("web-fork's port is closed", async () => !(await get(ports.fork)).ok, 30_000);
    },
    120_000,
  );
  it(
    "control: `cd current && pm2 startOrReload ecosystem --update-env` keeps serving the old release; pm2Restart then starts such apps afresh",
    async () => {
      const naive = deploymentPaths(path.join(dir, "naive"));
      const ecosystem =
        `module.exports = { apps: [\n` +
        `  { name: "naive-fork", script: "app.cjs", env: { PORT: "${ports.naiveFork}" }, wait_ready: true, listen_timeout: 15000 },\n` +
        `  { name: "naive-cluster", script: "app.cjs", exec_mode: "cluster", instances: 2, env: { PORT: "${ports.naiveCluster}" }, wait_ready: true, listen_timeout: 15000 },\n` +
        `] };\n`;
      await release("x", "v1", [], ecosystem, naive);
      await release("y", "v2", [], ecosystem, naive);
      const releaseX = await realpath(path.join(naive.releases, "x"));
      /** What an operator would type: the CLI started in `current` (its getcwd() is the resolved release). */
      const startOrReload = async () => {
        daemonStarted = true;
        await run(process.execPath, [PM2_BIN, "startOrReload", "ecosystem.config.cjs", "--update-env"], {
          cwd: naive.current,
          env: { ...env, DEPLOYQ_DEPLOYMENT: "naive" },
          timeout: 60_000,
        });
      };

      await switchCurrent(naive, "x");
      await startOrReload();
      const pidsX = (await list()).filter((p) => p.name.startsWith("naive-")).map((p) => p.pid);
      await answers(ports.naiveFork, "v1");
      await switchCurrent(naive, "y");
      await startOrReload();

      // Every process was replaced, and every one still runs release x: pm2 recorded the resolved paths.
      const procs = (await list()).filter((p) => p.name.startsWith("naive-"));
      expect(procs).toHaveLength(3);
      for (const p of procs) {
        expect(pidsX, p.name).not.toContain(p.pid);
        expect(p.pm_cwd, p.name).toBe(releaseX);
      }
      for (const port of [ports.naiveFork, ports.naiveCluster, ports.naiveCluster]) {
        const r = await get(port);
        expect(r.ok && r.answer.version, `port ${port}`).toBe("v1");
      }

      // pm2Restart sees the recorded paths are not through `current` and starts both apps afresh.
      log = new LogCollector();
      await pm2Restart({ ...options(), deployment: "naive", appDir: naive.current, restart: { pm2: "ecosystem.config.cjs", env: {} } }, ctx());
      expect(log.text).toContain("pm2 plan: delete and start naive-fork, naive-cluster");
      await answers(ports.naiveFork, "v2");
      await answers(ports.naiveCluster, "v2");
      for (const p of (await list()).filter((p) => p.name.startsWith("naive-"))) expect(p.pm_cwd, p.name).toBe(naive.current);
    },
    120_000,
  );
});
