import { randomUUID } from "node:crypto";
import { chmod, mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { flush, requeue, resolveQueue } from "./admin.ts";
import type { QueueEntry } from "./entry.ts";
import { entryName } from "./entry-name.ts";
import { fsyncDir } from "./fsync.ts";
import { type QueueLayout, queueLayout } from "./layout.ts";
import { handOverInto, removeEntry } from "./move.ts";
import { scanQueue } from "./scan.ts";
import { ensureQueueDirs, sweepTmp, writeEntryDurably } from "./write.ts";

/** link() refuses with this code while set, as protected_hardlinks does for another user's entry (root is never refused). */
const refusedLinks = vi.hoisted(() => ({ code: undefined as string | undefined }));
vi.mock("node:fs/promises", async (importOriginal) => {
  const fs = await importOriginal<typeof import("node:fs/promises")>();
  return {
    ...fs,
    link: (existing: string, created: string) =>
      refusedLinks.code ? Promise.reject(Object.assign(new Error(`${refusedLinks.code}: link refused, link '${existing}' -> '${created}'`), { code: refusedLinks.code })) : fs.link(existing, created),
  };
});

let root: string;
let layout: QueueLayout;

beforeEach(async () => {
  root = await mkdtemp(path.join(tmpdir(), "deployq-queue-"));
  layout = queueLayout(root);
  await ensureQueueDirs(layout, ["api"]);
});
afterEach(async () => {
  refusedLinks.code = undefined;
  await rm(root, { recursive: true, force: true });
});

function entry(extra: Partial<QueueEntry> = {}): QueueEntry {
  return { event: "push", delivery_id: randomUUID(), hook_id: "1", received_at: new Date().toISOString(), payload: { ref: "refs/heads/main" }, ...extra };
}

describe("the filesystem queue", () => {
  it("writes pretty-printed entries that appear whole, leaving nothing in .tmp", async () => {
    const e = entry();
    const name = entryName(e.delivery_id);
    const file = await writeEntryDurably(layout, layout.router, name, e);
    expect(file).toBe(path.join(layout.router, name));
    const text = await readFile(file, "utf8");
    expect(text).toBe(`${JSON.stringify(e, null, 2)}\n`);
    expect(await readdir(layout.tmp)).toEqual([]);
    expect((await stat(file)).mode & 0o777).toBe(0o640);
  });

  it("scans in name order and ignores what is not a complete entry", async () => {
    const names = [3n, 1n, 2n].map((t) => entryName(randomUUID(), t));
    for (const n of names) await writeFile(path.join(layout.router, n), "{}");
    for (const junk of [".x.json", `${names[0]}~`, `${names[0]}.1.ab.tmp`, "README.md"]) await writeFile(path.join(layout.router, junk), "");
    await mkdir(path.join(layout.router, "subdir"));
    expect(await scanQueue(layout.router)).toEqual([...names].sort());
    expect(await scanQueue(path.join(root, "missing"))).toEqual([]);
  });

  it("hands over by hard link, idempotently", async () => {
    const e = entry();
    const file = await writeEntryDurably(layout, layout.router, entryName(e.delivery_id), e);
    await handOverInto(layout, [file], layout.deployment("api"));
    await handOverInto(layout, [file], layout.deployment("api")); // a repeat after a crash is harmless
    await removeEntry(file);
    await removeEntry(file);
    expect(await scanQueue(layout.router)).toEqual([]);
    expect(await scanQueue(layout.deployment("api"))).toEqual([path.basename(file)]);
  });

  it.each(["EPERM", "EACCES", "EXDEV"])("hands over by a copy of its own when link() is refused (%s), idempotently", async (code) => {
    const entries = [entry(), entry()];
    const files = await Promise.all(entries.map((e) => writeEntryDurably(layout, layout.router, entryName(e.delivery_id), e)));
    await chmod(files[0]!, 0o600); // the copy is the daemon's own file, whatever the original's mode
    const originals = await Promise.all(files.map((f) => readFile(f, "utf8")));
    refusedLinks.code = code;
    const dir = layout.deployment("api");
    await handOverInto(layout, files, dir);
    for (const [i, file] of files.entries()) {
      const copy = path.join(dir, path.basename(file));
      expect(await readFile(copy, "utf8")).toBe(originals[i]);
      expect((await stat(copy)).ino).not.toBe((await stat(file)).ino);
      expect((await stat(copy)).mode & 0o777).toBe(0o640);
    }
    expect(await readdir(layout.tmp)).toEqual([]);
    // A repeat after a crash keeps the copy already there (a deployment worker may have rewritten it meanwhile).
    const first = path.join(dir, path.basename(files[0]!));
    await writeFile(first, "rewritten by the deployment worker");
    await handOverInto(layout, files, dir);
    expect(await readFile(first, "utf8")).toBe("rewritten by the deployment worker");
    expect(await scanQueue(dir)).toEqual(files.map((f) => path.basename(f)).sort());
  });

  it("does not copy what link() refuses for another reason, nor an entry that is gone", async () => {
    const e = entry();
    const missing = path.join(layout.router, entryName(e.delivery_id));
    await expect(handOverInto(layout, [missing], layout.deployment("api"))).rejects.toMatchObject({ code: "ENOENT" });
    refusedLinks.code = "EPERM";
    await expect(handOverInto(layout, [missing], layout.deployment("api"))).rejects.toThrow(/cannot copy .* it is gone/);
    expect(await scanQueue(layout.deployment("api"))).toEqual([]);
  });

  it("sweeps temporaries of dead processes and keeps those of live ones", async () => {
    const dead = "x.json.999999999.abcd.tmp";
    const live = `y.json.${process.ppid}.abcd.tmp`;
    const foreign = "z.partial";
    for (const n of [dead, live, foreign]) await writeFile(path.join(layout.tmp, n), "");
    expect((await sweepTmp(layout)).sort()).toEqual([dead, foreign].sort());
    expect(await readdir(layout.tmp)).toEqual([live]);
  });

  it("shares directory fsyncs between concurrent callers", async () => {
    await Promise.all(Array.from({ length: 50 }, () => fsyncDir(layout.router)));
    await expect(fsyncDir(path.join(root, "missing"))).rejects.toThrow(/ENOENT/);
    await fsyncDir(layout.router);
  });

  it("resolves queue names and refuses paths", () => {
    expect(resolveQueue(layout, "router").dir).toBe(layout.router);
    expect(resolveQueue(layout, "api").dir).toBe(layout.deployment("api"));
    expect(resolveQueue(layout, "dead-letter/api").dir).toBe(layout.deadLetter("api"));
    for (const bad of ["../x", "dead-letter/../../x", "api/../../etc", ""]) expect(() => resolveQueue(layout, bad)).toThrow(/no queue called/);
  });

  it("requeues dead letters without their error, and flushes a queue", async () => {
    const failed = entry({ attempts: 3, last_error: "boom", failed_at: "2026-01-01T00:00:00Z" });
    const name = entryName(failed.delivery_id);
    await writeEntryDurably(layout, layout.deadLetter("api"), name, failed);
    const raw = entryName(randomUUID());
    await writeFile(path.join(layout.deadLetter("router"), raw), "{ broken");
    await writeFile(path.join(layout.deadLetter("router"), `${raw}.error`), "not valid JSON");

    await expect(requeue(layout, "api", "nope")).rejects.toThrow(/no entry "nope" in dead-letter\/api/);
    expect(await requeue(layout, "api", failed.delivery_id)).toEqual([name]);
    const back = JSON.parse(await readFile(path.join(layout.deployment("api"), name), "utf8"));
    expect(back).toEqual({ event: "push", delivery_id: failed.delivery_id, hook_id: "1", received_at: failed.received_at, payload: failed.payload, requeues: 1 });
    expect(await readdir(layout.deadLetter("api"))).toEqual([]);

    expect(await requeue(layout, "router")).toEqual([raw]);
    expect(await readFile(path.join(layout.router, raw), "utf8")).toBe("{ broken");
    expect(await readdir(layout.deadLetter("router"))).toEqual([]);

    expect(await flush(resolveQueue(layout, "api"))).toEqual([name]);
    expect(await scanQueue(layout.deployment("api"))).toEqual([]);
  });
});
