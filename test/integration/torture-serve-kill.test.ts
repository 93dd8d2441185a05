import { describe, expect, it } from "vitest";
import { randomSeed } from "../../torture/rng.ts";
import { serveKill } from "../../torture/serve-kill.ts";

/** The short version of `npm run torture`'s serve-kill scenario (RELIABILITY.md has the long one). */
describe("torture, short: kill -9 deployq serve while it deploys", () => {
  it("after 3 kills at random deploy steps, every acknowledged push was routed and finished once, and current is a whole release of the newest commit", async () => {
    const seed = randomSeed();
    const result = await serveKill({ seed, kills: 3 });
    // The seed replays it: npm run torture -- --only serve-kill --seed <seed> --count 3
    expect(result.problems, `seed ${seed}`).toEqual([]);
    expect(result.acknowledged).toBeGreaterThanOrEqual(3);
    expect(result.deploysSucceeded).toBeGreaterThanOrEqual(1);
    expect({ lost: result.lost, duplicated: result.duplicated, badCurrent: result.badCurrent, leftInQueues: result.leftInQueues }).toEqual({ lost: 0, duplicated: 0, badCurrent: 0, leftInQueues: 0 });
  }, 240_000);
});
