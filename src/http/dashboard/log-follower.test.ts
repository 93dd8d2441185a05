import { appendFile, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { followLogFile } from "./log-follower.ts";

describe("followLogFile", () => {
  let dir: string;
  let file: string;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "deployq-follow-"));
    file = path.join(dir, "1.log");
  });
  afterEach(() => rm(dir, { recursive: true, force: true }));

  it("hands on whole lines from the offset, each batch with the offset past it, and holds back a line still being written", async () => {
    await writeFile(file, "first\nsecond\n");
    const got: Array<[string, number]> = [];
    const follower = followLogFile({ file, offset: 6, onLines: (text, at) => got.push([text, at]), pollMs: 60_000 });
    try {
      await follower.readNow();
      expect(got).toEqual([["second\n", 13]]);
      await appendFile(file, "thi");
      await follower.readNow();
      expect(got).toHaveLength(1);
      await appendFile(file, "rd ✓\n");
      await follower.readNow();
      expect(got[1]).toEqual(["third ✓\n", 13 + Buffer.byteLength("third ✓\n")]);
    } finally {
      follower.close();
    }
  });

  it("resumes from an offset it handed out (what Last-Event-ID carries) without a repeat or a gap", async () => {
    await writeFile(file, "a\nb\nc\n");
    const texts: string[] = [];
    const follower = followLogFile({ file, offset: 4, onLines: (text) => texts.push(text), pollMs: 60_000 });
    try {
      await follower.readNow();
      expect(texts.join("")).toBe("c\n");
    } finally {
      follower.close();
    }
  });

  it("waits for a file that does not exist yet", async () => {
    const texts: string[] = [];
    const follower = followLogFile({ file, offset: 0, onLines: (text) => texts.push(text), pollMs: 60_000 });
    try {
      await follower.readNow();
      expect(texts).toEqual([]);
      await writeFile(file, "late\n");
      await follower.readNow();
      expect(texts).toEqual(["late\n"]);
    } finally {
      follower.close();
    }
  });
});
