/**
 * Live log latency (bench/run.ts, section `live-log`): from a line written by a build
 * command to its arrival at a /ws/v0 client. A real `node bin/deployq.js serve` on a fresh
 * database, one deployment whose only command is a Node script that prints `lines` lines,
 * `spacingMs` apart, each carrying the wall-clock time (performance.timeOrigin +
 * performance.now(), sub-millisecond, the same clock in every process of this machine) at
 * which it was written. A `ws` client authenticates (AuthenticationRequest), subscribes
 * to the deployment (Subscribe), then the bench POSTs a signed push; each LogLine's
 * latency is its arrival time minus the time in the line.
 *
 * The baseline: the same script spawned by the bench itself, its stdout read through a
 * pipe, the same way: what the line costs with nothing in between.
 *
 * The first lines are written while the deploy starts being followed (the stream learns of
 * the deploy through the event stream, then reads the log from its start): they are shown
 * apart and left out of the headline. Nothing is asserted.
 */
import { execFile, spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdir, writeFile } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";
import { sign } from "@octokit/webhooks-methods";
import { WebSocket } from "ws";
import { pushPayload } from "../src/push-payload.ts";
import { type DeployBenchOptions, type Distribution, distribution } from "./deploy.ts";

export const TARGET_LIVE_LOG_P99_MS = 50;
const ADMIN_TOKEN = "bench-admin-token-live-log";
const run = promisify(execFile);
const GIT_ENV = { GIT_AUTHOR_NAME: "bench", GIT_AUTHOR_EMAIL: "bench@example.invalid", GIT_COMMITTER_NAME: "bench", GIT_COMMITTER_EMAIL: "bench@example.invalid" };

export interface LiveLogBenchOptions extends Pick<DeployBenchOptions, "workDir" | "repoRoot" | "secret" | "createDatabase" | "startChild" | "childEnv" | "addCleanup" | "progress"> {
  lines: number;
  spacingMs: number;
  /** Lines at the start left out of the headline. */
  skip: number;
}

export interface LiveLogFigures {
  lines: number;
  spacingMs: number;
  skip: number;
  received: number;
  /** deployq: command -> log file -> follower -> /ws/v0 client, the lines after `skip`. */
  ws: Distribution;
  /** deployq, the first `skip` lines (written while following starts). */
  wsStart: Distribution;
  baseline: Distribution;
}

/** The build command: prints a numbered, timestamped line every `spacing` ms. */
const script = (lines: number, spacing: number) =>
  `let i=0;const t=setInterval(()=>{process.stdout.write("bench-line "+i+" "+(performance.timeOrigin+performance.now()).toFixed(3)+"\\n");if(++i>=${lines})clearInterval(t)},${spacing});`;

const LINE = /bench-line (\d+) (\d+\.\d+)/;
const now = () => performance.timeOrigin + performance.now();

async function git(cwd: string, ...args: string[]): Promise<string> {
  const { stdout } = await run("git", args, { cwd, env: { ...process.env, ...GIT_ENV } });
  return stdout.trim();
}

/** The baseline: the same script, read through a pipe by this process. */
async function baseline(lines: number, spacingMs: number): Promise<number[]> {
  const latencies: number[] = [];
  const child = spawn(process.execPath, ["-e", script(lines, spacingMs)], { stdio: ["ignore", "pipe", "inherit"] });
  let pending = "";
  child.stdout.on("data", (chunk: Buffer) => {
    const at = now();
    pending += chunk.toString();
    const parts = pending.split("\n");
    pending = parts.pop()!;
    for (const line of parts) {
      const m = LINE.exec(line);
      if (m) latencies[Number(m[1])] = at - Number(m[2]);
    }
  });
  await new Promise<void>((resolve, reject) => {
    child.once("error", reject);
    child.once("exit", () => resolve());
  });
  return latencies;
}

export async function runLiveLogBench(o: LiveLogBenchOptions): Promise<LiveLogFigures> {
  const dir = path.join(o.workDir, "live-log");
  const origin = path.join(dir, "origin.git");
  const work = path.join(dir, "work");
  await mkdir(origin, { recursive: true });
  await mkdir(work, { recursive: true });
  await git(origin, "init", "--bare", "--quiet", "--initial-branch=main");
  await git(work, "init", "--quiet", "--initial-branch=main");
  await writeFile(path.join(work, "README"), "live log bench\n");
  await git(work, "add", "--all");
  await git(work, "commit", "--quiet", "-m", "initial");
  await git(work, "push", "--quiet", origin, "HEAD:refs/heads/main");
  const sha = await git(work, "rev-parse", "HEAD");

  const daemonDir = path.join(dir, "deployq");
  await mkdir(daemonDir, { recursive: true });
  const configPath = path.join(daemonDir, "deployq.toml");
  await writeFile(
    configPath,
    `data_dir = "./data"
queues_dir = "./queues"

[server]
host = "127.0.0.1"
port = 0

[deployments.app]
repository = "octo-org/app"
branch = "main"
remote = ${JSON.stringify(origin)}
path = "./apps/app"
commands = [[${JSON.stringify(process.execPath)}, "-e", ${JSON.stringify(script(o.lines, o.spacingMs))}]]
`,
  );
  const database = await o.createDatabase();
  o.progress(`  live-log: starting node bin/deployq.js serve; a build command printing ${o.lines} lines ${o.spacingMs} ms apart…`);
  const daemon = o.startChild(
    "deployq serve (live-log)",
    process.execPath,
    [path.join(o.repoRoot, "bin/deployq.js"), "serve", "--config", configPath],
    o.childEnv({ GITHUB_WEBHOOK_SECRET: o.secret, DATABASE_URL: database.url, DEPLOYQ_LOG_LEVEL: "warn", DEPLOYQ_ADMIN_TOKEN: ADMIN_TOKEN }),
  );
  const [, url] = await daemon.waitFor(/listening on (http:\/\/\S+)/, 60_000);
  // The server listens before the database is reached: wait until it is ready.
  for (let tries = 0; ; tries++) {
    const res = await fetch(`${url}/healthz`).catch(() => undefined);
    await res?.text();
    if (res?.ok) break;
    if (tries > 600) throw new Error(`live-log bench: deployq serve did not become healthy\n${daemon.output().slice(-2000)}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }

  const ws = new WebSocket(`${url!.replace(/^http/, "ws")}/ws/v0/`);
  o.addCleanup("close the live-log bench's /ws/v0 client", async () => ws.terminate());
  const latencies: number[] = [];
  let received = 0;
  let answers = 0;
  let failure: Error | undefined;
  let answered: () => void = () => {};
  let ended: () => void = () => {};
  const end = new Promise<void>((resolve) => (ended = resolve));
  ws.on("message", (data) => {
    const at = now();
    const message = JSON.parse(data.toString()) as { type: string; status?: string; errors?: string[]; line?: string };
    if (message.type === "Response") {
      if (message.status !== "success") failure ??= new Error(`live-log bench: /ws/v0 answered ${JSON.stringify(message)}`);
      answers++;
      answered();
    } else if (message.type === "LogLine") {
      const m = LINE.exec(message.line ?? "");
      if (m) {
        latencies[Number(m[1])] = at - Number(m[2]);
        if (++received === o.lines) ended();
      }
    } else if (message.type === "LogEnd") {
      ended();
    }
  });
  const nextAnswer = (n: number) =>
    new Promise<void>((resolve) => {
      answered = () => answers >= n && resolve();
      answered();
    }).then(() => {
      if (failure) throw failure;
    });
  await new Promise<void>((resolve, reject) => {
    ws.once("open", () => resolve());
    ws.once("error", reject);
  });
  ws.send(JSON.stringify({ type: "AuthenticationRequest", token: ADMIN_TOKEN }));
  await nextAnswer(1);
  ws.send(JSON.stringify({ type: "Subscribe", deployments: ["app"] }));
  await nextAnswer(2);

  const body = JSON.stringify(pushPayload({ repository: "octo-org/app", branch: "main", after: sha }));
  const res = await fetch(`${url}/github-webhook`, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      "user-agent": "GitHub-Hookshot/bench",
      "x-github-event": "push",
      "x-github-delivery": randomUUID(),
      "x-github-hook-id": "123456",
      "x-hub-signature-256": await sign(o.secret, body),
    },
    body,
  });
  await res.text();
  if (res.status !== 202) throw new Error(`live-log bench: the push was answered ${res.status}`);
  const timeout = setTimeout(() => ended(), 60_000 + o.lines * o.spacingMs);
  await end;
  clearTimeout(timeout);
  ws.close();
  await daemon.stop();
  if (received < o.lines) throw new Error(`live-log bench: only ${received} of ${o.lines} lines reached the /ws/v0 client\n${daemon.output().slice(-2000)}`);

  o.progress(`  live-log: the baseline, the same script read through a pipe…`);
  const base = await baseline(o.lines, o.spacingMs);
  return {
    lines: o.lines,
    spacingMs: o.spacingMs,
    skip: o.skip,
    received,
    ws: distribution(latencies.slice(o.skip)),
    wsStart: distribution(latencies.slice(0, o.skip)),
    baseline: distribution(base.slice(o.skip)),
  };
}

export function liveLogReport(f: LiveLogFigures, table: (rows: string[][]) => string): string {
  const row = (label: string, d: Distribution) => [label, String(d.n), d.p50.toFixed(2), d.p90.toFixed(2), d.p99.toFixed(2), d.max.toFixed(2), d.mean.toFixed(2)];
  return [
    `live log: a build command's line -> a /ws/v0 client; ${f.lines} lines ${f.spacingMs} ms apart, the first ${f.skip} shown apart`,
    table([
      ["path", "lines", "p50 ms", "p90 ms", "p99 ms", "max ms", "mean ms"],
      row("deployq: command -> log file -> /ws/v0 client", f.ws),
      row(`deployq: the first ${f.skip} lines (following starts)`, f.wsStart),
      row("baseline: the same command read through a pipe", f.baseline),
    ]),
    `ratio deployq/baseline p99: ${(f.ws.p99 / f.baseline.p99).toFixed(1)}x; p99 ${f.ws.p99.toFixed(1)} ms (target < ${TARGET_LIVE_LOG_P99_MS} ms: ${f.ws.p99 < TARGET_LIVE_LOG_P99_MS ? "met" : "NOT met"})`,
  ].join("\n");
}
