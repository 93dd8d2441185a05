import { execFile } from "node:child_process";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { freePort } from "./load.ts";

const run = promisify(execFile);

/** The newest PostgreSQL server binaries Debian installed (/usr/lib/postgresql/<major>/bin). */
async function binDir(): Promise<string> {
  const majors = (await readdir("/usr/lib/postgresql")).filter((d) => /^\d+$/.test(d)).sort((a, b) => Number(b) - Number(a));
  if (majors.length === 0) throw new Error("no PostgreSQL server under /usr/lib/postgresql: apt-get install postgresql");
  return path.join("/usr/lib/postgresql", majors[0]!, "bin");
}


export interface PrivatePostgres {
  url: string;
  /** Starts the server and waits until it accepts connections. */
  start(): Promise<void>;
  /** Stops it the way a crash or an OOM kill would: no shutdown checkpoint, every connection cut. */
  crash(): Promise<void>;
  /** Stops it (if running) and removes its cluster. */
  dispose(): Promise<void>;
}

/**
 * A PostgreSQL cluster of one test's own, which it may stop and start: the machine's shared
 * server runs every other test's databases. Made by initdb under the `postgres` user
 * (the server refuses to run as root), on a free port, with trust authentication; not
 * started yet.
 */
export async function createPrivatePostgres(): Promise<PrivatePostgres> {
  const bin = await binDir();
  const dir = await mkdtemp(path.join(tmpdir(), "deployq-pg-"));
  const data = path.join(dir, "data");
  const port = await freePort();
  const asPostgres = (file: string, args: string[]) => run("runuser", ["-u", "postgres", "--", path.join(bin, file), ...args], { cwd: "/" });
  await run("chown", ["postgres:postgres", dir]);
  await asPostgres("initdb", ["-D", data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"]);
  const options = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off`;
  let running = false;
  return {
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    async start() {
      await asPostgres("pg_ctl", ["-D", data, "-o", options, "-l", path.join(dir, "log"), "-w", "-t", "60", "start"]);
      running = true;
    },
    async crash() {
      await asPostgres("pg_ctl", ["-D", data, "-m", "immediate", "-w", "stop"]);
      running = false;
    },
    async dispose() {
      if (running) await asPostgres("pg_ctl", ["-D", data, "-m", "immediate", "-w", "stop"]).catch(() => {});
      running = false;
      await rm(dir, { recursive: true, force: true });
    },
  };
}
