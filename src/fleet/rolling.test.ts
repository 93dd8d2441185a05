import { PassThrough } from "node:stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type TestDatabase, createTestDatabase } from "../../test/helpers/db.ts";
import type { Db } from "../db/client.ts";
import { rollouts } from "../db/schema.ts";
import { LockBusyError } from "../lock/lock.ts";
import { createLocalLocks } from "../lock/local-lock.ts";
import { RolloutStopped, rolloutSlotLock, whenRolloutLets } from "./rolling.ts";
import { hostFailed, readRollout, recordRollouts, rolloutHostRows } from "./rollouts.ts";

let tdb: TestDatabase;
let db: Db;
beforeAll(async () => {
  tdb = await createTestDatabase("pglite");
  db = tdb.database.db;
});
afterAll(() => tdb.dispose());

async function rollout(entry: string): Promise<number> {
  await db.transaction((tx) =>
    recordRollouts(tx as unknown as Db, [{ deployment: entry, entry: `${entry}.json`, deliveryId: undefined, ref: undefined, sha: "a".repeat(40), hosts: ["web1", "web2"], parallel: 1, canary: undefined, onFailure: "halt", body: "{}" }]),
  );
  return (await db.select().from(rollouts)).find((r) => r.entry === `${entry}.json`)!.id;
}

describe("a rollout's gate", () => {
  it("a failure in the slot is told before the slot is let go: the next host finds the rollout halted, never a free slot on a failed commit", async () => {
    const id = await rollout("gate-fail");
    const locks = createLocalLocks();
    const log = new PassThrough();
    let slotFreeWhenTold: boolean | undefined;
    const failing = whenRolloutLets(
      {
        db,
        locks,
        hostName: "web1",
        rolloutId: id,
        log,
        signal: new AbortController().signal,
        failed: async (err) => {
          slotFreeWhenTold = await locks.using(rolloutSlotLock("gate-fail", 0), async () => true, { wait: false }).catch((e: unknown) => (e instanceof LockBusyError ? false : Promise.reject(e)));
          await hostFailed(db, id, "web1", "health-check", String(err));
        },
      },
      async () => {
        throw new Error("503");
      },
    );
    await expect(failing).rejects.toThrow("503");
    expect(slotFreeWhenTold).toBe(false);
    expect((await readRollout(db, id))!.state).toBe("halted");
    // The next host: stopped at the gate, its fn never run.
    let ran = false;
    await expect(whenRolloutLets({ db, locks, hostName: "web2", rolloutId: id, log, signal: new AbortController().signal }, async () => (ran = true))).rejects.toBeInstanceOf(RolloutStopped);
    expect(ran).toBe(false);
  });

  it("records the time the slot was held as the host's switch interval", async () => {
    const id = await rollout("gate-ok");
    const log = new PassThrough();
    let text = "";
    log.on("data", (c: Buffer) => (text += c.toString()));
    expect(await whenRolloutLets({ db, locks: createLocalLocks(), hostName: "web2", rolloutId: id, log, signal: new AbortController().signal }, async () => "switched")).toBe("switched");
    const [row] = await rolloutHostRows(db, id);
    expect(row!.host).toBe("web2");
    expect(row!.switchStartedAt!.getTime()).toBeLessThanOrEqual(row!.switchEndedAt!.getTime());
    expect(text).toContain(`rollout ${id}: holding slot 0`);
  });
});
