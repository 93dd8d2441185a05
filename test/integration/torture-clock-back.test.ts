import { describe, expect, it } from "vitest";
import { clockBack } from "../../torture/clock-back.ts";
import { randomSeed } from "../../torture/rng.ts";

/** The short version of `npm run torture`'s clock-back scenario (RELIABILITY.md has the long one). */
describe("torture, short: the naming clock stepped back, with restarts", () => {
  it("after 8 rounds of steps back (and restarts that forget what was issued), names are arrival order and the newest commit is live", async () => {
    const seed = randomSeed();
    const result = await clockBack({ seed, rounds: 8 });
    // The seed replays it: npm run torture -- --only clock-back --seed <seed> --count 8
    expect(result.problems, `seed ${seed}`).toEqual([]);
    expect(result.pushes).toBeGreaterThanOrEqual(8);
    expect(result.stepsBack).toBeGreaterThanOrEqual(1);
    expect({ outOfOrder: result.outOfOrder, lost: result.lost, movedBack: result.movedBack, badCurrent: result.badCurrent }).toEqual({ outOfOrder: 0, lost: 0, movedBack: 0, badCurrent: 0 });
  }, 120_000);
});
