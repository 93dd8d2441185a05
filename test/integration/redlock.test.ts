import { Writable } from "node:stream";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { LockBusyError, type LockService, LockUnavailableError, NGINX_LOCK, deploymentLockName, withLockPrefix } from "../../src/lock/lock.ts";
import { createLocalLocks } from "../../src/lock/local-lock.ts";
import { createRedlockLocks } from "../../src/lock/redlock.ts";
import { type PrivateRedis, privateRedis } from "../helpers/redis.ts";
import { createWorkspace } from "../helpers/workspace.ts";

function capturingLogger() {
  const lines: Array<{ msg: string; level: number }> = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString().split("\n").filter(Boolean)) lines.push(JSON.parse(line) as { msg: string; level: number });
      done();
    },
  });
  return { logger: pino({ level: "info" }, stream), lines };
}

describe("redlock locks", () => {
  let redis: PrivateRedis;
  const services: LockService[] = [];
  const make = (ttlMs: number, acquireTimeoutMs?: number) => {
    const captured = capturingLogger();
    const locks = createRedlockLocks({ urls: [redis.url], ttlMs, logger: captured.logger, ...(acquireTimeoutMs ? { acquireTimeoutMs } : {}) });
    services.push(locks);
    return { locks, lines: captured.lines };
  };

  beforeAll(async () => {
    redis = await privateRedis();
    await redis.start();
  });
  afterAll(async () => {
    await Promise.all(services.map((s) => s.close()));
    await redis?.stop();
  });

  it("keeps a lock past its TTL while the routine runs, and a second holder waits instead of overlapping", async () => {
    const a = make(1000);
    const b = make(1000, 8000);
    const events: string[] = [];
    let aborted: boolean | undefined;
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    let holds!: () => void;
    const aHolds = new Promise<void>((r) => (holds = r));
    const first = a.locks.using(deploymentLockName("extend"), async (signal) => {
      events.push("a:start");
      holds();
      await held;
      aborted = signal.aborted;
      events.push("a:end");
    });
    // b asks while a holds it; a keeps it for three TTLs, extended at half its life.
    await aHolds;
    const second = b.locks.using(deploymentLockName("extend"), async () => {
      events.push("b:start");
    });
    await new Promise((r) => setTimeout(r, 3000)); // a's hold outlives the TTL three times: that is the point of the test
    release();
    await Promise.all([first, second]);
    expect(aborted).toBe(false);
    expect(events).toEqual(["a:start", "a:end", "b:start"]);
  });

  it("says busy when another holds the lock past the acquisition window", async () => {
    const a = make(2000);
    const b = make(2000, 300);
    let release!: () => void;
    let holds!: () => void;
    const aHolds = new Promise<void>((r) => (holds = r));
    const holding = a.locks.using(deploymentLockName("busy"), () => {
      holds();
      return new Promise<void>((r) => (release = r));
    });
    await aHolds;
    await expect(b.locks.using(deploymentLockName("busy"), async () => "ran")).rejects.toBeInstanceOf(LockBusyError);
    release();
    await holding;
    await expect(b.locks.using(deploymentLockName("busy"), async () => "ran")).resolves.toBe("ran");
  });

  it("with wait: false, one attempt: busy at once while another holds it (redlock and in-process locks alike), free once released", async () => {
    for (const [a, b] of [
      [make(2000).locks, make(2000, 60_000).locks],
      [createLocalLocks(), undefined],
    ] as const) {
      const other = b ?? a;
      let release!: () => void;
      let holds!: () => void;
      const aHolds = new Promise<void>((r) => (holds = r));
      const holding = a.using("rollout:app:0", () => {
        holds();
        return new Promise<void>((r) => (release = r));
      });
      await aHolds;
      // b's acquisition window is a minute, far past the test's timeout: a refusal is the one attempt.
      await expect(other.using("rollout:app:0", async () => "ran", { wait: false })).rejects.toBeInstanceOf(LockBusyError);
      release();
      await holding;
      await expect(other.using("rollout:app:0", async () => "ran", { wait: false })).resolves.toBe("ran");
    }
  });

  it("reports an outage of the lock service once, and recovers by itself", async () => {
    const { locks, lines } = make(1000, 300);
    await locks.using(deploymentLockName("outage"), async () => {});
    await redis.stop();
    for (let i = 0; i < 3; i++) {
      await expect(locks.using(deploymentLockName("outage"), async () => {})).rejects.toBeInstanceOf(LockUnavailableError);
    }
    const health = locks.health();
    expect(health.ok).toBe(false);
    expect(lines.filter((l) => l.msg.startsWith("the lock service is unreachable")), JSON.stringify(lines)).toHaveLength(1);
    await redis.start();
    const deadline = Date.now() + 20_000;
    for (;;) {
      try {
        await locks.using(deploymentLockName("outage"), async () => {});
        break;
      } catch (err) {
        if (!(err instanceof LockUnavailableError) || Date.now() > deadline) throw err;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    expect(locks.health()).toEqual({ ok: true });
    expect(lines.filter((l) => l.msg.startsWith("the lock service is reachable again"))).toHaveLength(1);
  });
  it("two installs sharing one Redis do not share locks; the processes of one install do", async () => {
    const one = await createWorkspace();
    const two = await createWorkspace();
    try {
      // Each process loads its install's settings: the default prefixes differ between installs.
      expect(one.settings.lockPrefix).toMatch(/^deployq:[0-9a-f]{8}$/);
      expect(two.settings.lockPrefix).not.toBe(one.settings.lockPrefix);
      const install = (prefix: string) => withLockPrefix(make(5000, 600).locks, prefix);
      const oneWorkers = install(one.settings.lockPrefix);
      const oneCli = install(one.settings.lockPrefix);
      const twoWorkers = install(two.settings.lockPrefix);

      let release!: () => void;
      const released = new Promise<void>((r) => (release = r));
      let holds!: () => void;
      const holding = new Promise<void>((r) => (holds = r));
      const held = oneWorkers.using(deploymentLockName("api"), async () => {
        holds();
        await released;
      });
      const nginxHeld = oneWorkers.using(NGINX_LOCK, () => released);
      await holding;
      try {
        // The other install deploys its own "api" and changes its own nginx meanwhile.
        await expect(twoWorkers.using(deploymentLockName("api"), async () => "two deployed")).resolves.toBe("two deployed");
        await expect(twoWorkers.using(NGINX_LOCK, async () => "two's nginx")).resolves.toBe("two's nginx");
        // The same install's other process (the CLI's `sites remove`, another workers process) is kept out.
        await expect(oneCli.using(deploymentLockName("api"), async () => "ran")).rejects.toBeInstanceOf(LockBusyError);
        await expect(oneCli.using(NGINX_LOCK, async () => "ran")).rejects.toBeInstanceOf(LockBusyError);
      } finally {
        release();
        await Promise.all([held, nginxHeld]);
      }
      await expect(oneCli.using(NGINX_LOCK, async () => "ran")).resolves.toBe("ran");
    } finally {
      await one.dispose();
      await two.dispose();
    }
  });
});
