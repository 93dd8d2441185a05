import { describe, expect, it } from "vitest";
import { flood } from "../../torture/flood.ts";
import { randomSeed } from "../../torture/rng.ts";

/** The short version of `npm run torture`'s flood scenario (RELIABILITY.md has the long one). */
describe("torture, short: thousands of entries at once, an inotify queue that overflows", () => {
  it("5,000 to 8,000 entries dropped into router/ at once under a 256-event inotify queue: every one routed once, router/ empty", async () => {
    const seed = randomSeed();
    const result = await flood({ seed, rounds: 1, entries: [5_000, 8_000] });
    // The seed replays it: npm run torture -- --only flood --seed <seed> --count 1 (the long one drops 10,000 to 40,000)
    expect(result.problems, `seed ${seed}`).toEqual([]);
    expect(result.dropped).toBeGreaterThanOrEqual(5_000);
    expect({ lost: result.lost, duplicated: result.duplicated }).toEqual({ lost: 0, duplicated: 0 });
  }, 180_000);
});
