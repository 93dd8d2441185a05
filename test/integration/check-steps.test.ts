import { existsSync } from "node:fs";
import { chmod, chown, mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { formatArgv } from "../../src/exec/run-command.ts";
import type { CheckResult } from "../../src/steps/check-command.ts";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import { createRepo } from "../helpers/git.ts";
import { NGINX_BIN, type PrivateNginx, startNginx } from "../helpers/nginx.ts";
import { processesUsing } from "../helpers/pm2.ts";
import { DEPLOYQ_BIN, runDeployq, spawnTracked } from "../helpers/processes.ts";
import { type Workspace, createWorkspace } from "../helpers/workspace.ts";

/**
 * `deployq check` verifies, without changing anything, that each configured step can run:
 * pm2 reachable with the configured PM2_HOME, `sudo -n -l` grants the nginx and certbot
 * commands, conf_dir writable, webroot present. Real components: a private nginx
 * (test/helpers/nginx.ts), the real certbot binary (not run: check only looks it up), the
 * real sudo, and a private PM2_HOME in which check must not start a daemon.
 */

interface Setup {
  pm2Home: string;
  confDir: string;
  testCommand: string[];
  reloadCommand: string[];
  pidFile: string;
  certbotCommand: string[];
  webroot: string;
}

const toml = (value: string | string[]) => JSON.stringify(value);

function config(s: Setup, remote: string): { topLevel: string; deployments: string } {
  return {
    topLevel: [
      `pm2_home = ${toml(s.pm2Home)}`,
      "[nginx]",
      `test_command = ${toml(s.testCommand)}`,
      `reload_command = ${toml(s.reloadCommand)}`,
      `pid_file = ${toml(s.pidFile)}`,
      "[certbot]",
      `command = ${toml(s.certbotCommand)}`,
      `webroot = ${toml(s.webroot)}`,
      'email = "ops@example.com"',
    ].join("\n"),
    deployments: `
[deployments.shop]
repository = "octo-org/shop"
branch = "main"
remote = ${toml(remote)}
path = "./apps/shop"
restart = { pm2 = "ecosystem.config.cjs" }
nginx = { conf_dir = ${toml(s.confDir)} }
`,
  };
}

/** Every entry under `dir` (files with their bytes, directories, symlinks), to compare before and after. */
async function snapshot(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  let entries;
  try {
    entries = await readdir(dir, { recursive: true, withFileTypes: true });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return { "": "(missing)" };
    throw err;
  }
  for (const e of entries) {
    const full = path.join(e.parentPath, e.name);
    const st = await stat(full).catch(() => undefined);
    out[path.relative(dir, full)] = e.isFile() ? `file ${st?.mode.toString(8)} ${st?.mtimeMs} ${await readFile(full, "utf8")}` : e.isDirectory() ? `dir ${st?.mode.toString(8)}` : "other";
  }
  return out;
}

function byName(results: CheckResult[]): Map<string, CheckResult> {
  const map = new Map<string, CheckResult>();
  for (const r of results) {
    // "certbot webroot" may appear twice (missing, and the wrapper's fixed webroot): keep the first failure.
    if (!map.has(r.name) || (!r.ok && map.get(r.name)!.ok)) map.set(r.name, r);
  }
  return map;
}

// The sudo cases run as root (as CI does, see .ci/run), with sudo, unshare and setpriv installed.
describe("deployq check: each configured step can run, and nothing changes", () => {
  let nginx: PrivateNginx;
  let tdb: TestDatabase;
  let scratch: string;
  let remote: string;
  const workspaces: Workspace[] = [];

  beforeAll(async () => {
    nginx = await startNginx();
    tdb = await createTestDatabase("postgres");
    scratch = await mkdtemp(path.join(tmpdir(), "deployq-check-steps-"));
    // check also asks each remote (git ls-remote): a real one, readable by everyone (the sudo case runs as nobody).
    const repo = await createRepo(path.join(scratch, "remote"));
    await repo.commit({ "README.md": "shop" });
    remote = repo.bare;
  });
  afterAll(async () => {
    await nginx?.stop();
    await tdb?.dispose();
    for (const ws of workspaces) await ws.dispose();
    if (scratch) await rm(scratch, { recursive: true, force: true });
  });

  async function workspaceFor(s: Setup): Promise<{ ws: Workspace; env: NodeJS.ProcessEnv }> {
    const ws = await createWorkspace(config(s, remote));
    workspaces.push(ws);
    return { ws, env: { ...ws.env, DATABASE_URL: tdb.url, DEPLOYQ_CONFIG: ws.configPath, PM2_HOME: path.join(scratch, "not-this-one") } };
  }

  async function check(env: NodeJS.ProcessEnv): Promise<{ code: number | null; results: CheckResult[]; text: string }> {
    const json = await runDeployq(["check", "--json"], env);
    expect(json.stderr).toBe("");
    const text = await runDeployq(["check"], env);
    expect(text.code).toBe(json.code);
    return { code: json.code, results: JSON.parse(json.stdout) as CheckResult[], text: text.stdout };
  }

  /** Fresh pm2 home and webroot, the private nginx's commands, the real certbot (not run by check). */
  async function goodSetup(name: string): Promise<Setup> {
    const pm2Home = path.join(scratch, name, "pm2");
    const webroot = path.join(scratch, name, "webroot");
    const certbotDir = path.join(scratch, name, "certbot");
    await mkdir(pm2Home, { recursive: true });
    await mkdir(webroot, { recursive: true });
    return {
      pm2Home,
      confDir: nginx.confDir,
      testCommand: nginx.host.test_command,
      reloadCommand: nginx.host.reload_command,
      pidFile: nginx.host.pid_file,
      certbotCommand: [
        "certbot",
        "certonly",
        "--non-interactive",
        "--webroot",
        "-w",
        webroot,
        "--config-dir",
        path.join(certbotDir, "config"),
        "--work-dir",
        path.join(certbotDir, "work"),
        "--logs-dir",
        path.join(certbotDir, "logs"),
      ],
      webroot,
    };
  }

  /** What check must leave alone: no pm2 daemon, no reload of nginx, no file written anywhere. */
  async function unchanged<T>(s: Setup, ws: Workspace, run: () => Promise<T>): Promise<T> {
    const workers = await nginx.workerPids();
    const errorLog = await nginx.errorLogText();
    // The setup's folder holds PM2_HOME, the webroot and certbot's directories (and conf_dir, unless it is nginx's).
    const folder = path.dirname(s.pm2Home);
    const before = { folder: await snapshot(folder), conf: await snapshot(s.confDir), pm2: await snapshot(s.pm2Home), ws: await snapshot(ws.dir), nginx: await snapshot(nginx.dir) };
    const result = await run();
    expect(await processesUsing(s.pm2Home)).toEqual([]);
    expect(existsSync(path.join(s.pm2Home, "rpc.sock"))).toBe(false);
    expect(await snapshot(s.pm2Home)).toEqual(before.pm2);
    expect(await snapshot(s.confDir)).toEqual(before.conf);
    expect(await snapshot(folder)).toEqual(before.folder);
    expect(await snapshot(ws.dir)).toEqual(before.ws);
    // Neither test_command nor reload_command ran: same workers, nothing new in nginx's error log, its prefix untouched.
    expect(await nginx.workerPids()).toEqual(workers);
    expect(await nginx.errorLogText()).toBe(errorLog);
    expect(await snapshot(nginx.dir)).toEqual(before.nginx);
    return result;
  }

  it("passes when pm2, nginx and certbot can run, and changes nothing", async () => {
    const s = await goodSetup("good");
    // An operator's site file, and a PM2_HOME with a file (but no rpc.sock) in it: both must stay as they are.
    await writeFile(path.join(s.confDir, "operator.conf"), "# the operator's own site\n");
    await writeFile(path.join(s.pm2Home, "module_conf.json"), "{}\n");
    const { ws, env } = await workspaceFor(s);

    const { code, results, text } = await unchanged(s, ws, () => check(env));
    expect(results.filter((r) => !r.ok)).toEqual([]);
    expect(code).toBe(0);
    const r = byName(results);
    expect(r.get("database")).toMatchObject({ ok: true, detail: expect.stringMatching(/^Postgres answers \(postgres@/) });
    expect(r.get("remote")).toMatchObject({ ok: true, detail: expect.stringMatching(new RegExp(`^shop: ${remote} answers, main at [0-9a-f]{7}$`)) });
    expect(r.get("locks")).toEqual({ name: "locks", ok: true, detail: "in-process (no REDIS_URL): one workers process only" });
    expect(r.get("pm2")).toEqual({
      name: "pm2",
      ok: true,
      detail: `PM2_HOME ${s.pm2Home} is writable; no pm2 daemon runs there yet (the first deploy starts one) (for shop)`,
    });
    expect(r.get("nginx test_command")).toEqual({ name: "nginx test_command", ok: true, detail: `${s.testCommand.join(" ")} (${NGINX_BIN})` });
    expect(r.get("nginx reload_command")).toEqual({ name: "nginx reload_command", ok: true, detail: `${s.reloadCommand.join(" ")} (${NGINX_BIN})` });
    expect(r.get(`nginx conf_dir ${s.confDir}`)).toEqual({
      name: `nginx conf_dir ${s.confDir}`,
      ok: true,
      detail: `writable; nginx must include it (include ${s.confDir}/*.conf;)`,
    });
    expect(r.get("nginx pid_file")).toEqual({ name: "nginx pid_file", ok: true, detail: `${s.pidFile}: nginx master pid ${nginx.masterPid}` });
    expect(r.get("certbot command")).toEqual({ name: "certbot command", ok: true, detail: `${formatArgv(s.certbotCommand)} (/usr/bin/certbot)` });
    expect(r.get("certbot webroot")).toEqual({ name: "certbot webroot", ok: true, detail: s.webroot });
    expect(r.get("certbot email")).toEqual({ name: "certbot email", ok: true, detail: "ops@example.com" });

    // The human form: one "ok" line per check.
    expect(text).toMatch(/^ok {4}pm2 {10}PM2_HOME .* is writable; no pm2 daemon runs there yet/m);
    expect(text).toMatch(/^ok {4}nginx test_command .*-t \(/m);
    expect(text).toMatch(/^ok {4}nginx reload_command .*-s reload \(/m);
    expect(text).toMatch(new RegExp(`^ok {4}nginx conf_dir ${s.confDir} writable`, "m"));
    expect(text).toMatch(/^ok {4}nginx pid_file .*nginx master pid \d+$/m);
    expect(text).toMatch(/^ok {4}certbot command certbot certonly .* \(\/usr\/bin\/certbot\)$/m);
    expect(text).toMatch(/^ok {4}certbot webroot /m);
    expect(text).not.toMatch(/^FAIL/m);
  });

  it("fails naming a missing conf_dir, a missing webroot and a test_command that is not installed, saying what to do", async () => {
    const s = await goodSetup("bad");
    s.confDir = path.join(scratch, "bad", "no-such-conf.d");
    s.webroot = path.join(scratch, "bad", "no-such-webroot");
    s.testCommand = ["deployq-no-such-nginx", "-t"];
    const { ws, env } = await workspaceFor(s);

    const { code, results, text } = await unchanged(s, ws, () => check(env));
    expect(code).toBe(1);
    expect(results.filter((r) => !r.ok)).toEqual([
      { name: "nginx test_command", ok: false, detail: "deployq-no-such-nginx is not an executable file on PATH; install it or change [nginx] test_command" },
      {
        name: `nginx conf_dir ${s.confDir}`,
        ok: false,
        detail: `${s.confDir} does not exist: create it, owned by deployq's user, and include it from nginx's http block (include ${s.confDir}/*.conf;)`,
      },
      {
        name: "certbot webroot",
        ok: false,
        detail: `${s.webroot} does not exist: create it (install -d -m 0755 ${s.webroot}: see docs/production.md); nginx must serve it at /.well-known/acme-challenge/ for every site`,
      },
    ]);
    // Nothing was created to make them pass.
    expect(existsSync(s.confDir)).toBe(false);
    expect(existsSync(s.webroot)).toBe(false);
    // The rest still passes.
    const r = byName(results);
    expect(r.get("nginx reload_command")?.ok).toBe(true);
    expect(r.get("pm2")?.ok).toBe(true);
    expect(r.get("certbot command")?.ok).toBe(true);

    expect(text).toMatch(/^FAIL {2}nginx test_command deployq-no-such-nginx is not an executable file on PATH; install it or change \[nginx\] test_command$/m);
    expect(text).toMatch(new RegExp(`^FAIL {2}nginx conf_dir ${s.confDir} ${s.confDir} does not exist: create it`, "m"));
    expect(text).toMatch(new RegExp(`^FAIL {2}certbot webroot ${s.webroot} does not exist: create it`, "m"));
    expect(text.match(/^FAIL/gm)).toHaveLength(3);
  });

  it("asks sudo -n -l, without running anything: root may run the commands", async () => {
    const s = await goodSetup("sudo-root");
    s.testCommand = ["sudo", "-n", ...nginx.host.test_command];
    s.reloadCommand = ["sudo", "-n", ...nginx.host.reload_command];
    s.certbotCommand = ["sudo", "-n", "/usr/bin/certbot", ...s.certbotCommand.slice(1)];
    const { ws, env } = await workspaceFor(s);

    // The reload command is allowed here: had check run it, nginx would have new workers.
    const { code, results } = await unchanged(s, ws, () => check(env));
    expect(results.filter((r) => !r.ok)).toEqual([]);
    expect(code).toBe(0);
    const r = byName(results);
    expect(r.get("nginx test_command")).toEqual({ name: "nginx test_command", ok: true, detail: `sudo allows it: ${nginx.host.test_command.join(" ")}` });
    expect(r.get("nginx reload_command")).toEqual({ name: "nginx reload_command", ok: true, detail: `sudo allows it: ${nginx.host.reload_command.join(" ")}` });
    expect(r.get("certbot command")).toEqual({ name: "certbot command", ok: true, detail: `sudo allows it: ${s.certbotCommand.slice(2).join(" ")}` });
  });

  it("as a user whom sudo grants only test_command: the other two fail, saying what to install (private sudoers.d; needs root and unshare)", async () => {
    const s = await goodSetup("sudo-nobody");
    s.testCommand = ["sudo", "-n", NGINX_BIN, "-t"];
    s.reloadCommand = ["sudo", "-n", NGINX_BIN, "-s", "reload"];
    s.certbotCommand = ["sudo", "-n", "/usr/bin/certbot", "renew"];
    // Everything else is nobody's, so that only sudo's answers fail; nginx's pid file must be readable.
    s.confDir = path.join(scratch, "sudo-nobody", "conf.d");
    await mkdir(s.confDir);
    const { ws, env } = await workspaceFor(s);
    for (const dir of [ws.dir, s.pm2Home, s.confDir, s.webroot, path.dirname(s.pm2Home)]) await chown(dir, 65534, 65534);
    for (const file of await readdir(ws.dir)) await chown(path.join(ws.dir, file), 65534, 65534);
    // git refuses a repository owned by someone else ("dubious ownership"): the remote is nobody's too.
    for (const file of ["", ...(await readdir(remote, { recursive: true }))]) await chown(path.join(remote, file), 65534, 65534);
    await chmod(scratch, 0o755);
    const nginxMode = (await stat(nginx.dir)).mode & 0o777;
    await chmod(nginx.dir, 0o711);

    const sudoers = path.join(scratch, "sudo-nobody", "sudoers.d");
    await mkdir(sudoers, { mode: 0o755 });
    await writeFile(path.join(sudoers, "deployq-test"), `nobody ALL=(root) NOPASSWD: ${NGINX_BIN} -t\n`, { mode: 0o440 });
    const asNobody = async (args: string[]) => {
      const spawned = spawnTracked(
        "unshare",
        [
          "-m",
          "sh",
          "-c",
          'mount --bind "$0" /etc/sudoers.d && exec setpriv --reuid=65534 --regid=65534 --clear-groups "$@"',
          sudoers,
          process.execPath,
          DEPLOYQ_BIN,
          ...args,
        ],
        { ...env, HOME: ws.dir },
        ws.dir,
      );
      const { code } = await spawned.exited;
      return { code, output: spawned.output() };
    };
    try {
      const { code, output } = await unchanged(s, ws, () => asNobody(["check", "--json"]));
      expect(code, output).toBe(1);
      const results = JSON.parse(output) as CheckResult[];
      const r = byName(results);
      expect(r.get("nginx test_command")).toEqual({ name: "nginx test_command", ok: true, detail: `sudo allows it: ${NGINX_BIN} -t` });
      expect(r.get("nginx reload_command")).toEqual({
        name: "nginx reload_command",
        ok: false,
        detail:
          `sudo -n -l ${NGINX_BIN} -s reload failed: sudo's rules do not allow this command for this user; ` +
          "install sudoers/deployq (visudo -cf sudoers/deployq && install -m 0440 sudoers/deployq /etc/sudoers.d/deployq) or change [nginx] reload_command",
      });
      expect(r.get("certbot command")).toEqual({
        name: "certbot command",
        ok: false,
        detail:
          "sudo -n -l /usr/bin/certbot renew failed: sudo's rules do not allow this command for this user; " +
          "install sudoers/deployq and sudoers/deployq-certbot (see docs/production.md) or change [certbot] command",
      });
      expect(results.filter((x) => !x.ok).map((x) => x.name)).toEqual(["nginx reload_command", "certbot command"]);
    } finally {
      await chmod(nginx.dir, nginxMode);
    }
  });
});
