/**
 * deployq's secrets never reach the applications it deploys with `restart = { pm2 = ... }`.
 *
 * Those applications run under the same pm2 daemon as deployq itself (the same PM2_HOME).
 * pm2 starts a fork-mode app with the app's own environment only (God/ForkMode.js builds
 * the spawn env from pm2_env), but a cluster-mode worker is forked by the daemon with
 * node's cluster.fork, which copies the daemon's whole process.env (God/ClusterMode.js;
 * ProcessContainer.js then only adds the app's variables on top). So whatever is in the
 * environment of the command that started the daemon (pm2-runtime under systemd, or the
 * shell typing the first `pm2 start`) reaches every cluster-mode app, and pm2's filter_env
 * cannot stop it (it filters the CLI's environment, not the daemon's; checked with pm2 7.0.4).
 *
 * Hence systemd/deployq.service no longer loads /etc/deployq/env with EnvironmentFile= (into
 * pm2-runtime's environment) but names it in DEPLOYQ_ENV_FILE, and ecosystem.config.cjs puts
 * its variables into the `env` of deployq's two apps only.
 *
 * Each case starts the daemon the way an operator does, with deployq's ecosystem.config.cjs
 * in a private PM2_HOME; after a signed delivery deployq's workers deploy a small app (one
 * fork-mode and one cluster-mode pm2 app, which answer with their own process.env), and the
 * test reads what each app sees.
 */
import { SECRET_VARIABLES } from "../../src/config/load.ts";
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import { type TestRepo, createRepo } from "../helpers/git.ts";
import { allNames, freePort, tryPost, waitUntil } from "../helpers/load.ts";
import { PM2_BIN, killPm2 } from "../helpers/pm2.ts";
import { REPO_ROOT, type Spawned, spawnTracked } from "../helpers/processes.ts";
import { type PrivateRedis, privateRedis } from "../helpers/redis.ts";
import { until } from "../helpers/wait.ts";
import { SECRET, type Workspace, createWorkspace, followingDeployment, pushPayload, signedDelivery } from "../helpers/workspace.ts";

const run = promisify(execFile);

const ECOSYSTEM = path.join(REPO_ROOT, "ecosystem.config.cjs");
const PM2_RUNTIME_BIN = path.join(REPO_ROOT, "node_modules", "pm2", "bin", "pm2-runtime");
const SECRET_NAMES = SECRET_VARIABLES;
/** Set next to the secrets: proves that ecosystem.config.cjs reads its own settings there too. */
const KILL_TIMEOUT_MS = 41_000;

/** The deployed app: answers with its own environment, and whether it is a cluster worker. */
const APP = `const cluster = require("node:cluster");
const http = require("node:http");
const server = http.createServer((req, res) => {
  res.setHeader("content-type", "application/json");
  res.end(JSON.stringify({ worker: cluster.isWorker, pid: process.pid, env: process.env }));
});
server.listen(Number(process.env.PORT), "127.0.0.1", () => process.send && process.send("ready"));
process.on("SIGINT", () => {
  if (cluster.isWorker) cluster.worker.disconnect();
  else server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 3000).unref();
});
`;
/** Its ecosystem file: the ports come from the deployment's restart.env. */
const APP_ECOSYSTEM = `module.exports = {
  apps: [
    { name: "leak-fork", script: "app.cjs", exec_mode: "fork", env: { PORT: process.env.PORT_FORK }, wait_ready: true, listen_timeout: 15000, kill_timeout: 5000 },
    { name: "leak-cluster", script: "app.cjs", exec_mode: "cluster", instances: 1, env: { PORT: process.env.PORT_CLUSTER }, wait_ready: true, listen_timeout: 15000, kill_timeout: 5000 },
  ],
};
`;

interface AppAnswer {
  worker: boolean;
  pid: number;
  env: Record<string, string>;
}

interface Pm2Process {
  name: string;
  pid: number;
  pm2_env: { status: string; kill_timeout?: number; exec_mode?: string; env?: Record<string, string> };
}

/** The environment of the test without anything of this machine's deployq/pm2 setup, and without the secrets. */
function cleanEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (value === undefined || key.startsWith("PM2_") || key.startsWith("DEPLOYQ_") || key === "NODE_ENV" || (SECRET_NAMES as readonly string[]).includes(key)) continue;
    env[key] = value;
  }
  return env;
}

describe("ecosystem.config.cjs reads deployq's variables from DEPLOYQ_ENV_FILE", () => {
  let dir: string;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "deployq-envfile-"));
  });
  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  /** Evaluates ecosystem.config.cjs as a pm2 command starting it would (no command argument), with `env` only. */
  async function evaluate(env: Record<string, string>): Promise<{ code: number; stdout: string; stderr: string }> {
    const script = `const before = JSON.stringify(process.env);
const { apps } = require(${JSON.stringify(ECOSYSTEM)});
process.stdout.write(JSON.stringify({ apps: apps.map((a) => ({ name: a.name, env: a.env, env_production: a.env_production, kill_timeout: a.kill_timeout, out_file: a.out_file, max_restarts: a.max_restarts, stop_exit_codes: a.stop_exit_codes, autorestart: a.autorestart })), processEnvUnchanged: JSON.stringify(process.env) === before }));`;
    try {
      const { stdout, stderr } = await run(process.execPath, ["-e", script], { cwd: dir, env: { ...cleanEnv(), ...env }, timeout: 30_000 });
      return { code: 0, stdout, stderr };
    } catch (err) {
      const e = err as { code?: number; stdout?: string; stderr?: string };
      return { code: typeof e.code === "number" ? e.code : 1, stdout: e.stdout ?? "", stderr: e.stderr ?? "" };
    }
  }

  let files = 0;
  async function envFile(text: string): Promise<string> {
    const file = path.join(dir, `env-${++files}`);
    await writeFile(file, text, { mode: 0o600 });
    return file;
  }

  it("puts the file's variables into both apps' env (and its settings into their config), never into process.env", async () => {
    const file = await envFile(
      [
        "# deployq's secrets",
        "; another comment",
        "",
        "GITHUB_WEBHOOK_SECRET=s3cret with 'quotes' inside  ",
        "  DATABASE_URL = postgres://deployq:p%40ss@127.0.0.1:5432/deployq",
        "REDIS_URL='redis://:a\\b@127.0.0.1:6379'",
        'GITHUB_TOKEN="ghp_$abc`def"',
        "EMPTY=",
        "DEPLOYQ_PM2_KILL_TIMEOUT_MS=45000\r",
        `DEPLOYQ_PM2_LOG_DIR=${path.join(dir, "logs")}`,
        "",
      ].join("\n"),
    );
    const r = await evaluate({ DEPLOYQ_ENV_FILE: file });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toBe(""); // no warning: no secret in the environment
    const out = JSON.parse(r.stdout) as {
      apps: Array<{ name: string; env: Record<string, string>; kill_timeout: number; out_file: string; max_restarts: number; stop_exit_codes: number[]; autorestart: boolean }>;
      processEnvUnchanged: boolean;
    };
    expect(out.processEnvUnchanged).toBe(true);
    expect(out.apps.map((a) => a.name)).toEqual(["deployq-receiver", "deployq-workers"]);
    for (const app of out.apps) {
      expect(app.env).toEqual({
        GITHUB_WEBHOOK_SECRET: "s3cret with 'quotes' inside",
        DATABASE_URL: "postgres://deployq:p%40ss@127.0.0.1:5432/deployq",
        REDIS_URL: "redis://:a\\b@127.0.0.1:6379",
        GITHUB_TOKEN: "ghp_$abc`def",
        EMPTY: "",
        DEPLOYQ_PM2_KILL_TIMEOUT_MS: "45000",
        DEPLOYQ_PM2_LOG_DIR: path.join(dir, "logs"),
      });
      expect(app.kill_timeout).toBe(45_000);
      // pm2 never gives up on a daemon that keeps failing (Postgres down for an hour), except on EX_CONFIG.
      expect(app).toMatchObject({ autorestart: true, stop_exit_codes: [78] });
      expect(app.max_restarts).toBeGreaterThanOrEqual(1_000_000_000);
      expect(app.out_file).toBe(path.join(dir, "logs", `${app.name}.out.log`));
    }
  });

  it.each([
    ["a line without =", "GITHUB_WEBHOOK_SECRET=ok\nthe-secret-value-itself\n", 2, /line 2 is not NAME=value/],
    ["export", "export DATABASE_URL=the-secret-value-itself\n", 1, /line 1 is not NAME=value .*no `export`/],
    ["a name that is not one", "1DATABASE_URL=the-secret-value-itself\n", 1, /line 1 is not NAME=value/],
    ["a backslash escape", "# x\nDATABASE_URL=the-secret-value-itself\\n\n", 2, /line 2 \(DATABASE_URL\): .*backslash .*single quotes/],
    ["an unclosed quote (systemd: a multi-line value)", 'DATABASE_URL="the-secret-value-itself\nmore"\n', 1, /line 1 \(DATABASE_URL\): a quoted value must close on the same line/],
    ["text after the closing quote", "DATABASE_URL='the-secret-value-itself'x\n", 1, /line 1 \(DATABASE_URL\): a quoted value/],
    ["a backslash in double quotes", 'DATABASE_URL="the-secret-value-itself\\"x"\n', 1, /line 1 \(DATABASE_URL\): a quoted value .* nor backslash/],
  ])("refuses %s, naming the line but never printing it", async (_what, text, line, message) => {
    const file = await envFile(text);
    const r = await evaluate({ DEPLOYQ_ENV_FILE: file });
    expect(r.code).toBe(78);
    expect(r.stderr).toContain(`DEPLOYQ_ENV_FILE ${file}: line ${line}`);
    expect(r.stderr).toMatch(message);
    expect(r.stdout + r.stderr).not.toContain("the-secret-value-itself");
  });

  it("makes pm2-runtime (the unit's ExecStart) exit 78, which the unit does not restart, instead of pm2's 0 with no app", async () => {
    const file = await envFile("GITHUB_WEBHOOK_SECRET=the-secret-value-itself\nexport DATABASE_URL=postgres://127.0.0.1/deployq\n");
    const pm2Home = await mkdtemp(path.join(dir, "pm2-"));
    const unset = Object.fromEntries(Object.keys(process.env).map((k) => [k, undefined])); // spawnTracked adds the test's own environment
    const runtime = spawnTracked(
      process.execPath,
      [PM2_RUNTIME_BIN, "start", ECOSYSTEM, "--env", "production"],
      { ...unset, ...cleanEnv(), PM2_HOME: pm2Home, NODE_ENV: "production", DEPLOYQ_ENV_FILE: file },
      REPO_ROOT,
    );
    expect(await runtime.exited).toEqual({ code: 78, signal: null });
    expect(runtime.output()).toContain(`deployq's ecosystem.config.cjs: DEPLOYQ_ENV_FILE ${file}: line 2 is not NAME=value`);
    expect(runtime.output()).not.toContain("the-secret-value-itself");
    expect(await readdir(path.join(pm2Home, "pids")).catch(() => [] as string[]), "no app was started").toEqual([]);
    const unit = await readFile(path.join(REPO_ROOT, "systemd", "deployq.service"), "utf8");
    expect(unit).toMatch(/^RestartPreventExitStatus=78$/m);
  });

  it("refuses a file it cannot read", async () => {
    const missing = path.join(dir, "missing");
    const r = await evaluate({ DEPLOYQ_ENV_FILE: missing, DATABASE_URL: "" });
    expect(r.code).toBe(78);
    expect(r.stderr).toContain(`DEPLOYQ_ENV_FILE ${missing}: cannot be read (ENOENT)`);
  });

  it("without DEPLOYQ_ENV_FILE takes the environment as before, and warns (names only) that a daemon started from it hands secrets on", async () => {
    const r = await evaluate({ DATABASE_URL: "postgres://u:the-secret-value-itself@h/db", GITHUB_WEBHOOK_SECRET: "the-secret-value-itself" });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/GITHUB_WEBHOOK_SECRET, DATABASE_URL are in the environment of this pm2 command.*cluster-mode app.*DEPLOYQ_ENV_FILE/);
    expect(r.stderr).not.toContain("the-secret-value-itself");
    const out = JSON.parse(r.stdout) as { apps: Array<{ env: Record<string, string> }> };
    // pm2 itself copies the command's environment into the apps, the secrets with it.
    expect(out.apps[0]!.env).toEqual({});
  });
});

describe("pm2: deployq's secrets do not reach the apps it deploys under its own pm2", () => {
  let dir: string;
  let repo: TestRepo;
  let sha: string;
  let redis: PrivateRedis;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "deployq-pm2-secrets-"));
    repo = await createRepo(dir);
    sha = await repo.commit({ "app.cjs": APP, "ecosystem.config.cjs": APP_ECOSYSTEM });
    redis = await privateRedis();
    await redis.start();
  });

  afterAll(async () => {
    await redis?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  /** One daemon in its own PM2_HOME, with its own workspace, database and ports. */
  interface Case {
    pm2Home: string;
    logDir: string;
    port: number;
    forkPort: number;
    clusterPort: number;
    ws: Workspace;
    tdb: TestDatabase;
    secrets: Record<string, string>;
    /** The environment of the command that starts pm2 (what the unit, or the shell, gives it). */
    env: Record<string, string>;
    /** The environment of the test's own pm2 commands: no secrets, this PM2_HOME. */
    pm2Env: Record<string, string>;
    runtime?: Spawned;
    /** What `pm2 start` printed on stderr. */
    startStderr: string;
  }

  /** secretsIn: "file" as systemd/deployq.service does it (DEPLOYQ_ENV_FILE), "env" as an exported shell environment. */
  async function createCase(secretsIn: "file" | "env"): Promise<Case> {
    const caseDir = await mkdtemp(path.join(dir, "case-"));
    const pm2Home = path.join(caseDir, "pm2");
    const [port, forkPort, clusterPort] = [await freePort(), await freePort(), await freePort()];
    const ws = await createWorkspace({
      port,
      deployments: followingDeployment("app", repo.bare, `restart = { pm2 = "ecosystem.config.cjs", env = { PORT_FORK = "${forkPort}", PORT_CLUSTER = "${clusterPort}" } }`),
    });
    const tdb = await createTestDatabase("postgres");
    const secrets = { GITHUB_WEBHOOK_SECRET: SECRET, DATABASE_URL: tdb.url!, REDIS_URL: redis.url, GITHUB_TOKEN: "ghp_test-token-no-app-may-see", DEPLOYQ_ADMIN_TOKEN: "admin-token-no-app-may-see" };
    const settings = { DEPLOYQ_PM2_KILL_TIMEOUT_MS: String(KILL_TIMEOUT_MS), DEPLOYQ_LOG_LEVEL: "warn" };
    const pm2Env = { ...cleanEnv(), PM2_HOME: pm2Home };
    const logDir = path.join(caseDir, "logs");
    // What systemd/deployq.service sets (PM2_HOME is also deployq's pm2_home: the apps' pm2), and the rest where the case puts it.
    const env: Record<string, string> = { ...pm2Env, NODE_ENV: "production", DEPLOYQ_CONFIG: ws.configPath, DEPLOYQ_PM2_LOG_DIR: logDir };
    if (secretsIn === "env") Object.assign(env, secrets, settings);
    else {
      const file = path.join(caseDir, "env");
      await writeFile(file, `# deployq's secrets\n${Object.entries({ ...secrets, ...settings }).map(([k, v]) => `${k}=${v}\n`).join("")}`, { mode: 0o600 });
      env.DEPLOYQ_ENV_FILE = file;
    }
    return { pm2Home, logDir, port, forkPort, clusterPort, ws, tdb, secrets, env, pm2Env, startStderr: "" };
  }

  async function logs(c: Case): Promise<string> {
    let out = c.runtime ? `--- pm2-runtime\n${c.runtime.output().split("\n").slice(-40).join("\n")}\n` : "";
    for (const file of await allNames(c.logDir)) out += `--- ${file}\n${(await readFile(path.join(c.logDir, file), "utf8").catch(() => "")).split("\n").slice(-40).join("\n")}\n`;
    return `${out}--- pm2.log\n${(await readFile(path.join(c.pm2Home, "pm2.log"), "utf8").catch(() => "")).split("\n").slice(-40).join("\n")}\n`;
  }

  async function jlist(c: Case): Promise<Map<string, Pm2Process>> {
    const { stdout } = await run(process.execPath, [PM2_BIN, "jlist"], { cwd: REPO_ROOT, env: c.pm2Env, timeout: 60_000, maxBuffer: 16 * 1024 * 1024 });
    return new Map((JSON.parse(stdout.slice(stdout.indexOf("["))) as Pm2Process[]).map((p) => [p.name, p]));
  }

  /** systemctl start: pm2-runtime in the foreground, with exactly the case's environment. */
  async function startRuntime(c: Case): Promise<void> {
    const unset = Object.fromEntries(Object.keys(process.env).map((k) => [k, undefined])); // spawnTracked adds the test's own environment
    const runtime = spawnTracked(process.execPath, [PM2_RUNTIME_BIN, "start", ECOSYSTEM, "--env", "production"], { ...unset, ...c.env }, REPO_ROOT);
    c.runtime = runtime;
    // No pm2 command before pm2-runtime listens: it would spawn a daemon of its own in this PM2_HOME.
    await until("pm2-runtime listens on its rpc socket", async () => existsSync(path.join(c.pm2Home, "rpc.sock")) || runtime.child.exitCode !== null, 60_000);
    expect(runtime.child.exitCode, runtime.output()).toBeNull();
  }

  /** systemctl stop: SIGTERM to pm2-runtime, which stops every app of its pm2 (the deployed ones too) and exits. */
  async function stopRuntime(c: Case): Promise<void> {
    if (!c.runtime) return;
    c.runtime.child.kill("SIGTERM");
    await c.runtime.exited;
    c.runtime = undefined;
  }

  /** A daemon spawned by `pm2 start` from a shell with the case's environment. */
  async function pm2Start(c: Case): Promise<void> {
    const { stderr } = await run(process.execPath, [PM2_BIN, "start", ECOSYSTEM, "--env", "production"], { cwd: REPO_ROOT, env: c.env, timeout: 120_000, maxBuffer: 16 * 1024 * 1024 });
    c.startStderr = stderr;
  }

  async function deployqOnline(c: Case): Promise<Map<string, Pm2Process>> {
    return waitUntil(
      async () => {
        const list = await jlist(c);
        return ["deployq-receiver", "deployq-workers"].every((n) => list.get(n)?.pm2_env.status === "online" && list.get(n)!.pid > 0) ? list : false;
      },
      { what: "deployq's two apps are online", timeoutMs: 90_000, describe: () => logs(c) },
    );
  }

  async function answer(port: number): Promise<AppAnswer | undefined> {
    try {
      const res = await fetch(`http://127.0.0.1:${port}/`);
      return res.ok ? ((await res.json()) as AppAnswer) : undefined;
    } catch {
      return undefined;
    }
  }

  /**
   * The names of the variables deployq's app has. A fork-mode process is started with them
   * (/proc/<pid>/environ); a cluster-mode instance (the receiver) is forked with the daemon's
   * environment and sets its app's `env` itself (pm2's ProcessContainer.js), so its environ does
   * not show them: pm2's record of the app's env does.
   */
  async function appEnvNames(p: Pm2Process): Promise<string[]> {
    return p.pm2_env.exec_mode === "cluster_mode" ? Object.keys(p.pm2_env.env ?? {}) : environNames(p.pid);
  }

  /** The names of the variables of a process (/proc/<pid>/environ: what it was started with). */
  async function environNames(pid: number): Promise<string[]> {
    return (await readFile(`/proc/${pid}/environ`, "utf8"))
      .split("\0")
      .filter(Boolean)
      .map((kv) => kv.slice(0, kv.indexOf("=")));
  }

  /** Checks deployq's own apps, sends a signed push, and returns what the two deployed apps see once they answer. */
  async function deploy(c: Case): Promise<{ fork: AppAnswer; cluster: AppAnswer }> {
    const deployq = await deployqOnline(c);
    expect(deployq.get("deployq-workers")!.pm2_env.kill_timeout, "DEPLOYQ_PM2_KILL_TIMEOUT_MS reached ecosystem.config.cjs").toBe(KILL_TIMEOUT_MS);
    // deployq's own apps have every secret (and the receiver checks the signature with GITHUB_WEBHOOK_SECRET).
    for (const app of ["deployq-receiver", "deployq-workers"]) expect(await appEnvNames(deployq.get(app)!), app).toEqual(expect.arrayContaining([...SECRET_NAMES]));
    const delivery = await tryPost(`http://127.0.0.1:${c.port}`, await signedDelivery(pushPayload({ repository: "octo-org/app", branch: "main", after: sha })));
    expect(delivery, await logs(c)).toMatchObject({ kind: "status", status: 202 });
    return appsAnswer(c);
  }

  async function appsAnswer(c: Case): Promise<{ fork: AppAnswer; cluster: AppAnswer }> {
    const fork = await until("the fork-mode app answers", () => answer(c.forkPort), 120_000);
    const cluster = await until("the cluster-mode app answers", () => answer(c.clusterPort), 60_000);
    expect(fork.worker).toBe(false);
    expect(cluster.worker).toBe(true);
    for (const app of [fork, cluster]) expect(app.env.DEPLOYQ_DEPLOYMENT, "started by deployq for the deployment").toBe("app");
    return { fork, cluster };
  }

  /** The secrets' names among an app's variables, and any variable holding a secret's value. */
  function leaked(app: AppAnswer, c: Case): string[] {
    // A name with an empty value is what pm2Restart writes over what cluster.fork copies: not a leak.
    const names = SECRET_NAMES.filter((n) => (app.env[n] ?? "") !== "");
    const values = Object.entries(app.env)
      .filter(([, v]) => Object.values(c.secrets).some((s) => v.includes(s)))
      .map(([k]) => `${k} (holds a secret's value)`);
    return [...new Set([...names, ...values])];
  }

  /** Ends every process of the case (and fails the test on any left behind once it has passed). */
  async function dispose(c: Case, passed: boolean): Promise<void> {
    if (c.runtime) await stopRuntime(c);
    const left = await killPm2(c.pm2Home, c.pm2Env);
    await c.tdb.dispose();
    await c.ws.dispose();
    if (passed) expect(left, "processes of the private PM2_HOME left after pm2 kill").toEqual([]);
  }

  it(
    "systemd's way: pm2-runtime with the secrets only in DEPLOYQ_ENV_FILE; neither the fork-mode nor the cluster-mode app sees them, " +
      "after a deploy, a `systemctl reload` (deployq's apps only) and a `systemctl restart` (the apps too, resumed by the workers)",
    { timeout: 300_000 },
    async () => {
      const c = await createCase("file");
      let passed = false;
      try {
        await startRuntime(c);
        const first = await deploy(c);
        expect(leaked(first.fork, c), "fork-mode app").toEqual([]);
        expect(leaked(first.cluster, c), "cluster-mode app").toEqual([]);

        // systemctl reload deployq (ExecReload, in the unit's environment): deployq's two apps get new
        // processes with the file read again; the deployed apps are not touched.
        const before = await jlist(c);
        await writeFile(c.env.DEPLOYQ_ENV_FILE!, `${await readFile(c.env.DEPLOYQ_ENV_FILE!, "utf8")}DEPLOYQ_TEST_ADDED=1\n`);
        await run(process.execPath, [PM2_BIN, "reload", ECOSYSTEM, "--env", "production"], { cwd: REPO_ROOT, env: c.env, timeout: 120_000, maxBuffer: 16 * 1024 * 1024 });
        const reloaded = await deployqOnline(c);
        for (const app of ["deployq-receiver", "deployq-workers"]) {
          expect(reloaded.get(app)!.pid, app).not.toBe(before.get(app)!.pid);
          expect(await appEnvNames(reloaded.get(app)!), app).toEqual(expect.arrayContaining([...SECRET_NAMES, "DEPLOYQ_TEST_ADDED"]));
        }
        expect((await answer(c.forkPort))?.pid, "the fork-mode app was not restarted by the reload").toBe(first.fork.pid);
        expect((await answer(c.clusterPort))?.pid, "the cluster-mode app was not restarted by the reload").toBe(first.cluster.pid);

        // systemctl restart deployq: pm2-runtime stops every app of its pm2, the deployed ones too;
        // started again, deployq's workers start them again from the current release.
        await stopRuntime(c);
        expect(await answer(c.forkPort)).toBeUndefined();
        expect(await answer(c.clusterPort)).toBeUndefined();
        await startRuntime(c);
        await deployqOnline(c);
        const resumed = await appsAnswer(c);
        expect(resumed.fork.pid).not.toBe(first.fork.pid);
        expect(resumed.cluster.pid).not.toBe(first.cluster.pid);
        expect(leaked(resumed.fork, c), "fork-mode app, resumed").toEqual([]);
        expect(leaked(resumed.cluster, c), "cluster-mode app, resumed").toEqual([]);
        passed = true;
      } finally {
        await dispose(c, passed);
      }
    },
  );

  it("`pm2 start` from a shell with the secrets only in DEPLOYQ_ENV_FILE: neither app sees them", { timeout: 300_000 }, async () => {
    const c = await createCase("file");
    let passed = false;
    try {
      await pm2Start(c);
      expect(c.startStderr).not.toContain("in the environment of this pm2 command");
      const { fork, cluster } = await deploy(c);
      expect(leaked(fork, c), "fork-mode app").toEqual([]);
      expect(leaked(cluster, c), "cluster-mode app").toEqual([]);
      passed = true;
    } finally {
      await dispose(c, passed);
    }
  });

  it(
    "`pm2 start` from a shell that exports the secrets (no DEPLOYQ_ENV_FILE, as in development) warns; " +
      "the daemon it spawns would hand them to cluster-mode apps (cluster.fork), so pm2Restart blanks them in each app's env",
    { timeout: 300_000 },
    async () => {
      const c = await createCase("env");
      let passed = false;
      try {
        await pm2Start(c);
        expect(c.startStderr).toMatch(/GITHUB_WEBHOOK_SECRET, DATABASE_URL, REDIS_URL, GITHUB_TOKEN, DEPLOYQ_ADMIN_TOKEN are in the environment of this pm2 command/);
        const { fork, cluster } = await deploy(c);
        expect(leaked(fork, c), "fork-mode app").toEqual([]);
        // cluster.fork copies the daemon's process.env (filter_env does not help); the app's own
        // env, where pm2Restart sets each secret's name to "", is applied over it.
        expect(leaked(cluster, c), "cluster-mode app").toEqual([]);
        for (const name of SECRET_NAMES) expect(cluster.env[name], name).toBe("");
        passed = true;
      } finally {
        await dispose(c, passed);
      }
    },
  );
});
