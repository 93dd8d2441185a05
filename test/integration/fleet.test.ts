import { mkdtemp, readFile, readlink, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type TestFleet, createFleet } from "../helpers/fleet.ts";
import { type FakeGithub, startFakeGithub } from "../helpers/fake-github.ts";
import { until } from "../helpers/wait.ts";
import { spawnDeployq } from "../helpers/processes.ts";
import { createRepo } from "../helpers/git.ts";
import { createWorkspace, followingDeployment, post, pushPayload, signedDelivery } from "../helpers/workspace.ts";
import { seenHosts } from "../../src/fleet/rollouts.ts";
import { and, eq } from "drizzle-orm";
import { deploys, githubOutbox } from "../../src/db/schema.ts";

/** A release directory's commit (its name ends with the short sha). */
const isReleaseOf = (release: string | undefined, sha: string) => release !== undefined && release.endsWith(sha.slice(0, 7));

describe("one deployment on three hosts (one Postgres, a three-node Redis quorum), parallel 1 with a canary", () => {
  let fleet: TestFleet;
  let github: FakeGithub;
  beforeAll(async () => {
    github = await startFakeGithub();
    fleet = await createFleet({ rollout: `{ parallel = 1, canary = "web1" }`, github });
    await Promise.all(fleet.hosts.map((h) => h.start()));
  }, 120_000);
  afterAll(async () => {
    await fleet?.dispose();
    await github?.close();
  }, 60_000);

  /** The commit statuses GitHub got for `sha`, once the last one is `state` ("state: description" each). */
  const statusesOnceFinal = (sha: string, state: string) =>
    until(`GitHub to get a ${state} status on ${sha}`, async () => {
      const got = github.statusesOf(sha, "deployq/app");
      return got.at(-1)?.state === state ? got.map((s) => `${s.state}: ${s.description}`) : undefined;
    });

  /** Waits until every host in `hosts` is done with the rollout of `sha` (its state one of `states`). */
  async function settled(sha: string, hosts: string[], states = ["succeeded"]) {
    return until(
      `the rollout of ${sha} to settle on ${hosts.join(", ")}`,
      async () => {
        const rollout = await fleet.rolloutOf(sha);
        if (!rollout) return undefined;
        const rows = await fleet.hostRows(rollout.id);
        const done = hosts.every((h) => rows.some((r) => r.host === h && states.includes(r.state)));
        return done ? { rollout, rows } : undefined;
      },
      90_000,
    );
  }

  it("a push to one host's receiver deploys on all three, one host at a time, the canary first", { timeout: 120_000 }, async () => {
    const [web1, web2, web3] = fleet.hosts;
    const v1 = await fleet.repo.commit({ "index.html": "v1" });
    expect(await fleet.push(web2!, v1)).toBe(202);
    const { rollout, rows } = await settled(v1, ["web1", "web2", "web3"]);
    await until("the rollout to be succeeded", async () => (await fleet.rolloutOf(v1))?.state === "succeeded");
    expect(rollout.hosts).toEqual(["web1", "web2", "web3"]);
    for (const host of [web1!, web2!, web3!]) expect(isReleaseOf(await host.current(), v1), host.name).toBe(true);
    // The switch intervals (slot held: switch, restart, health check) never overlap with parallel = 1.
    const intervals = rows.map((r) => ({ host: r.host, from: r.switchStartedAt!.getTime(), to: r.switchEndedAt!.getTime() })).sort((a, b) => a.from - b.from);
    expect(intervals[0]!.host).toBe("web1");
    for (let i = 1; i < intervals.length; i++) expect(intervals[i]!.from, `${intervals[i]!.host} switched while ${intervals[i - 1]!.host} held the slot`).toBeGreaterThanOrEqual(intervals[i - 1]!.to);
    // Each host's deploy took about the restart's 0.3 s inside its slot.
    for (const i of intervals) expect(i.to - i.from).toBeGreaterThanOrEqual(300);
    // The receiving host routed it once: one rollout for the delivery, every host handed it over once.
    expect(rows.map((r) => r.host)).toEqual(["web1", "web2", "web3"]);
    // Each host deployed it once, uninterrupted: a fleet's hosts do not fence each other out (each fences only its own deploys).
    const deployed = await fleet.tdb.database.db.select({ host: deploys.host, status: deploys.status }).from(deploys).where(eq(deploys.sha, v1));
    expect(deployed.map((d) => `${d.host} ${d.status}`).sort()).toEqual(["web1 succeeded", "web2 succeeded", "web3 succeeded"]);
    // GitHub hears of the fleet, one status for it, not one per host: queued, live on 1, then 2 of 3, then all, as
    // written (the sender may collapse the pending ones waiting together into the newest: GitHub gets first and last).
    const got = await statusesOnceFinal(v1, "success");
    const written = await fleet.tdb.database.db.select().from(githubOutbox).where(and(eq(githubOutbox.sha, v1), eq(githubOutbox.kind, "status"))).orderBy(githubOutbox.id);
    expect(written.map((w) => `${w.state}: ${w.description}`)).toEqual([
      "pending: Queued for app",
      "pending: Rolling out to app: live on 1 of 3 hosts (web1)",
      `pending: Rolling out to app: live on 2 of 3 hosts (${intervals.slice(0, 2).map((i) => i.host).sort().join(", ")})`,
      "success: Live on app: all 3 hosts",
    ]);
    expect(got[0]).toBe("pending: Queued for app");
    expect(got.at(-1)).toBe("success: Live on app: all 3 hosts");
    expect(written.map((w) => `${w.state}: ${w.description}`).filter((w) => got.includes(w))).toEqual(got);
    // With [github] deployments on, a rollout writes no GitHub Deployment (none would be left "queued").
    expect(github.deployments).toEqual([]);
  });

  it("the canary's health check fails: no other host switches to that commit, each still serves the previous release, the rollout is halted with the canary's reason", { timeout: 120_000 }, async () => {
    const before = await Promise.all(fleet.hosts.map((h) => h.current()));
    fleet.unhealthy.add("web1");
    try {
      const bad = await fleet.repo.commit({ "index.html": "bad" });
      expect(await fleet.push(fleet.hosts[0]!, bad)).toBe(202);
      const { rows } = await settled(bad, ["web1", "web2", "web3"], ["failed", "halted"]);
      const rollout = (await fleet.rolloutOf(bad))!;
      expect(rollout.state).toBe("halted");
      expect(rollout.failedHost).toBe("web1");
      expect(rollout.failedStep).toBe("health-check");
      expect(rollout.reason).toMatch(/503|health/i);
      expect(rows.find((r) => r.host === "web1")!.state).toBe("failed");
      for (const r of rows.filter((x) => x.host !== "web1")) {
        expect(r.state).toBe("halted");
        expect(r.switchStartedAt, `${r.host} never took a slot`).toBeNull();
      }
      expect(await Promise.all(fleet.hosts.map((h) => h.current()))).toEqual(before);
      const failure = "failure: The health check failed on web1 (app); halted: the hosts that had not switched keep the previous release";
      expect((await statusesOnceFinal(bad, "failure")).at(-1)).toBe(failure);
      const written = await fleet.tdb.database.db.select().from(githubOutbox).where(and(eq(githubOutbox.sha, bad), eq(githubOutbox.kind, "status"))).orderBy(githubOutbox.id);
      expect(written.map((w) => `${w.state}: ${w.description}`)).toEqual(["pending: Queued for app", failure]);
    } finally {
      fleet.unhealthy.delete("web1");
    }
  });

  it("a host down during a rollout deploys it when it comes back; a halted rollout is not deployed by a host that comes back", { timeout: 180_000 }, async () => {
    const web3 = fleet.hosts[2]!;
    await web3.stop();
    const v2 = await fleet.repo.commit({ "index.html": "v2" });
    expect(await fleet.push(fleet.hosts[0]!, v2)).toBe(202);
    await settled(v2, ["web1", "web2"]);
    expect((await fleet.rolloutOf(v2))!.state).toBe("running");
    expect(isReleaseOf(await web3.current(), v2)).toBe(false);
    await web3.start();
    await settled(v2, ["web1", "web2", "web3"]);
    expect(isReleaseOf(await web3.current(), v2)).toBe(true);
    await until("the rollout of v2 to be succeeded", async () => (await fleet.rolloutOf(v2))?.state === "succeeded");

    // Down again; the next commit fails on the canary; web3 comes back and stays on v2.
    await web3.stop();
    fleet.unhealthy.add("web1");
    try {
      const bad = await fleet.repo.commit({ "index.html": "bad again" });
      expect(await fleet.push(fleet.hosts[1]!, bad)).toBe(202);
      await settled(bad, ["web1", "web2"], ["failed", "halted"]);
      const halted = (await fleet.rolloutOf(bad))!;
      expect(halted.state).toBe("halted");
      const restarted = new Date();
      await web3.start();
      // Its follower has had a pass (it checks in at each): after that, nothing of the halted rollout reaches web3.
      await until("a pass of web3's follower", async () => (await seenHosts(fleet.tdb.database.db)).some((h) => h.host === "web3" && h.lastSeen > restarted));
      expect((await fleet.hostRows(halted.id)).map((r) => r.host)).toEqual(["web1", "web2"]);
      expect(isReleaseOf(await web3.current(), v2)).toBe(true);
      expect(await readFile(path.join(web3.ws.dir, "apps", "app", "current", "index.html"), "utf8")).toBe("v2");
    } finally {
      fleet.unhealthy.delete("web1");
    }
  });

  it("deployq check says which hosts have been seen lately, and names a listed host that has not", { timeout: 60_000 }, async () => {
    const web1 = fleet.hosts[0]!;
    const check = async (configPath: string) => {
      const run = spawnDeployq(["check", "--json", "--config", configPath], { ...web1.env, DEPLOYQ_CONFIG: undefined });
      await run.exited;
      return (JSON.parse(run.output().slice(run.output().indexOf("["))) as Array<{ name: string; ok: boolean; detail: string }>).filter((r) => r.name === "fleet");
    };
    expect(await check(web1.ws.configPath)).toEqual([{ name: "fleet", ok: true, detail: "app: all 3 hosts seen in the last minute (web1, web2, web3); this host is web1" }]);
    // The same fleet with a fourth host that never ran.
    const withWeb4 = path.join(web1.ws.dir, "with-web4.toml");
    await writeFile(withWeb4, (await readFile(web1.ws.configPath, "utf8")).replace('hosts = ["web1","web2","web3"]', 'hosts = ["web1","web2","web3","web4"]'));
    const [result] = await check(withWeb4);
    expect(result!.ok).toBe(false);
    expect(result!.detail).toBe("app: seen: web1, web2, web3; not seen in the last minute: web4 (never seen): start deployq's workers there (with this host_name), or remove the host from hosts; this host is web1");
  });
});

describe("a fleet of one host on the embedded defaults (PGlite, in-process locks)", () => {
  it("deploys a push through a rollout, with no DATABASE_URL or REDIS_URL", { timeout: 90_000 }, async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "deployq-fleet-solo-"));
    const repo = await createRepo(dir);
    const ws = await createWorkspace({ topLevel: `host_name = "solo"`, deployments: followingDeployment("app", repo.bare, `hosts = ["solo"]\nrollout = { canary = "solo" }`) });
    const serve = spawnDeployq(["serve"], { ...ws.env, DEPLOYQ_CONFIG: ws.configPath, DATABASE_URL: undefined, REDIS_URL: undefined, DEPLOYQ_LOG_LEVEL: "info" }, ws.dir);
    try {
      await serve.waitFor(/listening on (http:\/\/127\.0\.0\.1:\d+)/);
      const url = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(serve.output())![1]!;
      await serve.waitFor("deployq started");
      const sha = await repo.commit({ "index.html": "solo" });
      expect((await post(url, await signedDelivery(pushPayload({ repository: "octo-org/app", branch: "main", after: sha })))).status).toBe(202);
      await until("the push to be live", async () => isReleaseOf(await readlink(path.join(ws.dir, "apps", "app", "current")).catch(() => undefined), sha));
      await serve.waitFor("rollout taken into this host's queue");
      serve.child.kill("SIGTERM");
      expect((await serve.exited).signal).toBe("SIGTERM");
    } finally {
      serve.child.kill("SIGKILL");
      await serve.exited;
      await ws.dispose();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
