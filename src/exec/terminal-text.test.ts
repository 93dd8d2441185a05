import { describe, expect, it } from "vitest";
import { TerminalText } from "./terminal-text.ts";

/** Feeds `chunks` one by one, as a pipe would deliver them. */
function render(...chunks: Array<string | Buffer>): string {
  const t = new TerminalText();
  return chunks.map((c) => t.push(c)).join("") + t.end();
}

describe("TerminalText", () => {
  it("removes colours, cursor movement and erase sequences", () => {
    expect(render("\x1b[32m[PM2] \x1b[39mSaving\x1b[0m\n")).toBe("[PM2] Saving\n");
    expect(render("\x1b[1m\x1b[36mhost metrics\x1b[39m\x1b[22m | \x1b[38;5;208mcpu\x1b[0m\n")).toBe("host metrics | cpu\n");
    expect(render("a\x1b[2K\x1b[1G\x1b[?25lb\x1b[?25h\x1b[3A\n")).toBe("ab\n");
    expect(render("\x9b31mred\x9b0m\n")).toBe("red\n");
  });

  it("removes OSC strings (titles, hyperlinks) ended by BEL or ST, and other escapes", () => {
    expect(render("\x1b]0;npm install\x07done\n")).toBe("done\n");
    expect(render("see \x1b]8;;https://example.com\x1b\\the docs\x1b]8;;\x1b\\\n")).toBe("see the docs\n");
    expect(render("\x1b(B\x1b7x\x1b8\x1b=\x1bM\n")).toBe("x\n");
  });

  it("keeps only the final state of a line rewritten with carriage returns", () => {
    expect(render("Receiving objects:  10%\rReceiving objects:  50%\rReceiving objects: 100%, done.\n")).toBe("Receiving objects: 100%, done.\n");
    expect(render("[##   ] 40%\r\x1b[K[#####] 100%\nnext\n")).toBe("[#####] 100%\nnext\n");
    // CRLF line endings are line endings; a progress line that never ends with a newline keeps its last state.
    expect(render("one\r\ntwo\r\n")).toBe("one\ntwo\n");
    expect(render("1/3\r2/3\r3/3")).toBe("3/3");
  });

  it("holds back sequences, lines and characters split across chunks", () => {
    expect(render("\x1b[3", "2mgreen\x1b", "[0m\n")).toBe("green\n");
    expect(render("\x1b]0;tit", "le\x07ok\n")).toBe("ok\n");
    expect(render("50%\r", "\n")).toBe("50%\n");
    expect(render("50%\r", "100%\n")).toBe("100%\n");
    const euro = Buffer.from("€\n");
    expect(render(euro.subarray(0, 1), euro.subarray(1))).toBe("€\n");
  });

  it("gives complete lines at once and the rest at the end", () => {
    const t = new TerminalText();
    expect(t.push("first\nsecond")).toBe("first\n");
    expect(t.push(" half\n")).toBe("second half\n");
    expect(t.push("no newline")).toBe("");
    expect(t.end()).toBe("no newline");
  });

  it("drops other control characters but keeps tabs", () => {
    expect(render("a\tb\x07c\x08d\x00e\n")).toBe("a\tbcde\n");
  });
});
