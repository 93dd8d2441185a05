import { and, eq, inArray } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { deploys, rollouts } from "../../src/db/schema.ts";
import { type TestFleet, createFleet } from "../helpers/fleet.ts";
import { until } from "../helpers/wait.ts";

const isReleaseOf = (release: string | undefined, sha: string) => release !== undefined && release.endsWith(sha.slice(0, 7));

/** Waits until each of `hosts` has a row in the rollout of `sha` in one of `states`. */
async function settled(fleet: TestFleet, sha: string, hosts: string[], states = ["succeeded"], timeoutMs = 90_000) {
  return until(
    `the rollout of ${sha} to settle on ${hosts.join(", ")} (${states.join("/")})`,
    async () => {
      const rollout = await fleet.rolloutOf(sha);
      if (!rollout) return undefined;
      const rows = await fleet.hostRows(rollout.id);
      return hosts.every((h) => rows.some((r) => r.host === h && states.includes(r.state))) ? { rollout, rows } : undefined;
    },
    timeoutMs,
  );
}

/** How many deploys of each sha ran to a switch on `host` (succeeded rows). */
async function succeededOn(fleet: TestFleet, host: string, shas: string[]): Promise<number> {
  const rows = await fleet.tdb.database.db
    .select({ sha: deploys.sha })
    .from(deploys)
    .where(and(eq(deploys.host, host), eq(deploys.status, "succeeded"), inArray(deploys.sha, shas)));
  return rows.length;
}

describe("a fleet rollout with on_failure = rollback, parallel 1", () => {
  let fleet: TestFleet;
  beforeAll(async () => {
    fleet = await createFleet({ rollout: `{ parallel = 1, on_failure = "rollback" }` });
    await Promise.all(fleet.hosts.map((h) => h.start()));
  }, 120_000);
  afterAll(() => fleet?.dispose(), 60_000);

  it("the second host to switch fails its health check: the first goes back to the previous release, the third never switches", { timeout: 150_000 }, async () => {
    const v1 = await fleet.repo.commit({ "index.html": "v1" });
    expect(await fleet.push(fleet.hosts[0]!, v1)).toBe(202);
    await settled(fleet, v1, ["web1", "web2", "web3"]);
    const before = new Map(await Promise.all(fleet.hosts.map(async (h) => [h.name, await h.current()] as const)));

    // Whichever host asks second fails (the first one to switch passes).
    const asked: string[] = [];
    fleet.judge = (host) => {
      if (!asked.includes(host)) asked.push(host);
      return asked.indexOf(host) !== 1;
    };
    try {
      const v2 = await fleet.repo.commit({ "index.html": "v2" });
      expect(await fleet.push(fleet.hosts[1]!, v2)).toBe(202);
      const [first, second] = await until("two hosts to have asked", async () => (asked.length >= 2 ? asked : undefined));
      const third = ["web1", "web2", "web3"].find((h) => h !== first && h !== second)!;
      const { rows } = await settled(fleet, v2, [first!, second!, third], ["rolled-back", "failed", "halted"]);
      const rollout = (await fleet.rolloutOf(v2))!;
      expect(rollout.state).toBe("rolled-back");
      expect(rollout.failedHost).toBe(second);
      expect(rollout.failedStep).toBe("health-check");
      const state = (h: string) => rows.find((r) => r.host === h)!;
      expect(state(first!).state).toBe("rolled-back");
      expect(state(second!).state).toBe("failed");
      expect(state(third).state).toBe("halted");
      expect(state(third).switchStartedAt).toBeNull();
      // Every host serves the release it served before v2.
      for (const h of fleet.hosts) expect(await h.current(), h.name).toBe(before.get(h.name));
      expect(isReleaseOf(await fleet.hosts.find((h) => h.name === first)!.current(), v1)).toBe(true);
    } finally {
      fleet.judge = undefined;
    }
  });
});

describe("a fleet rollout under pressure: bursts, kills, Redis nodes down (parallel 1, a canary)", () => {
  let fleet: TestFleet;
  beforeAll(async () => {
    fleet = await createFleet({ rollout: `{ parallel = 1, canary = "web1" }`, restartSeconds: 1 });
    await Promise.all(fleet.hosts.map((h) => h.start()));
  }, 120_000);
  afterAll(() => fleet?.dispose(), 60_000);

  it("a burst of 10 pushes during a slow rollout: every host ends on the newest commit, and none deploys more than 3 of them", { timeout: 180_000 }, async () => {
    // The commits first, then their webhooks one after the other, to the three receivers in turn: the burst takes
    // a fraction of one host's 1 s restart, however slow the machine is at making commits.
    const shas: string[] = [];
    for (let i = 0; i < 10; i++) shas.push(await fleet.repo.commit({ "index.html": `burst ${i}` }));
    for (const [i, sha] of shas.entries()) expect(await fleet.push(fleet.hosts[i % 3]!, sha)).toBe(202);
    const newest = shas.at(-1)!;
    await settled(fleet, newest, ["web1", "web2", "web3"], ["succeeded"], 150_000);
    for (const h of fleet.hosts) {
      expect(isReleaseOf(await h.current(), newest), h.name).toBe(true);
      const deployed = await succeededOn(fleet, h.name, shas);
      expect(deployed, `${h.name} deployed ${deployed} of the 10`).toBeGreaterThanOrEqual(1);
      expect(deployed, `${h.name} deployed ${deployed} of the 10`).toBeLessThanOrEqual(3);
    }
  });

  it("kill -9 of a host in the middle of its deploy: the rollout completes, and no host deploys the commit twice", { timeout: 180_000 }, async () => {
    const web2 = fleet.hosts[1]!;
    const sha = await fleet.repo.commit({ "index.html": "killed mid-deploy" });
    expect(await fleet.push(fleet.hosts[0]!, sha)).toBe(202);
    // web2 holds its slot (switched, restarting): kill it there.
    await until("web2 to hold the slot", async () => {
      const rollout = await fleet.rolloutOf(sha);
      return rollout && (await fleet.hostRows(rollout.id)).some((r) => r.host === "web2" && r.switchStartedAt !== null && r.switchEndedAt === null);
    });
    await web2.stop("SIGKILL");
    await web2.start();
    await settled(fleet, sha, ["web1", "web2", "web3"], ["succeeded"], 120_000);
    for (const h of fleet.hosts) {
      expect(isReleaseOf(await h.current(), sha), h.name).toBe(true);
      expect(await succeededOn(fleet, h.name, [sha]), h.name).toBe(1);
    }
  });

  it("kill -9 of the host that received the webhook right after its 202: nothing acknowledged is lost, nothing deployed twice", { timeout: 180_000 }, async () => {
    const web3 = fleet.hosts[2]!;
    const sha = await fleet.repo.commit({ "index.html": "receiver killed" });
    expect(await fleet.push(web3, sha)).toBe(202);
    await web3.stop("SIGKILL");
    await web3.start();
    await settled(fleet, sha, ["web1", "web2", "web3"], ["succeeded"], 120_000);
    for (const h of fleet.hosts) {
      expect(isReleaseOf(await h.current(), sha), h.name).toBe(true);
      expect(await succeededOn(fleet, h.name, [sha]), h.name).toBe(1);
    }
    expect(await fleet.tdb.database.db.select().from(rollouts).where(eq(rollouts.sha, sha))).toHaveLength(1);
  });

  it("one Redis node of three down: the rollout goes on; two down: nothing switches, and it resumes once a node is back", { timeout: 240_000 }, async () => {
    const [a, b] = fleet.redis;
    await a!.stop();
    const one = await fleet.repo.commit({ "index.html": "one node down" });
    expect(await fleet.push(fleet.hosts[0]!, one)).toBe(202);
    await settled(fleet, one, ["web1", "web2", "web3"], ["succeeded"], 120_000);

    const marks = fleet.hosts.map((h) => h.proc!.output().length);
    await b!.stop();
    const two = await fleet.repo.commit({ "index.html": "two nodes down" });
    expect(await fleet.push(fleet.hosts[0]!, two)).toBe(202);
    // Without a quorum nothing takes a lock: the router leaves the push in router/ (acknowledged, on disk), no host switches.
    await until("web1's router to find no lock quorum", async () => /cannot process queue router; entries stay queued/.test(fleet.hosts[0]!.proc!.output().slice(marks[0])));
    const waiting = await fleet.rolloutOf(two);
    if (waiting) expect((await fleet.hostRows(waiting.id)).every((r) => r.switchStartedAt === null)).toBe(true);
    for (const h of fleet.hosts) expect(isReleaseOf(await h.current(), one), h.name).toBe(true);

    await b!.start();
    await settled(fleet, two, ["web1", "web2", "web3"], ["succeeded"], 150_000);
    for (const h of fleet.hosts) expect(isReleaseOf(await h.current(), two), h.name).toBe(true);
    await a!.start();
  });
});
