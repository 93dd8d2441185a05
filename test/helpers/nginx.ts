import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import type { NginxHost } from "../../src/config/schema.ts";
import { type Spawned, spawnTracked } from "./processes.ts";
import { isRunning, until } from "./wait.ts";

/**
 * A private nginx for tests: its own prefix directory, its own pid file and logs, nothing
 * of the system's nginx involved. The master runs in the foreground (`daemon off`) as a
 * child tracked by processes.ts, so a test file that forgets stop() fails (setup.ts).
 *
 *     const nginx = await startNginx();
 *     await writeFile(path.join(nginx.confDir, "a.conf"), serverBlock({ port, body: "hello" }));
 *     await nginx.reload();
 *     ...
 *     await nginx.stop();
 *
 * Site files go into `confDir` (the http block has `include <confDir>/*.conf;`); it starts
 * with none, so nginx listens on nothing until a test adds a server. `host` is an
 * [nginx] table for deployq (test_command / reload_command / pid_file of this nginx), to pass
 * to deploySites() or to write into a test's deployq.toml.
 */
export interface PrivateNginx {
  /** The prefix directory (removed by stop()). */
  dir: string;
  /** `<dir>/conf.d`, included from the http block. */
  confDir: string;
  /** `<dir>/nginx.conf`. */
  confFile: string;
  pidFile: string;
  errorLog: string;
  /** `nginx -p <dir> -e <errorLog> -c <conf> -t`. */
  testCommand: string[];
  /** `nginx -p <dir> -e <errorLog> -c <conf> -s reload` (returns at once; the master reloads asynchronously). */
  reloadCommand: string[];
  /** test_command, reload_command and pid_file of this nginx; verify_timeout_s as given to startNginx. */
  host: NginxHost;
  /** The master's pid (as started; a reload keeps it). */
  masterPid: number;
  /** pids of the master's live children (its workers, including old ones still shutting down). */
  workerPids(): Promise<number[]>;
  /** Runs `reloadCommand` and waits until a new worker runs (throws if none comes: see the error log). */
  reload(): Promise<void>;
  /** What the error log says so far. */
  errorLogText(): Promise<string>;
  /** Fast shutdown (SIGTERM), waits until the master and every worker are gone, removes `dir`. Idempotent. */
  stop(): Promise<void>;
}

export interface StartNginxOptions {
  /** Default 1. */
  workerProcesses?: number;
  /** verify_timeout_s in `host` (default 10). */
  verifyTimeoutS?: number;
  /** Extra directives for the http block (before the include). */
  http?: string;
  /** Where the prefix directory is made (default: the OS temp dir). */
  parentDir?: string;
}

/** The nginx binary: $NGINX_BIN, else /usr/sbin/nginx, else `nginx` from PATH. */
export const NGINX_BIN = process.env.NGINX_BIN ?? (existsSync("/usr/sbin/nginx") ? "/usr/sbin/nginx" : "nginx");

/** A server block answering `body` (text/plain, status 200 unless given) on 127.0.0.1:port for every path. */
export function serverBlock(options: { port: number; body: string; status?: number; serverName?: string; extra?: string }): string {
  const body = options.body.replaceAll("\\", "\\\\").replaceAll("'", "\\'");
  return [
    "server {",
    `    listen 127.0.0.1:${options.port};`,
    `    server_name ${options.serverName ?? "localhost"};`,
    "    default_type text/plain;",
    ...(options.extra ? [`    ${options.extra}`] : []),
    `    location / { return ${options.status ?? 200} '${body}'; }`,
    "}",
    "",
  ].join("\n");
}

async function childPids(pid: number): Promise<number[]> {
  const found: number[] = [];
  for (const name of await readdir("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = await readFile(`/proc/${name}/stat`, "utf8");
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      if (Number(fields[1]) === pid && fields[0] !== "Z") found.push(Number(name));
    } catch {
      // gone meanwhile
    }
  }
  return found.sort((a, b) => a - b);
}

export async function startNginx(options: StartNginxOptions = {}): Promise<PrivateNginx> {
  const dir = await mkdtemp(path.join(options.parentDir ?? tmpdir(), "deployq-nginx-"));
  const confDir = path.join(dir, "conf.d");
  const confFile = path.join(dir, "nginx.conf");
  const pidFile = path.join(dir, "nginx.pid");
  const errorLog = path.join(dir, "error.log");
  await mkdir(confDir);
  await mkdir(path.join(dir, "tmp"));
  const temps = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"].map((t) => `    ${t}_temp_path ${path.join(dir, "tmp", t)};`);
  await writeFile(
    confFile,
    [
      "# Written by test/helpers/nginx.ts",
      "daemon off;",
      "master_process on;",
      `worker_processes ${options.workerProcesses ?? 1};`,
      `pid ${pidFile};`,
      `error_log ${errorLog} notice;`,
      "events { worker_connections 128; }",
      "http {",
      `    access_log ${path.join(dir, "access.log")};`,
      ...temps,
      ...(options.http ? [`    ${options.http}`] : []),
      `    include ${confDir}/*.conf;`,
      "}",
      "",
    ].join("\n"),
  );
  const base = [NGINX_BIN, "-p", `${dir}/`, "-e", errorLog, "-c", confFile];
  const testCommand = [...base, "-t"];
  const reloadCommand = [...base, "-s", "reload"];

  let spawned: Spawned | undefined;
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    if (spawned && spawned.child.exitCode === null && spawned.child.signalCode === null) {
      const pid = spawned.child.pid!;
      const workers = await childPids(pid);
      spawned.child.kill("SIGTERM");
      const all = [pid, ...workers];
      const gone = async () => (await Promise.all(all.map((p) => isRunning(p)))).every((running) => !running);
      try {
        await until(`nginx ${pid} and its workers to exit`, gone, 15_000);
      } catch {
        for (const p of all) {
          try {
            process.kill(p, "SIGKILL");
          } catch {
            // gone
          }
        }
        await until(`nginx ${pid} and its workers to die`, gone, 15_000);
      }
      await spawned.exited;
    }
    await rm(dir, { recursive: true, force: true });
  };

  try {
    spawned = spawnTracked(NGINX_BIN, base.slice(1), {}, dir);
    const master = spawned.child.pid!;
    await until(
      "the private nginx to write its pid file and start a worker",
      async () => {
        if (spawned!.child.exitCode !== null) throw new Error(`nginx exited at once (${spawned!.child.exitCode}): ${spawned!.output()}`);
        const text = await readFile(pidFile, "utf8").catch(() => "");
        return Number(text.trim()) === master && (await childPids(master)).length > 0;
      },
      30_000,
    );
  } catch (err) {
    await stop();
    throw err;
  }
  const masterPid = spawned.child.pid!;

  return {
    dir,
    confDir,
    confFile,
    pidFile,
    errorLog,
    testCommand,
    reloadCommand,
    host: { test_command: testCommand, reload_command: reloadCommand, pid_file: pidFile, verify_timeout_s: options.verifyTimeoutS ?? 10 },
    masterPid,
    workerPids: () => childPids(masterPid),
    async reload() {
      const before = new Set(await childPids(masterPid));
      const reloader = spawnTracked(reloadCommand[0]!, reloadCommand.slice(1), {}, dir);
      const { code } = await reloader.exited;
      if (code !== 0) throw new Error(`${reloadCommand.join(" ")} exited with ${code}: ${reloader.output()}`);
      await until("nginx to start a new worker after the reload (see its error log)", async () => (await childPids(masterPid)).some((p) => !before.has(p)), 30_000);
    },
    errorLogText: () => readFile(errorLog, "utf8").catch(() => ""),
    stop,
  };
}
