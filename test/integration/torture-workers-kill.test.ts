import { describe, expect, it } from "vitest";
import { randomSeed } from "../../torture/rng.ts";
import { workersKill } from "../../torture/workers-kill.ts";

/** The short version of `npm run torture`'s workers-kill scenario (RELIABILITY.md has the long one). */
describe("torture, short: kill -9 deployq workers while it routes and deploys", () => {
  it("after 4 kills, every entry was routed once and deployed or superseded once in both deployments, and both run the newest commit", async () => {
    const seed = randomSeed();
    const result = await workersKill({ seed, kills: 4 });
    // The seed replays it: npm run torture -- --only workers-kill --seed <seed> --count 4
    expect(result.problems, `seed ${seed}`).toEqual([]);
    expect(result.entries).toBeGreaterThanOrEqual(4);
    expect(result.deploysSucceeded).toBeGreaterThanOrEqual(2);
    expect({ lost: result.lost, duplicated: result.duplicated, badCurrent: result.badCurrent, leftInQueues: result.leftInQueues }).toEqual({ lost: 0, duplicated: 0, badCurrent: 0, leftInQueues: 0 });
  }, 180_000);
});
