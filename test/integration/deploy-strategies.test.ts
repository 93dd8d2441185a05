import { mkdtemp, readFile, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { eq } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Daemon, startDaemon } from "../../src/daemon.ts";
import { deploys } from "../../src/db/schema.ts";
import { silentLogger } from "../../src/log.ts";
import { resolveRef } from "../../src/steps/git.ts";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import { type TestRepo, createRepo, git } from "../helpers/git.ts";
import { type Workspace, createWorkspace, listFiles, post, pushPayload, signedDelivery } from "../helpers/workspace.ts";
import { until } from "../helpers/wait.ts";

describe("in-place strategy and hostile names", () => {
  let dir: string;
  let repo: TestRepo;
  let ws: Workspace;
  let tdb: TestDatabase;
  let daemon: Daemon;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "deployq-strategies-"));
    repo = await createRepo(dir);
    ws = await createWorkspace({
      deployments: `
# The classic post-receive hook: git checkout -f master into the site, then ./deploy.sh
[deployments.django]
repository = "octo-org/site"
branch = "master"
remote = "${repo.bare}"
path = "./www/site"
strategy = "in-place"
restart = { script = ["./deploy.sh", "--migrate", "$(id)"] }

# Follows every branch, to receive hostile but valid branch names.
[deployments.wild]
repository = "octo-org/site"
branch = "**"
remote = "${repo.bare}"
path = "./apps/wild"
commands = [["sh", "-c", "printf '%s' \\"$DEPLOYQ_REF\\" > REF"]]

# A remote that looks like a flag must stay a repository name.
[deployments.flag]
repository = "octo-org/flag"
branch = "main"
remote = "--upload-pack=touch ${dir}/pwned"
path = "./apps/flag"
max_attempts = 1
`,
    });
    tdb = await createTestDatabase("pglite");
    daemon = await startDaemon({ settings: ws.settings, role: "serve", logger: silentLogger(), database: tdb.database });
  });
  afterAll(async () => {
    await daemon?.close();
    await tdb?.dispose();
    await ws?.dispose();
    await rm(dir, { recursive: true, force: true });
  });

  const send = async (repository: string, ref: string, sha: string) => {
    const res = await post(daemon.url!, await signedDelivery(pushPayload({ repository, ref, after: sha })));
    expect(res.status).toBe(202);
    return res.body.queued as string;
  };
  const finished = (deployment: string, sha: string) =>
    until(`${deployment} ${sha}`, async () => {
      const rows = await tdb.database.db.select().from(deploys).where(eq(deploys.sha, sha));
      return rows.find((r) => r.deployment === deployment && r.status !== "running" && r.status !== "retrying");
    });

  it("checks out in place and runs deploy.sh with its argv in the work tree, deleting removed files", async () => {
    const script = '#!/bin/sh\nprintf "%s\\n" "$0" "$@" > "$PWD/../deploy-argv"\npwd >> "$PWD/../deploy-argv"\necho "$DEPLOYQ_SHA" >> "$PWD/../deploy-argv"\n';
    const v1 = await repo.commit({ "deploy.sh": script, "manage.py": "print(1)\n", "old.txt": "old" }, { branch: "master", executable: ["deploy.sh"] });
    await send("octo-org/site", "refs/heads/master", v1);
    expect(await finished("django", v1)).toMatchObject({ status: "succeeded" });
    const site = path.join(ws.dir, "www", "site");
    expect(await readFile(path.join(site, "manage.py"), "utf8")).toBe("print(1)\n");
    expect((await readFile(path.join(ws.dir, "www", "deploy-argv"), "utf8")).split("\n")).toEqual(["./deploy.sh", "--migrate", "$(id)", site, v1, ""]);

    const v2 = await repo.commit({ "old.txt": null, "manage.py": "print(2)\n" }, { branch: "master" });
    await send("octo-org/site", "refs/heads/master", v2);
    expect(await finished("django", v2)).toMatchObject({ status: "succeeded" });
    expect(await readFile(path.join(site, "manage.py"), "utf8")).toBe("print(2)\n");
    expect((await readdir(site)).sort()).toEqual(["deploy.sh", "manage.py"]);
  });

  it("passes a hostile but valid branch name only as data, never to a shell or a flag", async () => {
    const branch = "x;touch${IFS}pwned$(id)`id`";
    const sha = await repo.commit({ "a.txt": "a" }, { branch });
    await send("octo-org/site", `refs/heads/${branch}`, sha);
    expect(await finished("wild", sha)).toMatchObject({ status: "succeeded" });
    expect(await readFile(path.join(ws.dir, "apps", "wild", "current", "REF"), "utf8")).toBe(`refs/heads/${branch}`);
    const everything = [...(await listFiles(ws.dir)), ...(await listFiles(dir)), ...(await readdir(process.cwd()))];
    expect(everything.filter((f) => f.includes("pwned") && !f.includes("x;touch"))).toEqual([]);
  });

  it("keeps a remote that starts with - from being read as an option", async () => {
    const sha = "2".repeat(40);
    const name = await send("octo-org/flag", "refs/heads/main", sha);
    const row = await finished("flag", sha);
    expect(row.status).toBe("failed");
    expect(row.error).toMatch(/git fetch from --upload-pack=touch .* failed/);
    await until("the dead letter", async () => (await readdir(path.join(ws.queuesDir, "dead-letter", "flag")).catch(() => [] as string[])).includes(name));
    expect(await readdir(dir)).not.toContain("pwned");
  });

  it("refuses hostile refs before they reach git", async () => {
    const mirror = path.join(ws.dir, "apps", "wild", "repo.git");
    for (const ref of ["--upload-pack=touch pwned", "-x", "a..b", "refs/heads/../../x", "$(id) x", "HEAD@{1}"]) {
      await expect(resolveRef(mirror, repo.bare, ref, { timeoutMs: 10_000 })).rejects.toThrow(/not a branch name or commit sha/);
    }
    const head = await git(repo.work, "rev-parse", "HEAD");
    await expect(resolveRef(mirror, repo.bare, "refs/heads/master", { timeoutMs: 10_000 })).resolves.toMatch(/^[0-9a-f]{40}$/);
    await expect(resolveRef(mirror, repo.bare, head, { timeoutMs: 10_000 })).resolves.toBe(head);
    await expect(resolveRef(mirror, repo.bare, "no-such-branch", { timeoutMs: 10_000 })).rejects.toThrow(/has no branch "no-such-branch"/);
    // Valid in git, so it is looked up, as data.
    await expect(resolveRef(mirror, repo.bare, "main;id", { timeoutMs: 10_000 })).rejects.toThrow(/has no branch "main;id"/);
    await writeFile(path.join(dir, "marker"), "");
    expect(await readdir(dir)).not.toContain("pwned");
  });
});
