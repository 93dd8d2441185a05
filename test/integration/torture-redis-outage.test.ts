import { describe, expect, it } from "vitest";
import { redisOutage } from "../../torture/redis-outage.ts";
import { randomSeed } from "../../torture/rng.ts";

/** The short version of `npm run torture`'s redis-outage scenario (RELIABILITY.md has the long one). */
describe("torture, short: the lock service's Redis fails under two workers processes", () => {
  it("over 2 outages of a single Redis and 2 of one node of three, no two builds overlap, deploys resume, and every push is deployed once", async () => {
    const seed = randomSeed();
    const result = await redisOutage({ seed, outages: 2 });
    // The seed replays it: npm run torture -- --only redis-outage --seed <seed> --count 2
    expect(result.problems, `seed ${seed}`).toEqual([]);
    expect(result.acknowledged).toBe(result.pushes);
    expect(result.pushes).toBeGreaterThanOrEqual(2 * 2 * 2);
    expect(result.buildsCompleted).toBeGreaterThanOrEqual(2);
    expect({ overlapping: result.overlapping, stalled: result.stalled, lost: result.lost, duplicated: result.duplicated, badCurrent: result.badCurrent, leftInQueues: result.leftInQueues }).toEqual({
      overlapping: 0,
      stalled: 0,
      lost: 0,
      duplicated: 0,
      badCurrent: 0,
      leftInQueues: 0,
    });
  }, 240_000);
});
