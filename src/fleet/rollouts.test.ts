import { eq } from "drizzle-orm";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { type TestDatabase, createTestDatabase } from "../../test/helpers/db.ts";
import { rolloutHosts, rollouts } from "../db/schema.ts";
import type { Db } from "../db/client.ts";
import type { GithubWrite } from "../github/outbox.ts";
import { stopsHost } from "./rolling.ts";
import { type NewRollout, hostFailed, hostSucceeded, markHandedOver, pendingHandOvers, pruneRollouts, readRollout, recordRollouts } from "./rollouts.ts";

let tdb: TestDatabase;
let db: Db;
beforeAll(async () => {
  tdb = await createTestDatabase("pglite");
  db = tdb.database.db;
});
afterAll(() => tdb.dispose());
beforeEach(async () => {
  await db.delete(rolloutHosts);
  await db.delete(rollouts);
});

let n = 0;
const HOSTS = ["web1", "web2", "web3"];
async function record(deployment = "app", more: Partial<NewRollout> = {}): Promise<number> {
  n++;
  const entry = `17960000000000000${String(n).padStart(2, "0")}-00000000-0000-4000-8000-0000000000${String(n).padStart(2, "0")}.json`;
  await db.transaction((tx) => recordRollouts(tx as unknown as Db, [{ deployment, entry, deliveryId: undefined, ref: "refs/heads/main", sha: `${n}`.repeat(40).slice(0, 40), hosts: HOSTS, parallel: 1, canary: undefined, onFailure: "halt", body: "{}", ...more }]));
  const [row] = await db.select().from(rollouts).where(eq(rollouts.entry, entry));
  return row!.id;
}
const stateOf = async (id: number) => (await readRollout(db, id))!.state;

describe("the fleet's record of rollouts", () => {
  it("a new rollout supersedes the running ones of its deployment, not another's; the same entry routed again is one rollout", async () => {
    const a = await record();
    const other = await record("shop");
    const b = await record();
    expect(await stateOf(a)).toBe("superseded");
    expect((await readRollout(db, a))!.supersededBy).toBe(b);
    expect(await stateOf(other)).toBe("running");
    const [again] = await db.select().from(rollouts).where(eq(rollouts.id, b));
    await db.transaction((tx) => recordRollouts(tx as unknown as Db, [{ ...again!, deliveryId: undefined, ref: undefined, sha: again!.sha!, canary: undefined, onFailure: "halt" }]));
    expect(await db.select().from(rollouts).where(eq(rollouts.deployment, "app"))).toHaveLength(2);
  });

  it("hands a host the newest rollout it can have: never a halted one, a superseded one only after some host switched to it, once", async () => {
    const old = await record();
    await hostSucceeded(db, old, "web1", {});
    const halted = await record();
    await hostFailed(db, halted, "web1", "health-check", "503");
    expect(await stateOf(halted)).toBe("halted");
    // web2 was down for both: the older one, which web1 went live on, is what it catches up with.
    expect((await pendingHandOvers(db, "web2", ["app"])).map((r) => r.id)).toEqual([old]);
    expect(await stopsHost(db, (await readRollout(db, old))!, "web2")).toBe(false);
    expect(await markHandedOver(db, old, "web2")).toBe(true);
    expect(await markHandedOver(db, old, "web2")).toBe(false);
    expect(await pendingHandOvers(db, "web2", ["app"])).toEqual([]);
    // A host it does not list, and a deployment it does not deploy, get nothing.
    expect(await pendingHandOvers(db, "web9", ["app"])).toEqual([]);
    expect(await pendingHandOvers(db, "web2", ["shop"])).toEqual([]);
    // A newer running one wins, and the superseded one now stops a host that has not started it.
    const newest = await record();
    expect((await pendingHandOvers(db, "web3", ["app"])).map((r) => r.id)).toEqual([newest]);
    expect(await stopsHost(db, (await readRollout(db, old))!, "web3")).toBe(true);
    expect(await stopsHost(db, (await readRollout(db, halted))!, "web3")).toBe(true);
  });

  it("the last host to succeed ends the rollout; GitHub hears of each step of the fleet once", async () => {
    const id = await record();
    const told: string[] = [];
    const report = {
      progress: (_r: unknown, live: string[]): GithubWrite[] => (told.push(`progress ${live.join(",")}`), []),
      live: (): GithubWrite[] => (told.push("live"), []),
      stopped: (): GithubWrite[] => (told.push("stopped"), []),
    };
    await Promise.all(HOSTS.map((h) => hostSucceeded(db, id, h, { release: `r-${h}` }, report)));
    expect(await stateOf(id)).toBe("succeeded");
    expect(told.filter((t) => t === "live")).toHaveLength(1);
    expect(told.at(-1)).toBe("live");
    expect(told.filter((t) => t.startsWith("progress")).map((t) => t.split(",").length)).toEqual([1, 2]);
    // A failure after the end changes nothing of the rollout.
    await hostFailed(db, id, "web2", "build", "late", report);
    expect(await stateOf(id)).toBe("succeeded");
    expect(told).not.toContain("stopped");
  });

  it("a failure halts a running rollout, or rolls it back, once, with the host, step and reason", async () => {
    const halt = await record();
    await hostFailed(db, halt, "web2", "restart", "exit 4");
    await hostFailed(db, halt, "web3", "build", "exit 1");
    expect(await readRollout(db, halt)).toMatchObject({ state: "halted", failedHost: "web2", failedStep: "restart", reason: "exit 4" });
    const back = await record("shop", { onFailure: "rollback" });
    await hostFailed(db, back, "web1", "health-check", "503");
    expect(await readRollout(db, back)).toMatchObject({ state: "rolled-back", failedHost: "web1" });
  });

  it("keeps the newest keep_deploys rollouts of a deployment and the running ones", async () => {
    const ids: number[] = [];
    for (let i = 0; i < 5; i++) ids.push(await record());
    const shop = await record("shop");
    // The newest of app is running, the others superseded; keep 2: the two newest stay.
    expect(await pruneRollouts(db, "app", 2)).toBe(3);
    expect((await db.select({ id: rollouts.id }).from(rollouts).where(eq(rollouts.deployment, "app"))).map((r) => r.id).sort((a, b) => a - b)).toEqual(ids.slice(3));
    expect(await pruneRollouts(db, "app", 2)).toBe(0);
    expect(await readRollout(db, shop)).toBeDefined();
  });
});
