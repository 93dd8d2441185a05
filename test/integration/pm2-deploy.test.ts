import { mkdtemp, readlink, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createRepo, type TestRepo } from "../helpers/git.ts";
import { freePort } from "../helpers/load.ts";
import { killPm2 } from "../helpers/pm2.ts";
import { type Spawned, runDeployq, spawnDeployq } from "../helpers/processes.ts";
import { until } from "../helpers/wait.ts";
import { type Workspace, createWorkspace, followingDeployment } from "../helpers/workspace.ts";

/** A small HTTP app: answers its VERSION; /health fails in a version whose VERSION file says so. */
const SERVER_JS = `const http = require("node:http");
const fs = require("node:fs");
const path = require("node:path");
const version = fs.readFileSync(path.join(__dirname, "VERSION"), "utf8").trim();
const healthy = !version.endsWith("-broken");
const server = http.createServer((req, res) => {
  if (req.url === "/health") {
    res.statusCode = healthy ? 200 : 500;
    res.end(healthy ? "ok" : "database connection refused");
    return;
  }
  res.end(version);
});
server.listen(Number(process.env.PORT), "127.0.0.1", () => process.send && process.send("ready"));
process.on("SIGINT", () => server.close(() => process.exit(0)));
`;
const ECOSYSTEM = `module.exports = {
  apps: [{ name: "web", script: "server.js", exec_mode: "fork", wait_ready: true, listen_timeout: 10000, kill_timeout: 5000 }],
};
`;

describe("restart with pm2, health check and automatic rollback, through the daemon and the CLI", () => {
  let dir: string;
  let pm2Home: string;
  let repo: TestRepo;
  let ws: Workspace;
  let env: NodeJS.ProcessEnv;
  let serve: Spawned | undefined;
  let appUrl: string;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "deployq-pm2-deploy-"));
    pm2Home = path.join(dir, "pm2");
    repo = await createRepo(dir);
    const port = await freePort();
    appUrl = `http://127.0.0.1:${port}`;
    ws = await createWorkspace({
      topLevel: `pm2_home = "${pm2Home}"`,
      deployments: followingDeployment(
        "app",
        repo.bare,
        `
restart = { pm2 = "ecosystem.config.cjs", env = { PORT = "${port}" } }
health = { url = "${appUrl}/health", timeout_s = 3 }
`,
      ),
    });
    env = { ...ws.env, DATABASE_URL: "", DEPLOYQ_CONFIG: ws.configPath, PM2_HOME: "" };
    serve = spawnDeployq(["serve"], env);
    await serve.waitFor("listening on");
  });

  afterAll(async () => {
    if (serve) {
      serve.child.kill("SIGTERM");
      await serve.exited;
    }
    const left = await killPm2(pm2Home);
    await ws?.dispose();
    await rm(dir, { recursive: true, force: true });
    expect(left, "processes of the private PM2_HOME left after pm2 kill").toEqual([]);
  });

  const answer = async () => (await fetch(appUrl)).text();
  const release = async (name: string) => {
    const list = JSON.parse((await runDeployq(["releases", name, "--json"], env)).stdout) as Array<{ name: string; sha: string; current: boolean; bad?: { reason: string } }>;
    return list;
  };

  it("serves each new release after its deploy; a release that fails its health check is rolled back, marked bad, and skipped by rollback", { timeout: 300_000 }, async () => {
    const deploy = async (version: string) => {
      const sha = await repo.commit({ "server.js": SERVER_JS, "ecosystem.config.cjs": ECOSYSTEM, VERSION: `${version}\n` });
      return { sha, result: await runDeployq(["deploy", "app"], env) };
    };

    const v1 = await deploy("v1");
    expect(v1.result.stdout).toContain("== restart");
    expect(v1.result.stdout).toContain("== health check");
    expect(v1.result.code, v1.result.stdout).toBe(0);
    expect(await answer()).toBe("v1");
    // The log is for people: pm2 started its daemon in a new PM2_HOME, yet no banner, no colour codes, no internal list.
    expect(v1.result.stdout).toContain("[PM2] Successfully saved in");
    expect(v1.result.stdout).not.toContain("@@deployq-pm2-list@@");
    expect(v1.result.stdout).not.toContain("__/\\\\\\");
    expect(v1.result.stdout).not.toContain("\x1b");

    const v2 = await deploy("v2");
    expect(v2.result.code, v2.result.stdout).toBe(0);
    expect(await answer()).toBe("v2");
    const v2Release = await readlink(path.join(ws.dir, "apps", "app", "current"));

    // v3 starts, but its health check answers 500: v2 is switched back and restarted.
    const v3 = await deploy("v3-broken");
    expect(v3.result.code).toBe(1);
    expect(v3.result.stdout).toMatch(/health check .* failed within 3 s; last answer: HTTP 500: database connection refused/);
    expect(await readlink(path.join(ws.dir, "apps", "app", "current"))).toBe(v2Release);
    await until("v2 serves again", async () => (await answer().catch(() => "")) === "v2");
    const afterV3 = await release("app");
    const bad = afterV3.find((r) => r.sha === v3.sha);
    expect(bad?.bad?.reason).toMatch(/HTTP 500/);
    expect(afterV3.find((r) => r.current)?.sha).toBe(v2.sha);

    // A rollback never picks it: named, it is refused; after v4, `rollback` goes past it to v2.
    const toBad = await runDeployq(["rollback", "app", "--to", bad!.name], env);
    expect(toBad.code).toBe(2);
    expect(toBad.stderr).toMatch(/it is marked bad \(.*HTTP 500/);
    const v4 = await deploy("v4");
    expect(v4.result.code, v4.result.stdout).toBe(0);
    expect(await answer()).toBe("v4");
    const back = await runDeployq(["rollback", "app"], env);
    expect(back.code, back.stdout).toBe(0);
    expect(back.stdout).toContain(`switch current → ${v2Release} (rollback)`);
    expect(await answer()).toBe("v2");

    // A reboot: deployq and pm2 (its daemon and the apps) are gone; deployq starts the current release's apps again.
    serve!.child.kill("SIGTERM");
    await serve!.exited;
    expect(await killPm2(pm2Home)).toEqual([]);
    await expect(answer()).rejects.toThrow();
    serve = spawnDeployq(["serve"], env);
    await serve.waitFor("listening on");
    await until("the current release's app serves again", async () => (await answer().catch(() => "")) === "v2");
  });
});
