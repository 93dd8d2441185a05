import { randomUUID } from "node:crypto";
import { mkdir, mkdtemp, rm, unlink, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { queueSummary, queueSummaryStats } from "./scan.ts";

const name = (epochNs: bigint) => `${epochNs.toString().padStart(19, "0")}-${randomUUID()}.json`;
/**
 * The directory has been quiet for a minute: the clock deployq reads (Date, faked) moves on,
 * the file system's own does not. (utimes cannot age a directory: it sets its change time to now.)
 */
const later = () => vi.setSystemTime(Date.now() + 60_000);

describe("queueSummary", () => {
  let root: string;
  let dir: string;
  beforeEach(async () => {
    root = await mkdtemp(path.join(tmpdir(), "deployq-scan-"));
    dir = path.join(root, "q");
    await mkdir(dir);
    vi.useFakeTimers({ toFake: ["Date"] });
  });
  afterEach(async () => {
    vi.useRealTimers();
    await rm(root, { recursive: true, force: true });
  });

  it("counts the entries and names the oldest, ignoring what is not an entry; a missing directory is empty", async () => {
    const old = name(1_700_000_000_000_000_000n);
    await writeFile(path.join(dir, name(1_800_000_000_000_000_000n)), "{}");
    await writeFile(path.join(dir, old), "{}");
    await writeFile(path.join(dir, `${old}~`), "");
    await writeFile(path.join(dir, ".tmp-x"), "");
    expect(await queueSummary(dir)).toEqual({ entries: 2, oldest: old });
    expect(await queueSummary(path.join(root, "none"))).toEqual({ entries: 0, oldest: undefined });
  });

  it("lists a quiet directory once, and again as soon as an entry comes or goes", async () => {
    const a = name(1_700_000_000_000_000_000n);
    await writeFile(path.join(dir, a), "{}");
    later();
    const listed = queueSummaryStats.listed;
    expect(await queueSummary(dir)).toEqual({ entries: 1, oldest: a });
    expect(await queueSummary(dir)).toEqual({ entries: 1, oldest: a });
    expect(await queueSummary(dir)).toEqual({ entries: 1, oldest: a });
    expect(queueSummaryStats.listed - listed).toBe(1);

    const b = name(1_600_000_000_000_000_000n);
    await writeFile(path.join(dir, b), "{}");
    expect(await queueSummary(dir)).toEqual({ entries: 2, oldest: b });
    await unlink(path.join(dir, b));
    expect(await queueSummary(dir)).toEqual({ entries: 1, oldest: a });
  });

  it("sees a change that left the modification time as it was (a coarse clock), through the change time", async () => {
    const past = new Date(Date.now() - 3_600_000);
    await utimes(dir, past, past);
    later();
    expect((await queueSummary(dir)).entries).toBe(0);
    await writeFile(path.join(dir, name(1_700_000_000_000_000_000n)), "{}");
    // The modification time as it was when listed, as a change within the clock's tick would leave it.
    await utimes(dir, past, past);
    later();
    expect((await queueSummary(dir)).entries).toBe(1);
  });

  it("does not trust a listing made just after a change: the next call lists again", async () => {
    await writeFile(path.join(dir, name(1_700_000_000_000_000_000n)), "{}");
    const listed = queueSummaryStats.listed;
    await queueSummary(dir);
    await queueSummary(dir);
    expect(queueSummaryStats.listed - listed).toBe(2);
  });
});
