import { type ChildProcess, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";

export const REPO_ROOT = fileURLToPath(new URL("../..", import.meta.url));
export const DEPLOYQ_BIN = fileURLToPath(new URL("../../bin/deployq.js", import.meta.url));

const children = new Set<ChildProcess>();

export interface Spawned {
  child: ChildProcess;
  output(): string;
  /** Resolves with the exit code (or signal) once the process has ended. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Resolves when the output contains `text`. */
  waitFor(text: string | RegExp, timeoutMs?: number): Promise<void>;
}

/** Spawns `deployq <args>` (an argv array, no shell) and tracks it, so that a test that leaves it running fails. */
export function spawnDeployq(args: string[], env: NodeJS.ProcessEnv, cwd = REPO_ROOT): Spawned {
  return spawnTracked(process.execPath, [DEPLOYQ_BIN, ...args], env, cwd);
}

/** Spawns any program, tracked like spawnDeployq. */
export function spawnTracked(file: string, args: string[], env: NodeJS.ProcessEnv = {}, cwd = REPO_ROOT): Spawned {
  const child = spawn(file, args, { cwd, env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  children.add(child);
  let out = "";
  const waiters = new Set<() => void>();
  const onData = (chunk: Buffer) => {
    out += chunk.toString();
    for (const w of waiters) w();
  };
  child.stdout!.on("data", onData);
  child.stderr!.on("data", onData);
  child.once("error", (err) => {
    // Never started (ENOENT: not installed): nothing to wait for or to kill.
    if (child.pid === undefined) children.delete(child);
    onData(Buffer.from(`${file}: ${err.message}\n`));
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once("close", (code, signal) => {
      children.delete(child);
      for (const w of waiters) w();
      resolve({ code, signal });
    });
  });
  return {
    child,
    output: () => out,
    exited,
    waitFor(text, timeoutMs = 90_000) {
      return new Promise<void>((resolve, reject) => {
        const matches = () => (typeof text === "string" ? out.includes(text) : text.test(out));
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`timed out waiting for ${String(text)}; output so far:\n${out}`));
        }, timeoutMs);
        const check = () => {
          if (matches()) {
            clearTimeout(timer);
            waiters.delete(check);
            resolve();
          } else if (child.exitCode !== null || child.signalCode !== null) {
            clearTimeout(timer);
            waiters.delete(check);
            reject(new Error(`process ended before ${String(text)}; output:\n${out}`));
          }
        };
        waiters.add(check);
        check();
      });
    },
  };
}

/** Kills what is still running (so one failure does not cascade), then fails if anything was. */
export async function assertNoChildrenRunning(): Promise<void> {
  const running = [...children];
  if (running.length === 0) return;
  for (const c of running) c.kill("SIGKILL");
  await Promise.all(running.map((c) => new Promise((resolve) => (c.exitCode !== null || c.signalCode !== null ? resolve(null) : c.once("exit", resolve)))));
  throw new Error(`test left ${running.length} child process(es) running: ${running.map((c) => c.spawnargs.join(" ")).join("; ")}`);
}

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `deployq <args>` to completion (tracked like spawnDeployq), optionally feeding stdin. */
export function runDeployq(args: string[], env: NodeJS.ProcessEnv, input?: string): Promise<RunResult> {
  const child = spawn(process.execPath, [DEPLOYQ_BIN, ...args], { cwd: REPO_ROOT, env: { ...process.env, ...env }, stdio: ["pipe", "pipe", "pipe"] });
  children.add(child);
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (c: Buffer) => (stdout += c.toString()));
  child.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
  child.stdin.end(input ?? "");
  return new Promise((resolve) => {
    child.once("close", (code) => {
      children.delete(child);
      resolve({ code, stdout, stderr });
    });
  });
}
