import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { freePort } from "../helpers/load.ts";
import { type Spawned, runDeployq, spawnDeployq } from "../helpers/processes.ts";
import { type Workspace, createWorkspace } from "../helpers/workspace.ts";

/** The quickstart's secret (README): public, so the next step may show it on a terminal. */
const QUICKSTART_SECRET = "dev-secret";

describe("deployq serve: the port and the printed next step", () => {
  let ws: Workspace;
  let filePort: number;
  const running: Spawned[] = [];

  beforeAll(async () => {
    filePort = await freePort();
    // No deployments: the test delivery is voided, nothing is fetched or built.
    ws = await createWorkspace({ port: filePort, deployments: "" });
  });
  afterAll(async () => {
    for (const p of running) {
      if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill("SIGKILL");
      await p.exited;
    }
    await ws?.dispose();
  });

  async function serve(args: string[], env: NodeJS.ProcessEnv): Promise<{ daemon: Spawned; url: string; nextStep: string }> {
    const daemon = spawnDeployq(["serve", "--config", ws.configPath, ...args], { ...ws.env, DEPLOYQ_LOG_LEVEL: "warn", ...env });
    running.push(daemon);
    await daemon.waitFor("then look at the queues");
    const url = /listening on (http:\/\/\S+) /.exec(daemon.output())![1]!;
    const nextStep = daemon.output().split("\n").find((l) => l.includes("send-test-delivery"))!;
    return { daemon, url, nextStep };
  }

  async function stop(daemon: Spawned): Promise<void> {
    daemon.child.kill("SIGINT");
    expect(await daemon.exited).toEqual({ code: null, signal: "SIGINT" });
  }

  it("--port 0 listens on a free port, and the next step names it, with the secret as a placeholder off a terminal; the printed command works", { timeout: 120_000 }, async () => {
    const { daemon, url, nextStep } = await serve(["--port", "0"], { GITHUB_WEBHOOK_SECRET: QUICKSTART_SECRET, DEPLOYQ_PORT: String(filePort) });
    try {
      expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
      expect(url).not.toBe(`http://127.0.0.1:${filePort}`);
      // stderr is a pipe here (as under pm2 or systemd): the value is not printed, even the public one.
      expect(nextStep).toBe(`  GITHUB_WEBHOOK_SECRET=… npx deployq send-test-delivery --config ${ws.configPath} --url ${url}/github-webhook`);
      expect(daemon.output()).not.toContain(QUICKSTART_SECRET);

      // What it says to run, with the secret filled in, reaches this daemon.
      const args = nextStep.trim().split(" ").slice(3);
      const sent = await runDeployq(args, { ...ws.env, GITHUB_WEBHOOK_SECRET: QUICKSTART_SECRET });
      // (voided: this workspace has no deployments, so nothing is fetched or built)
      expect(sent.stdout, sent.stderr).toContain(`POST ${url}/github-webhook`);
      expect(sent.stdout, sent.stderr).toMatch(/→ 200 \{"voided":true/);
    } finally {
      await stop(daemon);
    }
  });

  it("with the port of the file, the next step needs no --url", { timeout: 120_000 }, async () => {
    const { daemon, url, nextStep } = await serve([], { DEPLOYQ_PORT: "" });
    try {
      expect(url).toBe(`http://127.0.0.1:${filePort}`);
      expect(nextStep).toBe(`  GITHUB_WEBHOOK_SECRET=… npx deployq send-test-delivery --config ${ws.configPath}`);
    } finally {
      await stop(daemon);
    }
  });

  it("refuses a port that is not one, before starting anything, with EX_CONFIG (78: pm2 and systemd do not restart it)", async () => {
    const flag = await runDeployq(["serve", "--config", ws.configPath, "--port", "70000"], ws.env);
    expect(flag.code).toBe(78);
    expect(flag.stderr).toBe(`deployq: --port must be a port number from 1 to 65535, or 0 to let the system pick a free one (printed at start), not "70000"\n`);
    const variable = await runDeployq(["receiver", "--config", ws.configPath], { ...ws.env, DEPLOYQ_PORT: "http" });
    expect(variable.code).toBe(78);
    expect(variable.stderr).toContain(`DEPLOYQ_PORT must be a port number from 1 to 65535`);
  });
});
