import { DeployqError } from "../errors.ts";

/**
 * A parser for nginx configuration text: directives with their arguments, as nginx itself
 * reads them, in the shape of nginx's own crossplane (`directive`, `args`, `line`, `block`).
 *
 * Why not a package: crossplane (nginx's own parser) exists for Python and Go only, not on
 * npm. `nginx-conf` (the most used on npm, last release Dec 2024) gets the block structure
 * right but hands each directive's arguments back as one raw string, quotes and escapes
 * left in (`"\"a.example.com\" b.example.com"`), so splitting them would still need a
 * tokenizer of our own, and its word reader ends a word at a quote where nginx does not.
 * `@webantic/nginx-config-parser` merged `server_name a; server_name b;` into one value
 * when tried. So this is a small real tokenizer instead, not a regular expression over the
 * text: a port of nginx's ngx_conf_read_token() (src/core/ngx_conf_file.c), whose rules it
 * follows:
 *
 * - tokens are separated by spaces, tabs and newlines; `;` ends a directive, `{` opens its
 *   block, `}` closes one;
 * - `#` at the start of a token starts a comment to the end of the line (inside a word, as
 *   in `a#b`, it is an ordinary character);
 * - a token starting with `"` or `'` runs to the matching quote and must be followed by a
 *   space, `;`, `{` or `)`; a quote inside a bare word is an ordinary character;
 * - a backslash keeps the next character from ending the token; in every token `\"`, `\'`
 *   and `\\` stand for the character, `\t`, `\r`, `\n` for tab, CR and LF, and any other
 *   `\x` stays as it is;
 * - `{` right after `$` belongs to the word (`${var}`), and `}` inside a word does too;
 * - the body of `*_by_lua_block { ... }` (OpenResty) is Lua: it becomes the directive's last
 *   argument, raw, as crossplane gives it.
 */
export interface NginxDirective {
  directive: string;
  args: string[];
  /** 1-based line of the directive's name. */
  line: number;
  /** Present for a block directive (`server { ... }`). */
  block?: NginxDirective[];
}

export class NginxSyntaxError extends DeployqError {
  constructor(
    readonly line: number,
    readonly reason: string,
  ) {
    super("DEPLOY", `nginx configuration, line ${line}: ${reason}`);
    this.name = "NginxSyntaxError";
  }
}

type Token = { kind: "word"; value: string; line: number } | { kind: ";" | "{" | "}"; line: number };

const SPACE = new Set([" ", "\t", "\r", "\n"]);

function unescape(raw: string): string {
  let out = "";
  for (let i = 0; i < raw.length; i++) {
    const ch = raw[i]!;
    if (ch === "\\" && i + 1 < raw.length) {
      const next = raw[i + 1]!;
      if (next === '"' || next === "'" || next === "\\") {
        out += next;
        i++;
        continue;
      }
      if (next === "t" || next === "r" || next === "n") {
        out += next === "t" ? "\t" : next === "r" ? "\r" : "\n";
        i++;
        continue;
      }
    }
    out += ch;
  }
  return out;
}

/** Splits nginx configuration text into words and `;`, `{`, `}`; throws NginxSyntaxError. */
export function* tokenizeNginx(text: string): Generator<Token> {
  let i = 0;
  let line = 1;
  const n = text.length;
  /** The previous token was a quoted string: the next character must separate it. */
  let afterQuote = false;
  /** The current directive's name, to recognise the raw body of `*_by_lua_block {`. */
  let directive: string | undefined;
  while (i < n) {
    const ch = text[i]!;
    if (afterQuote) {
      afterQuote = false;
      if (!SPACE.has(ch) && ch !== ";" && ch !== "{" && ch !== ")") throw new NginxSyntaxError(line, `unexpected "${ch}" after a quoted string`);
    }
    if (SPACE.has(ch)) {
      if (ch === "\n") line++;
      i++;
      continue;
    }
    if (ch === "#") {
      while (i < n && text[i] !== "\n") i++;
      continue;
    }
    if (ch === ";" || ch === "}") {
      directive = undefined;
      yield { kind: ch, line };
      i++;
      continue;
    }
    if (ch === "{") {
      i++;
      if (directive?.endsWith("_by_lua_block")) {
        // Its body is Lua, not nginx: one raw argument, as crossplane gives it.
        const start = line;
        const { end, lines } = skipLuaBlock(text, i, start);
        yield { kind: "word", value: text.slice(i, end), line: start };
        line += lines;
        i = end + 1; // past the closing brace
        yield { kind: ";", line };
      } else {
        yield { kind: "{", line };
      }
      directive = undefined;
      continue;
    }
    const tokenLine = line;
    if (ch === '"' || ch === "'") {
      let j = i + 1;
      for (; j < n && text[j] !== ch; j++) {
        if (text[j] === "\\") j++;
        if (text[j] === "\n") line++;
      }
      if (j >= n) throw new NginxSyntaxError(tokenLine, "unexpected end of file in a quoted string");
      const value = unescape(text.slice(i + 1, j));
      directive ??= value;
      yield { kind: "word", value, line: tokenLine };
      i = j + 1;
      afterQuote = true;
      continue;
    }
    // A bare word: up to a space, `;` or `{` (but `${` belongs to the word).
    let j = i;
    for (; j < n; j++) {
      const c = text[j]!;
      if (c === "\\") {
        j++;
        if (text[j] === "\n") line++;
        continue;
      }
      if (c === "{" && j > i && text[j - 1] === "$") continue;
      if (SPACE.has(c) || c === ";" || c === "{") break;
    }
    const value = unescape(text.slice(i, Math.min(j, n)));
    directive ??= value;
    yield { kind: "word", value, line: tokenLine };
    i = j;
  }
}

/** The end (index of the closing brace) of a Lua block body starting at `from`: braces counted outside Lua strings and comments. */
function skipLuaBlock(text: string, from: number, startLine: number): { end: number; lines: number } {
  let depth = 1;
  let lines = 0;
  const n = text.length;
  const longBracket = (at: number): number | undefined => {
    // [[ or [=*[: returns the number of '='
    const m = /^\[(=*)\[/.exec(text.slice(at, at + 70));
    return m ? m[1]!.length : undefined;
  };
  const skipLong = (at: number, level: number): number => {
    const close = `]${"=".repeat(level)}]`;
    const end = text.indexOf(close, at);
    if (end < 0) throw new NginxSyntaxError(startLine, "unexpected end of file in a Lua block");
    for (let k = at; k < end; k++) if (text[k] === "\n") lines++;
    return end + close.length;
  };
  let i = from;
  while (i < n) {
    const c = text[i]!;
    if (c === "\n") {
      lines++;
      i++;
    } else if (c === "-" && text[i + 1] === "-") {
      const level = longBracket(i + 2);
      if (level !== undefined) i = skipLong(i + 2, level);
      else while (i < n && text[i] !== "\n") i++;
    } else if (c === "[" && longBracket(i) !== undefined) {
      i = skipLong(i, longBracket(i)!);
    } else if (c === '"' || c === "'") {
      let j = i + 1;
      for (; j < n && text[j] !== c && text[j] !== "\n"; j++) if (text[j] === "\\") j++;
      i = j + 1;
    } else if (c === "{") {
      depth++;
      i++;
    } else if (c === "}") {
      depth--;
      if (depth === 0) return { end: i, lines };
      i++;
    } else {
      i++;
    }
  }
  throw new NginxSyntaxError(startLine, "unexpected end of file in a Lua block, expecting }");
}

/** Parses nginx configuration text (a whole nginx.conf or an included file) into directives; throws NginxSyntaxError as `nginx -t` would. */
export function parseNginxConfig(text: string): NginxDirective[] {
  const root: NginxDirective[] = [];
  const stack: NginxDirective[][] = [root];
  let current: { words: string[]; line: number } | undefined;
  for (const token of tokenizeNginx(text)) {
    const into = stack[stack.length - 1]!;
    if (token.kind === "word") {
      if (current) current.words.push(token.value);
      else current = { words: [token.value], line: token.line };
      continue;
    }
    if (token.kind === ";") {
      if (!current) throw new NginxSyntaxError(token.line, 'unexpected ";"');
      into.push({ directive: current.words[0]!, args: current.words.slice(1), line: current.line });
      current = undefined;
    } else if (token.kind === "{") {
      if (!current) throw new NginxSyntaxError(token.line, 'unexpected "{"');
      const block: NginxDirective[] = [];
      into.push({ directive: current.words[0]!, args: current.words.slice(1), line: current.line, block });
      stack.push(block);
      current = undefined;
    } else {
      if (current) throw new NginxSyntaxError(token.line, 'unexpected "}" (a directive before it lacks its ";")');
      if (stack.length === 1) throw new NginxSyntaxError(token.line, 'unexpected "}"');
      stack.pop();
    }
  }
  const lastLine = text.split("\n").length;
  if (current) throw new NginxSyntaxError(lastLine, 'unexpected end of file, expecting ";" or "}"');
  if (stack.length > 1) throw new NginxSyntaxError(lastLine, 'unexpected end of file, expecting "}"');
  return root;
}
