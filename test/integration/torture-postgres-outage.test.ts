import { describe, expect, it } from "vitest";
import { postgresOutage } from "../../torture/postgres-outage.ts";
import { randomSeed } from "../../torture/rng.ts";

/** The short version of `npm run torture`'s postgres-outage scenario (RELIABILITY.md has the long one). */
describe("torture, short: crash Postgres under deployq serve", () => {
  it("over 2 crashes at random moments, answers 503 while it is down, and every acknowledged push is routed and deployed once", async () => {
    const seed = randomSeed();
    const result = await postgresOutage({ seed, outages: 2, senders: 3 });
    // The seed replays it: npm run torture -- --only postgres-outage --seed <seed> --count 2
    expect(result.problems, `seed ${seed}`).toEqual([]);
    expect(result.unavailableWhileDown).toBeGreaterThanOrEqual(2 * 5);
    expect(result.acknowledged).toBeGreaterThanOrEqual(2 * 3);
    expect(result.deploysSucceeded).toBeGreaterThanOrEqual(1);
    expect({ acceptedWhileDown: result.acceptedWhileDown, lost: result.lost, duplicated: result.duplicated, badCurrent: result.badCurrent, leftInQueues: result.leftInQueues }).toEqual({
      acceptedWhileDown: 0,
      lost: 0,
      duplicated: 0,
      badCurrent: 0,
      leftInQueues: 0,
    });
  }, 180_000);
});
