import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Daemon, startDaemon } from "../../src/daemon.ts";
import { silentLogger } from "../../src/log.ts";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import { type TestRepo, createRepo } from "../helpers/git.ts";
import { freePort } from "../helpers/load.ts";
import { runDeployq } from "../helpers/processes.ts";
import { type Workspace, createWorkspace, post, pushPayload, signedDelivery } from "../helpers/workspace.ts";

/**
 * `deployq send-test-delivery` and `deployq deliveries` against a running receiver (the
 * receiver alone: entries stay in router/, where the test reads what was sent).
 */
describe("deployq send-test-delivery and deliveries", () => {
  let dir: string;
  let ws: Workspace;
  let tdb: TestDatabase;
  let daemon: Daemon;
  let repo: TestRepo;
  let env: NodeJS.ProcessEnv;
  let mainSha: string;
  let greenSha: string;

  beforeAll(async () => {
    tdb = await createTestDatabase("postgres");
    dir = await mkdtemp(path.join(tmpdir(), "deployq-send-test-"));
    repo = await createRepo(dir, "app");
    mainSha = await repo.commit({ "README.md": "main\n" });
    greenSha = await repo.commit({ "README.md": "green\n" }, { branch: "deploy-green" });
    const deployments = ["app", "main", "staging", "deploy-*", "previews", "preview/**"];
    let toml = "";
    for (let i = 0; i < deployments.length; i += 2) {
      toml += `\n[deployments.${deployments[i]}]\nrepository = "octo-org/app"\nbranch = "${deployments[i + 1]}"\nremote = "${repo.bare}"\npath = "./apps/${deployments[i]}"\n`;
    }
    ws = await createWorkspace({ deployments: toml });
    daemon = await startDaemon({ settings: ws.settings, role: "receiver", logger: silentLogger(), database: tdb.database });
    env = { ...ws.env, DATABASE_URL: tdb.url, DEPLOYQ_CONFIG: ws.configPath };
  });
  afterAll(async () => {
    await daemon?.close();
    await tdb?.dispose();
    await ws?.dispose();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const send = (...args: string[]) => runDeployq(["send-test-delivery", "--url", `${daemon.url}/github-webhook`, ...args], env);
  async function sentEntry(stdout: string): Promise<{ ref: string; after: string }> {
    const name = /"queued":"([^"]+)"/.exec(stdout)?.[1];
    expect(name, stdout).toBeDefined();
    return JSON.parse(await readFile(path.join(ws.queuesDir, "router", name!), "utf8")).payload;
  }

  it("sends a push of the branch a deployment follows, naming its head on the remote", async () => {
    const sent = await send("--deployment", "app");
    expect(sent.stderr).toBe("");
    expect(sent.code).toBe(0);
    expect(sent.stdout).toContain(`push octo-org/app refs/heads/main ${mainSha}`);
    expect(sent.stdout).toMatch(/→ 202 \{"queued":"[^"]+","deployments":\["app"\]\}/);
    expect(await sentEntry(sent.stdout)).toMatchObject({ ref: "refs/heads/main", after: mainSha });
  });

  it("for a glob, sends a remote branch that matches it, or a name made to match it", async () => {
    const staging = await send("--deployment", "staging");
    expect(staging.code).toBe(0);
    expect(staging.stdout).toContain(`push octo-org/app refs/heads/deploy-green ${greenSha}`);
    expect(staging.stdout).toMatch(/"deployments":\["staging"\]/);
    expect(await sentEntry(staging.stdout)).toMatchObject({ ref: "refs/heads/deploy-green", after: greenSha });

    // No remote branch matches "preview/**": the name is made to match.
    const previews = await send("--deployment", "previews");
    expect(previews.code).toBe(0);
    expect(previews.stdout).toMatch(/push octo-org\/app refs\/heads\/preview\/test [0-9a-f]{40} /);
    expect(previews.stdout).toMatch(/"deployments":\["previews"\]/);
  });

  it("--branch with no --sha names that branch's head; exits 1 saying why when nothing will deploy", async () => {
    const green = await send("--deployment", "app", "--branch", "deploy-green");
    expect(green.stdout).toContain(`refs/heads/deploy-green ${greenSha}`);
    expect(green.stdout).toMatch(/"deployments":\["staging"\]/);

    const feature = await send("--branch", "feature");
    expect(feature.code).toBe(1);
    expect(feature.stdout).toMatch(/→ 200 \{"voided":true,/);
    expect(feature.stdout).toContain("nothing will deploy: no enabled deployment follows octo-org/app branch feature (app follows main; staging follows deploy-*; previews follows preview/**)");

    const badSha = await send("--sha", "$(id)");
    expect(badSha.code).toBe(2);
    expect(badSha.stderr).toMatch(/--sha must be a full commit sha/);
    const badBranch = await send("--branch", "--upload-pack=x");
    expect(badBranch.code).toBe(2);
    expect(badBranch.stderr).toMatch(/is not a valid branch name/);
  });

  it("says that nothing listens, and how to start the daemon, instead of \"fetch failed\"", async () => {
    const url = `http://127.0.0.1:${await freePort()}/github-webhook`;
    const refused = await runDeployq(["send-test-delivery", "--url", url], env);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toContain(`nothing is listening at ${url} (connection refused): start the daemon with \`npx deployq serve --config ${ws.configPath}\``);
    expect(refused.stderr).not.toMatch(/fetch failed/);
    const badUrl = await runDeployq(["send-test-delivery", "--url", "file:///etc/passwd"], env);
    expect(badUrl.code).toBe(2);
    expect(badUrl.stderr).toMatch(/--url must be an http\(s\) URL/);
  });

  it("deliveries lists the newest deliveries first with their outcome, deployments or reason, and duplicates", async () => {
    const ping = await send("--event", "ping");
    expect(ping.code).toBe(0);
    const voided = await send("--branch", "feature", "--sha", "f".repeat(40));
    expect(voided.code).toBe(1);
    // A delivery GitHub sends twice: one row, one duplicate.
    const twice = await signedDelivery(pushPayload({ repository: "octo-org/app", branch: "main", after: mainSha }));
    expect((await post(daemon.url!, twice)).status).toBe(202);
    expect(await post(daemon.url!, twice)).toEqual({ status: 200, body: { duplicate: true } });

    const listed = await runDeployq(["deliveries", "--json", "--limit", "3"], env);
    expect(listed.stderr).toBe("");
    expect(listed.code).toBe(0);
    const rows = JSON.parse(listed.stdout) as Array<Record<string, unknown>>;
    expect(rows).toMatchObject([
      { event: "push", repository: "octo-org/app", ref: "refs/heads/main", sha: mainSha, outcome: "queued", entry: expect.stringMatching(/\.json$/), duplicates: 1, deliveryId: twice.headers["x-github-delivery"] },
      { event: "push", ref: "refs/heads/feature", sha: "f".repeat(40), outcome: "voided", entry: null, reason: expect.stringMatching(/^no enabled deployment follows octo-org\/app branch feature/), deployments: [] },
      { event: "ping", outcome: "ping" },
    ]);

    const shown = await runDeployq(["deliveries"], env);
    expect(shown.code).toBe(0);
    expect(shown.stdout).toMatch(/^RECEIVED +EVENT +REPOSITORY +REF +SHA +OUTCOME +DUPLICATES +DEPLOYMENTS \/ REASON$/m);
    expect(shown.stdout).toMatch(new RegExp(`^\\d+s ago +push +octo-org/app +feature +fffffff +voided +0 +no enabled deployment follows octo-org/app branch feature`, "m"));
    expect(shown.stdout).toMatch(new RegExp(`^\\d+s ago +push +octo-org/app +main +${mainSha.slice(0, 7)} +queued +1 +\\(waiting for the router\\)$`, "m"));
    // Every delivery this file sent so far, and no more than asked for by default.
    expect(shown.stdout.trim().split("\n").length - 1).toBeLessThanOrEqual(20);

    const bad = await runDeployq(["deliveries", "--limit", "0"], env);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--limit must be a whole number from 1 to 1000/);
  });
});
