import { appendFile, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { until } from "../../test/helpers/wait.ts";
import { MAX_LINE_BYTES, followLog } from "./log-follower.ts";

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), "deployq-follow-"));
});
afterAll(() => rm(dir, { recursive: true, force: true }));

describe("followLog", () => {
  it("hands on complete lines with their byte offsets as the file grows, waits for a file not there yet, and ends with the last line once finished", async () => {
    const file = path.join(dir, "1.log");
    const lines: Array<[string, number]> = [];
    const follower = followLog(file, { onLine: (line, offset) => lines.push([line, offset]) });
    await writeFile(file, "first\nséc");
    await until("the first line", async () => lines.length === 1);
    await appendFile(file, "ond\r\nthird");
    await until("the second line", async () => lines.length === 2);
    expect(lines).toEqual([
      ["first", 0],
      ["séc" + "ond", 6],
    ]);
    follower.finish();
    await follower.done;
    expect(lines.at(-1)).toEqual(["third", 6 + Buffer.byteLength("séc" + "ond\r\n")]);
  });

  it("starts from an offset, cuts a line past MAX_LINE_BYTES into pieces, and ends at once for a file that never came", async () => {
    const file = path.join(dir, "2.log");
    await writeFile(file, `skipped\n${"x".repeat(MAX_LINE_BYTES + 10)}\nend\n`);
    const lines: Array<[string, number]> = [];
    const follower = followLog(file, { from: 8, onLine: (line, offset) => lines.push([line, offset]) });
    follower.finish();
    await follower.done;
    expect(lines.map(([l, o]) => [l.length, o])).toEqual([
      [MAX_LINE_BYTES, 8],
      [10, 8 + MAX_LINE_BYTES],
      [3, 8 + MAX_LINE_BYTES + 11],
    ]);
    const never = followLog(path.join(dir, "missing.log"), { onLine: () => {} });
    never.finish();
    await never.done;
  });
});
