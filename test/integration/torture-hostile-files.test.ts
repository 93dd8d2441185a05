import { describe, expect, it } from "vitest";
import { hostileFiles } from "../../torture/hostile-files.ts";
import { randomSeed } from "../../torture/rng.ts";

/** The short version of `npm run torture`'s hostile-files scenario (RELIABILITY.md has the long one). */
describe("torture, short: hostile files among the entries, under a daemon that is not root", () => {
  it("one of each kind, then 3 random rounds: valid entries routed and deployed, the rest moved aside or refused, nothing followed or quoted, nothing held up", async () => {
    const seed = randomSeed();
    const result = await hostileFiles({ seed, rounds: 4, roundTimeoutMs: 30_000 });
    // The seed replays it: npm run torture -- --only hostile-files --seed <seed> --count 4
    expect(result.problems, `seed ${seed}`).toEqual([]);
    // Round 1 plants each kind once, among them another user's directory, which cannot be moved (and used to stop router/ for good).
    expect(result.kinds["other-user-directory"]).toBeGreaterThanOrEqual(1);
    expect(result.kinds["other-user"]).toBeGreaterThanOrEqual(1);
    expect({ lost: result.lost, notMovedAside: result.notMovedAside, leaked: result.leaked, strayTouched: result.strayTouched, workersAlive: result.workersAlive }).toEqual({
      lost: 0,
      notMovedAside: 0,
      leaked: 0,
      strayTouched: 0,
      workersAlive: true,
    });
  }, 180_000);
});
