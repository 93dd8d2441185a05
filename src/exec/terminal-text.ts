import { StringDecoder } from "node:string_decoder";

/**
 * Turns what a program wrote for a terminal into text for a log file, as a terminal would
 * have left it on screen: escape sequences (colours, cursor movement, erase-line, OSC
 * titles and hyperlinks) are removed, and a line rewritten with carriage returns (a
 * progress bar) keeps only its final state. Fed chunk by chunk: a sequence or a line
 * split across chunks is held back until it is complete (at most MAX_PENDING characters).
 *
 * The grammar is ECMA-48's: CSI `ESC [` parameters, intermediates, one final byte;
 * OSC/DCS/SOS/PM/APC strings up to BEL or ST (`ESC \`); other escapes `ESC` intermediates
 * then one final byte. Other C0 controls but tab and newline are dropped.
 */
export class TerminalText {
  private readonly decoder = new StringDecoder("utf8");
  /** The current line so far (after the last newline). */
  private line = "";
  /** A carriage return was seen: the next character other than a newline starts the line again. */
  private returned = false;
  /** An escape sequence not complete yet. */
  private escape = "";

  /** The complete lines (and, past MAX_PENDING, the long line) that `chunk` finishes. */
  push(chunk: Buffer | string): string {
    return this.feed(typeof chunk === "string" ? chunk : this.decoder.write(chunk), false);
  }

  /** Whatever is held back, once the program is done. */
  end(): string {
    return this.feed(this.decoder.end(), true);
  }

  private feed(text: string, last: boolean): string {
    let out = "";
    let i = 0;
    const input = this.escape + text;
    this.escape = "";
    while (i < input.length) {
      const c = input.charCodeAt(i);
      if (c === 0x1b || c === 0x9b) {
        const length = escapeLength(input, i);
        if (length === 0) {
          // Incomplete: wait for the rest, unless nothing more will come or it never ends (then only ESC goes).
          if (!last && input.length - i < MAX_PENDING) {
            this.escape = input.slice(i);
            break;
          }
          i++;
          continue;
        }
        i += length;
        continue;
      }
      if (c === 0x0a) {
        out += this.line + "\n";
        this.line = "";
        this.returned = false;
      } else if (c === 0x0d) {
        this.returned = true;
      } else if (c >= 0x20 || c === 0x09) {
        if (this.returned) {
          this.line = "";
          this.returned = false;
        }
        // Plain text up to the next control character, at once.
        let j = i + 1;
        while (j < input.length) {
          const d = input.charCodeAt(j);
          if (d < 0x20 || d === 0x7f || d === 0x1b || d === 0x9b) break;
          j++;
        }
        this.line += input.slice(i, j);
        i = j;
        continue;
      }
      i++;
    }
    if (last || this.line.length >= MAX_PENDING) {
      out += this.line;
      this.line = "";
      this.returned = false;
    }
    return out;
  }
}

/** A line or an escape sequence longer than this is let through rather than held back forever. */
const MAX_PENDING = 64 * 1024;

/** The length of the escape sequence at `i` (ESC or 8-bit CSI), or 0 if the input ends before it does. */
function escapeLength(s: string, i: number): number {
  let j: number;
  if (s.charCodeAt(i) === 0x9b) {
    j = i + 1;
  } else {
    if (i + 1 >= s.length) return 0;
    const next = s[i + 1]!;
    if (next === "[") {
      j = i + 2;
    } else if ("]PX^_".includes(next)) {
      // A control string: up to BEL (OSC only, in practice) or ST (ESC \).
      for (let k = i + 2; k < s.length; k++) {
        if (s.charCodeAt(k) === 0x07) return k + 1 - i;
        if (s.charCodeAt(k) === 0x1b) {
          if (k + 1 >= s.length) return 0;
          if (s[k + 1] === "\\") return k + 2 - i;
        }
      }
      return 0;
    } else {
      // ESC, intermediates (0x20–0x2f), one final byte (0x30–0x7e): ESC ( B, ESC 7, ESC =, ESC M...
      let k = i + 1;
      while (k < s.length && s.charCodeAt(k) >= 0x20 && s.charCodeAt(k) <= 0x2f) k++;
      if (k >= s.length) return 0;
      return k + 1 - i;
    }
  }
  // CSI: parameters 0x30–0x3f, intermediates 0x20–0x2f, final 0x40–0x7e.
  while (j < s.length && s.charCodeAt(j) >= 0x30 && s.charCodeAt(j) <= 0x3f) j++;
  while (j < s.length && s.charCodeAt(j) >= 0x20 && s.charCodeAt(j) <= 0x2f) j++;
  if (j >= s.length) return 0;
  return j + 1 - i;
}
