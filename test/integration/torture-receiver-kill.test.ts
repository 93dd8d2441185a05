import { describe, expect, it } from "vitest";
import { receiverKill } from "../../torture/receiver-kill.ts";
import { randomSeed } from "../../torture/rng.ts";

/** The short version of `npm run torture`'s receiver-kill scenario (RELIABILITY.md has the long one). */
describe("torture, short: kill -9 the receiver under load", () => {
  it("loses, doubles and corrupts no acknowledged delivery over 4 kills at random moments", async () => {
    const seed = randomSeed();
    const result = await receiverKill({ seed, kills: 4, senders: 6, acksBetweenKills: [1, 25] });
    // The seed replays it: npm run torture -- --seed <seed> --count 4
    expect(result.problems, `seed ${seed}`).toEqual([]);
    expect(result.kills).toBe(4);
    expect(result.acknowledged).toBeGreaterThanOrEqual(4);
    expect(result.deliveries).toBeGreaterThanOrEqual(result.acknowledged);
    expect({ lost: result.lost, duplicated: result.duplicated, corrupt: result.corrupt, unrecorded: result.unrecorded, leftovers: result.leftovers }).toEqual({ lost: 0, duplicated: 0, corrupt: 0, unrecorded: 0, leftovers: 0 });
  }, 180_000);
});
