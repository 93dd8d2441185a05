import { randomUUID } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { entryName } from "../../src/queue/entry-name.ts";
import { queueLayout } from "../../src/queue/layout.ts";
import { ensureQueueDirs, writeEntryDurably } from "../../src/queue/write.ts";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import { createRepo } from "../helpers/git.ts";
import { runDeployq, spawnDeployq } from "../helpers/processes.ts";
import { type Workspace, createWorkspace, followingDeployment, pushPayload, randomSha } from "../helpers/workspace.ts";

describe("deployq CLI", () => {
  let ws: Workspace;
  let tdb: TestDatabase;
  let env: NodeJS.ProcessEnv;

  beforeAll(async () => {
    ws = await createWorkspace();
    tdb = await createTestDatabase("postgres");
    env = { ...ws.env, DATABASE_URL: tdb.url, DEPLOYQ_CONFIG: ws.configPath };
  });
  afterAll(async () => {
    await tdb?.dispose();
    await ws?.dispose();
  });

  it("--help names every command and the environment", async () => {
    const { code, stdout } = await runDeployq(["--help"], {});
    expect(code).toBe(0);
    for (const command of ["serve", "receiver", "workers", "migrate", "check", "queue", "deploy", "rollback", "releases", "status", "deliveries", "rollout", "sites", "send-test-delivery", "post-receive"]) {
      expect(stdout).toMatch(new RegExp(`^  ${command}\\b`, "m"));
    }
    expect(stdout).toContain("GITHUB_WEBHOOK_SECRET");
    const queueHelp = await runDeployq(["queue", "--help"], {});
    for (const sub of ["ls", "show", "requeue", "flush"]) expect(queueHelp.stdout).toMatch(new RegExp(`^  ${sub}\\b`, "m"));
    expect((await runDeployq(["sites", "--help"], {})).stdout).toMatch(/^ {2}remove <deployment>/m);
    const rolloutHelp = (await runDeployq(["rollout", "--help"], {})).stdout;
    expect(rolloutHelp).toMatch(/^ {2}ls \[options\] \[deployment\]/m);
    expect(rolloutHelp).toMatch(/^ {2}show \[options\] <id>/m);
  });

  it("check passes on a good setup, and fails naming the key on a bad one", async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "deployq-cli-check-"));
    const repo = await createRepo(dir);
    const head = await repo.commit({ "index.html": "v1" });
    const good = await createWorkspace({
      deployments: `${followingDeployment("app", repo.bare)}\n[deployments.staging]\nrepository = "octo-org/app"\nbranch = "deploy-*"\nremote = "${repo.bare}"\npath = "./apps/staging"\n`,
    });
    const goodEnv = { ...good.env, DATABASE_URL: tdb.url, DEPLOYQ_CONFIG: good.configPath };
    try {
      const passed = await runDeployq(["check"], goodEnv);
      expect(passed.stderr).toBe("");
      expect(passed.code).toBe(0);
      const where = new URL(tdb.url!);
      expect(passed.stdout).toMatch(new RegExp(`^ok +database +Postgres answers \\(postgres@${where.host}${where.pathname}\\)$`, "m"));
      expect(passed.stdout).toMatch(/^ok +locks +in-process \(no REDIS_URL\): one workers process only$/m);
      expect(passed.stdout).toMatch(/^ok +queues/m);
      expect(passed.stdout).toContain(`remote       app: ${repo.bare} answers, main at ${head.slice(0, 7)}`);
      expect(passed.stdout).toContain(`remote       staging: ${repo.bare} answers, no branch matching deploy-* yet: a push to one deploys it`);

      // The lock service: every REDIS_URL node is PINGed; without a quorum, check fails (the password never shown).
      const redis = await runDeployq(["check", "--json"], { ...goodEnv, REDIS_URL: "redis://127.0.0.1:6379" });
      expect(JSON.parse(redis.stdout)).toContainEqual({ name: "locks", ok: true, detail: "redlock on REDIS_URL: ok (1 node)" });
      const noRedis = await runDeployq(["check"], { ...goodEnv, REDIS_URL: "redis://:sekrit@127.0.0.1:1" });
      expect(noRedis.code).toBe(1);
      expect(noRedis.stdout).toMatch(/^FAIL +locks +no quorum of REDIS_URL answers PING \(redis:\/\/:\*\*\*@127\.0\.0\.1:1.*\): start Dragonfly\/Redis or fix REDIS_URL/m);
      expect(noRedis.stdout).not.toContain("sekrit");

      // No database is created by a check: PGlite that does not exist yet stays so.
      const embedded = await runDeployq(["check"], { ...goodEnv, DATABASE_URL: "" });
      expect(embedded.code).toBe(0);
      expect(embedded.stdout).toMatch(/^ok +database +PGlite in .*pglite: not created yet: the daemon creates it at first start/m);
      expect(existsSync(path.join(good.dir, "data"))).toBe(false);
      const status = await runDeployq(["status"], { ...goodEnv, DATABASE_URL: "" });
      expect(status.code).toBe(2);
      expect(status.stderr).toMatch(/there is no embedded database yet \(.*pglite\): the daemon creates it at first start/);
      expect(existsSync(path.join(good.dir, "data"))).toBe(false);

      // An unreachable Postgres: the hint names where DATABASE_URL points, never its password.
      const badDb = await runDeployq(["check"], { ...goodEnv, DATABASE_URL: "postgres://postgres:hunter2@127.0.0.1:1/nonedb" });
      expect(badDb.code).toBe(1);
      expect(badDb.stdout).toMatch(/^FAIL +database .*: DATABASE_URL points at postgres@127\.0\.0\.1:1\/nonedb: is that server running/m);
      expect(badDb.stdout).not.toContain("hunter2");
      expect(badDb.stdout).not.toContain("unset");
    } finally {
      await good.dispose();
      await rm(dir, { recursive: true, force: true });
    }

    // The default workspace's remotes do not exist: check says so, per deployment.
    const unreachable = await runDeployq(["check", "--json"], env);
    expect(unreachable.code).toBe(1);
    expect(JSON.parse(unreachable.stdout)).toContainEqual({
      name: "remote",
      ok: false,
      detail: "web: git ls-remote /nonexistent/web.git failed (fatal: '/nonexistent/web.git' does not appear to be a git repository): check the remote's address and this user's access (ssh key, token)",
    });

    const noSecret = await runDeployq(["check", "--json"], { ...env, GITHUB_WEBHOOK_SECRET: "" });
    expect(noSecret.code).toBe(1);
    expect(JSON.parse(noSecret.stdout)).toContainEqual({ name: "secret", ok: false, detail: expect.stringMatching(/GITHUB_WEBHOOK_SECRET is not set/) });

    const missing = await runDeployq(["--config", path.join(ws.dir, "nope.toml"), "check"], env);
    expect(missing.code).toBe(1);
    expect(missing.stdout).toMatch(/cannot read the configuration .*nope\.toml/);
  }, 180_000);

  it("lists, shows, requeues and flushes queue entries", async () => {
    const layout = queueLayout(ws.queuesDir);
    await ensureQueueDirs(layout, ["api"]);
    const sha = randomSha();
    const delivery = randomUUID();
    const name = entryName(delivery);
    await writeEntryDurably(layout, layout.deadLetter("api"), name, {
      event: "push",
      delivery_id: delivery,
      hook_id: "1",
      received_at: new Date().toISOString(),
      payload: pushPayload({ repository: "octo-org/api", branch: "main", after: sha }),
      attempts: 3,
      last_error: "npm run build exited with code 1",
    });

    const summary = await runDeployq(["queue", "ls", "--json"], env);
    expect(summary.code).toBe(0);
    expect(JSON.parse(summary.stdout)).toContainEqual(expect.objectContaining({ queue: "dead-letter/api", entries: 1 }));

    const listed = await runDeployq(["queue", "ls", "dead-letter/api"], env);
    expect(listed.stdout).toMatch(/^ENTRY +AGE +EVENT +REPOSITORY +REF +SHA +ERROR/);
    expect(listed.stdout).toMatch(new RegExp(`^${name} +\\d+s +push +octo-org/api +main +${sha.slice(0, 7)} +npm run build exited with code 1$`, "m"));

    const shown = await runDeployq(["queue", "show", delivery], env);
    expect(shown.code).toBe(0);
    expect(shown.stdout).toContain(`# dead-letter/api: ${path.join(ws.queuesDir, "dead-letter", "api", name)}`);
    expect(shown.stdout).toContain(`"after": "${sha}"`);

    const unknown = await runDeployq(["queue", "show", "nothing-like-it"], env);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/no entry "nothing-like-it" in any queue/);

    const requeued = await runDeployq(["queue", "requeue", "api"], env);
    expect(requeued.code).toBe(0);
    expect(requeued.stdout).toContain(`requeued 1 entry into api:\n  ${name}`);
    const back = JSON.parse(await readFile(path.join(ws.queuesDir, "deployments", "api", name), "utf8"));
    expect(back.attempts).toBeUndefined();
    expect(back.last_error).toBeUndefined();

    const notConfigured = await runDeployq(["queue", "requeue", "ghost"], env);
    expect(notConfigured.code).toBe(2);
    expect(notConfigured.stderr).toMatch(/neither router nor a configured deployment/);

    const refused = await runDeployq(["queue", "flush", "api"], env);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/deletes all 1 entries of api .* add --yes/);
    expect(await readdir(path.join(ws.queuesDir, "deployments", "api"))).toEqual([name]);
    const flushed = await runDeployq(["queue", "flush", "api", "--yes"], env);
    expect(flushed.code).toBe(0);
    expect(await readdir(path.join(ws.queuesDir, "deployments", "api"))).toEqual([]);
  });

  it("post-receive queues git's lines from stdin as push events, and refuses garbage", async () => {
    const before = "a".repeat(40);
    const after = randomSha();
    const ok = await runDeployq(["post-receive", "--repository", "octo-org/api"], env, `${before} ${after} refs/heads/main\n`);
    expect(ok.stderr).toBe("");
    expect(ok.code).toBe(0);
    const [name] = ok.stdout.match(/\d{19}-[0-9a-f-]{36}\.json/) ?? [];
    expect(ok.stdout).toBe(`deployq: queued ${name} for api\n`);
    const entry = JSON.parse(await readFile(path.join(ws.queuesDir, "router", name!), "utf8"));
    expect(entry).toMatchObject({ event: "push", source: "post-receive", payload: { ref: "refs/heads/main", before, after, repository: { full_name: "octo-org/api" } } });

    const bad = await runDeployq(["post-receive", "--repository", "octo-org/api"], env, "$(id) x refs/heads/main\n");
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/not a post-receive line/);
    const badRepo = await runDeployq(["post-receive", "--repository", "../../etc"], env, "");
    expect(badRepo.code).toBe(2);
  });

  it("post-receive says per ref what it queued for which deployments, and queues nothing for a ref no deployment follows", async () => {
    const router = path.join(ws.queuesDir, "router");
    const existing = new Set(await readdir(router));
    const old = randomSha();
    const zero = "0".repeat(40);
    const lines = [
      `${old} ${randomSha()} refs/tags/v1.0`,
      `${old} ${randomSha()} refs/heads/feature`,
      `${old} ${randomSha()} refs/heads/deploy-blue`,
      `${old} ${zero} refs/heads/main`,
      `${old} ${randomSha()} refs/notes/commits`,
    ];
    // "OCTO-ORG/Api": matched like GitHub's names, case-insensitively.
    const run = await runDeployq(["post-receive", "--repository", "OCTO-ORG/Api"], env, `${lines.join("\n")}\n`);
    expect(run.stderr).toBe("");
    expect(run.code).toBe(0);
    const added = (await readdir(router)).filter((f) => !existing.has(f));
    expect(added).toHaveLength(1);
    expect(run.stdout.split("\n")).toEqual([
      "Ref refs/tags/v1.0 received. Doing nothing: only main or deploy-* may be deployed on this server.",
      "Ref refs/heads/feature received. Doing nothing: only main or deploy-* may be deployed on this server.",
      `deployq: queued ${added[0]} for api-staging`,
      "Ref refs/heads/main received. Doing nothing: branch deletion (refs/heads/main) does not deploy.",
      "Ref refs/notes/commits received. Doing nothing: only main or deploy-* may be deployed on this server.",
      "",
    ]);

    const elsewhere = await runDeployq(["post-receive", "--repository", "octo-org/nothing"], env, `${old} ${randomSha()} refs/heads/main\n`);
    expect(elsewhere.code).toBe(0);
    expect(elsewhere.stdout).toBe(
      'Ref refs/heads/main received. Doing nothing: no enabled deployment follows octo-org/nothing branch main: no deployment has repository = "octo-org/nothing" (compare with the deployments\' repository keys).\n',
    );
    expect((await readdir(router)).filter((f) => !existing.has(f))).toEqual(added);
  });
});

describe("deployq serve on the embedded database", () => {
  it("starts, accepts a signed test delivery, routes it, refuses a second owner of PGlite, and drains on SIGTERM", { timeout: 180_000 }, async () => {
    const ws = await createWorkspace({ deployments: `\n[deployments.api]\nrepository = "octo-org/api"\nbranch = "main"\nremote = "/r.git"\npath = "./apps/api"\n` });
    const env = { ...ws.env, DATABASE_URL: "", DEPLOYQ_CONFIG: ws.configPath, DEPLOYQ_LOG_LEVEL: "info" };
    const serve = spawnDeployq(["serve"], env);
    try {
      await serve.waitFor(/listening on (http:\/\/127\.0\.0\.1:\d+)/);
      const url = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(serve.output())![1]!;
      const sent = await runDeployq(["send-test-delivery", "--url", `${url}/github-webhook`], env);
      expect(sent.stdout).toMatch(/→ 202 \{"queued":"\d{19}-[0-9a-f-]{36}\.json","deployments":\["api"\]\}/);
      expect(sent.code).toBe(0);
      await serve.waitFor('"msg":"event routed"');
      // Handed to api: still queued there, or already dead-lettered (its remote does not exist, which fails at once).
      const handed = [...(await readdir(path.join(ws.queuesDir, "deployments", "api"))), ...(await readdir(path.join(ws.queuesDir, "dead-letter", "api")).catch(() => []))];
      expect(handed.filter((n) => n.endsWith(".json"))).toHaveLength(1);

      // deployq deliveries asks the daemon that owns PGlite (GET /deliveries), never opening it.
      const malformed = "1000000000000000001-11111111-2222-3333-4444-555555555555.json";
      await writeFile(path.join(ws.queuesDir, "router", malformed), "{ not json");
      await serve.waitFor("malformed entry moved to dead-letter/router/");
      const listed = await runDeployq(["deliveries", "--json"], env);
      expect(listed.stderr).toBe("");
      expect(listed.code).toBe(0);
      const rows = JSON.parse(listed.stdout) as Array<Record<string, unknown>>;
      expect(rows).toContainEqual(expect.objectContaining({ event: "push", outcome: "routed", deployments: ["api"], repository: "octo-org/api" }));
      expect(rows).toContainEqual(expect.objectContaining({ entry: malformed, outcome: "dead-letter", reason: expect.stringMatching(/not valid JSON/) }));
      const table = await runDeployq(["deliveries", "--limit", "1"], env);
      expect(table.code).toBe(0);
      expect(table.stdout.trim().split("\n")).toHaveLength(2);
      const badLimit = await fetch(`${url}/deliveries?limit=abc`);
      expect(badLimit.status).toBe(400);
      expect(await badLimit.json()).toEqual({ error: "limit must be a whole number from 1 to 1000" });

      const second = await runDeployq(["migrate"], env);
      expect(second.code).toBe(2);
      // It says who holds it and what works beside it, and does not tell someone running `serve` to run `serve`.
      expect(second.stderr).toMatch(/is held by `deployq serve` \(process \d+\), and PGlite allows one process only/);
      expect(second.stderr).toMatch(/`deployq status`, `check`, `deploy`, `rollback` and `queue` work beside it/);
      expect(second.stderr).not.toMatch(/use `deployq serve`|as one process/);
      const check = await runDeployq(["check"], env);
      expect(check.stdout).toMatch(/^ok +database +embedded PGlite, owned by the running deployq at http:\/\/127\.0\.0\.1:\d+; it reports: ok/m);

      serve.child.kill("SIGTERM");
      const exit = await serve.exited;
      expect(exit.signal).toBe("SIGTERM");
      expect(serve.output()).toContain("draining");
      // The lock is released with the process: the database can be opened again.
      const after = await runDeployq(["migrate"], env);
      expect(after.code).toBe(0);
    } finally {
      serve.child.kill("SIGKILL");
      await serve.exited;
      await ws.dispose();
    }
  });
});
