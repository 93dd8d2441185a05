import { execFile } from "node:child_process";
import { readFile, readdir } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";
import { waitUntil } from "./load.ts";
import { REPO_ROOT } from "./processes.ts";

const run = promisify(execFile);

/** The project's own pm2 CLI (the one deployq runs). */
export const PM2_BIN = path.join(REPO_ROOT, "node_modules", ".bin", "pm2");

/** Processes whose environment or command line names this PM2_HOME (the pm2 daemon and its apps). */
export async function processesUsing(pm2Home: string): Promise<Array<{ pid: number; cmdline: string }>> {
  const found: Array<{ pid: number; cmdline: string }> = [];
  for (const name of await readdir("/proc")) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    try {
      const [environ, cmdline] = await Promise.all([readFile(`/proc/${name}/environ`, "utf8"), readFile(`/proc/${name}/cmdline`, "utf8")]);
      const stat = await readFile(`/proc/${name}/stat`, "utf8");
      if (stat.slice(stat.lastIndexOf(")") + 2)[0] === "Z") continue; // already dead, awaiting its parent
      if (environ.split("\0").includes(`PM2_HOME=${pm2Home}`) || cmdline.includes(pm2Home)) {
        found.push({ pid: Number(name), cmdline: cmdline.replaceAll("\0", " ").trim() });
      }
    } catch {
      // gone meanwhile, or not ours to read
    }
  }
  return found;
}

/**
 * Ends a private pm2: `pm2 kill` (stops the apps, then the daemon), waits until no process
 * of that PM2_HOME is left, SIGKILLs any that are. Returns what had to be killed, so the
 * test can fail on it: a test must not leave a pm2 daemon or an app running.
 */
export async function killPm2(pm2Home: string, env: NodeJS.ProcessEnv = {}): Promise<Array<{ pid: number; cmdline: string }>> {
  await run(PM2_BIN, ["kill"], { cwd: REPO_ROOT, env: { ...process.env, ...env, PM2_HOME: pm2Home }, timeout: 120_000 }).catch(() => {});
  await waitUntil(async () => (await processesUsing(pm2Home)).length === 0, { what: "every process of the private PM2_HOME has ended", timeoutMs: 60_000 }).catch(() => {});
  const left = await processesUsing(pm2Home);
  for (const p of left) {
    try {
      process.kill(p.pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
  return left;
}
