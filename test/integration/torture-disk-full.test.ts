import { describe, expect, it } from "vitest";
import { diskFull } from "../../torture/disk-full.ts";
import { randomSeed } from "../../torture/rng.ts";

/**
 * The short version of `npm run torture`'s disk-full scenario (RELIABILITY.md has the long
 * one). It mounts a tmpfs (as root, as CI runs): if it cannot, it fails; it never skips.
 */
describe("torture, short: the queue root fills up under deployq serve", () => {
  it("over 3 fills at random moments, answers 503 while full, leaves nothing half-written, and queues each redelivery once", async () => {
    const seed = randomSeed();
    const result = await diskFull({ seed, fills: 3, senders: 3 });
    // The seed replays it: npm run torture -- --only disk-full --seed <seed> --count 3
    expect(result.problems, `seed ${seed}`).toEqual([]);
    expect(result.unavailableWhileFull).toBeGreaterThanOrEqual(3 * 3);
    expect(result.acknowledged).toBeGreaterThanOrEqual(3 * 3);
    expect({ acceptedWhileFull: result.acceptedWhileFull, corrupt: result.corrupt, partial: result.partial, lost: result.lost, duplicated: result.duplicated, badCurrent: result.badCurrent, leftInQueues: result.leftInQueues }).toEqual({
      acceptedWhileFull: 0,
      corrupt: 0,
      partial: 0,
      lost: 0,
      duplicated: 0,
      badCurrent: 0,
      leftInQueues: 0,
    });
  }, 180_000);
});
