import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Spawned, spawnDeployq } from "../helpers/processes.ts";
import { type Workspace, createWorkspace } from "../helpers/workspace.ts";

/**
 * The dashboard's pages are .tsx, run by tsx at runtime (bin/deployq.js, no build step).
 * tsx reads the tsconfig.json of the working directory, so a daemon started elsewhere (by
 * pm2 or systemd) must still render them: started here from the workspace's folder.
 */
describe("the dashboard served by `deployq serve` started outside the repository", () => {
  let ws: Workspace;
  let daemon: Spawned | undefined;
  beforeAll(async () => {
    ws = await createWorkspace({ deployments: "", topLevel: `[dashboard]\npath = "/d"\n`, env: { DEPLOYQ_ADMIN_TOKEN: "cli-token" } });
  });
  afterAll(async () => {
    daemon?.child.kill("SIGTERM");
    await daemon?.exited;
    await ws?.dispose();
  });

  it("renders its login page and, once logged in, the overview", { timeout: 120_000 }, async () => {
    daemon = spawnDeployq(["serve", "--config", ws.configPath], { ...ws.env, DEPLOYQ_LOG_LEVEL: "warn" }, ws.dir);
    await daemon.waitFor("then look at the queues");
    const url = /listening on (http:\/\/\S+) /.exec(daemon.output())![1]!;
    const login = await fetch(`${url}/d/login`);
    expect(login.status).toBe(200);
    expect(await login.text()).toContain("<h1>Log in</h1>");
    const res = await fetch(`${url}/d/login`, { method: "POST", body: new URLSearchParams({ token: "cli-token" }), redirect: "manual" });
    expect(res.status).toBe(303);
    const cookie = res.headers.get("set-cookie")!.split(";")[0]!;
    const overview = await fetch(`${url}/d/`, { headers: { cookie } });
    expect(overview.status).toBe(200);
    expect(await overview.text()).toContain("<h1>Deployments</h1>");
  });
});
