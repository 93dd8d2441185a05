import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { type Daemon, startDaemon } from "../../src/daemon.ts";
import { silentLogger } from "../../src/log.ts";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import { type TestRepo, createRepo } from "../helpers/git.ts";
import { type Spawned, runDeployq, spawnDeployq } from "../helpers/processes.ts";
import { until } from "../helpers/wait.ts";
import { type Workspace, createWorkspace, followingDeployment, post, pushPayload, signedDelivery } from "../helpers/workspace.ts";

const TOKEN = "watch-cli-token";

/** `deployq watch` and `deployq logs -f`, as an operator runs them against a running daemon. */
describe("deployq watch and deployq logs -f", () => {
  let ws: Workspace;
  let tdb: TestDatabase;
  let daemon: Daemon;
  let repo: TestRepo;
  let reposDir: string;
  let env: NodeJS.ProcessEnv;
  const spawned: Spawned[] = [];

  beforeAll(async () => {
    reposDir = await mkdtemp(path.join(tmpdir(), "deployq-repos-"));
    repo = await createRepo(reposDir);
    ws = await createWorkspace({
      deployments: followingDeployment("app", repo.bare, `commands = [["sh", "-c", "printf 'built \\\\033[31mred\\\\033[0m\\\\n'; if [ -e FAIL ]; then exit 4; fi"]]`),
      env: { DEPLOYQ_ADMIN_TOKEN: TOKEN },
    });
    tdb = await createTestDatabase("postgres");
    daemon = await startDaemon({ settings: ws.settings, role: "serve", logger: silentLogger(), database: tdb.database });
    env = { ...ws.env, DEPLOYQ_CONFIG: ws.configPath, DATABASE_URL: tdb.url };
  });
  afterEach(async () => {
    for (const p of spawned.splice(0)) {
      if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill("SIGINT");
      await p.exited;
    }
  });
  afterAll(async () => {
    await daemon?.close();
    await tdb?.dispose();
    await ws?.dispose();
    await rm(reposDir, { recursive: true, force: true });
  });

  const spawn = (args: string[], extraEnv: NodeJS.ProcessEnv = {}) => {
    const p = spawnDeployq(args, { ...env, ...extraEnv });
    spawned.push(p);
    return p;
  };

  async function push(files: Record<string, string>, ref?: string): Promise<string> {
    const sha = await repo.commit(files);
    const res = await post(daemon.url!, await signedDelivery(pushPayload({ repository: "octo-org/app", after: sha, ...(ref ? { ref } : {}) })));
    // A ref no deployment follows is voided at once (200); a followed one queued (202).
    expect(res.status).toBe(ref ? 200 : 202);
    return res.body.queued as string;
  }

  it("watch --json prints every event as the JSON message /ws/v0 sends, and stops on SIGINT", async () => {
    const watch = spawn(["watch", "--json"]); // finds the daemon announced in the data directory
    await watch.waitFor("deployq: watching");
    const entry = await push({ "index.html": "v1" });
    await until("the finished event in watch's output", async () => finishedLine(watch.output(), entry));
    watch.child.kill("SIGINT");
    expect((await watch.exited).code).toBe(0);
    const messages = watch
      .output()
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    const mine = messages.filter((m) => m.entry === entry);
    expect(mine.map((m) => `${m.type as string}:${m.name as string}`)).toEqual(expect.arrayContaining(["DeliveryEvent:received", "DeployEvent:started", "DeployEvent:finished"]));
    expect(mine.find((m) => m.name === "finished")).toMatchObject({ outcome: "succeeded", deployment: "app" });
  });

  it("watch prints one readable line per event, with terminal controls from a push stripped", async () => {
    const watch = spawn(["watch", "app"]);
    await watch.waitFor("deployq: watching");
    // A ref no deployment follows, with an escape sequence in it: voided, and shown without the escape.
    await push({ "index.html": "v2" }, "refs/heads/evil\u001b[2J\u001b]0;owned\u0007");
    await push({ "index.html": "v3" });
    await watch.waitFor(/deploy \d+ succeeded [0-9a-f]{7} in \d+\.\ds/);
    const out = watch.output();
    expect(out).toMatch(/delivery [0-9a-f-]{8} voided \(push octo-org\/app evil\)/);
    expect(out).toMatch(/app\s+deploy \d+ started \(attempt 1, main [0-9a-f]{7}\)/);
    expect(out).toMatch(/app\s+deploy \d+ build ok in \d+\.\ds/);
    expect([...out].filter((c) => c !== "\n" && (c < " " || c === "\u007f"))).toEqual([]);
  });

  it("logs -f follows the next deploy's log to its end and exits with its outcome", async () => {
    const logs = spawn(["logs", "-f", "app"]);
    await logs.waitFor("deployq: following");
    await push({ "index.html": "v4", FAIL: "" });
    const exited = await logs.exited;
    expect(exited.code).toBe(1);
    expect(logs.output()).toContain("built red\n");
    expect(logs.output()).toMatch(/== (failed|retrying)/);
    expect(logs.output()).not.toContain("\u001b");
    // Without -f: the newest log, from the file.
    const last = await runDeployq(["logs", "app"], env);
    expect(last.stdout).toContain("built red");
  });

  it("says what is wrong with a wrong token, and exits 2", async () => {
    const wrong = await runDeployq(["watch"], { ...env, DEPLOYQ_ADMIN_TOKEN: "wrong" });
    expect(wrong.code).toBe(2);
    expect(wrong.stderr).toContain("/ws/v0 refused the authentication: invalid token (check DEPLOYQ_ADMIN_TOKEN)");
    const none = await runDeployq(["watch"], { ...env, DEPLOYQ_ADMIN_TOKEN: "" });
    expect(none.code).toBe(2);
    expect(none.stderr).toContain("DEPLOYQ_ADMIN_TOKEN is not set");
  });
});

function finishedLine(output: string, entry: string): boolean {
  return output.split("\n").some((l) => l.startsWith("{") && l.includes(entry) && l.includes('"name":"finished"'));
}
