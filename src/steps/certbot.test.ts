import { describe, expect, it } from "vitest";
import { CertbotHost } from "../config/schema.ts";
import { certbotArgv, certbotFailureLines, certifiableNames, serverNames, skipReason } from "./certbot.ts";
import { NginxSyntaxError, parseNginxConfig } from "./nginx-config.ts";

describe("serverNames", () => {
  it("collects the server_name arguments of every server block, at the top level and inside http", () => {
    const conf = `
# a site file, as in conf.d/: server blocks at the top level
server {
    listen 80;
    server_name example.com www.example.com;
    location / { proxy_pass http://127.0.0.1:3000; }
}
server {
    listen 80;
    server_name api.example.com;
    server_name api2.example.com
                api3.example.com;   # several directives, and one spanning lines
}
http {
    upstream app { server 127.0.0.1:3000; server 127.0.0.1:3001 backup; }
    server { server_name inner.example.com; }
}
stream { server { listen 1234; } }
`;
    expect(serverNames(conf)).toEqual(["example.com", "www.example.com", "api.example.com", "api2.example.com", "api3.example.com", "inner.example.com"]);
  });

  it("skips comments, including braces and semicolons in them, and keeps # inside a word", () => {
    const conf = `
server { # the main site {
    # server_name commented.example.com;
    server_name a.example.com # trailing comment; }
        b.example.com;
    set $x a#b;
}
`;
    expect(serverNames(conf)).toEqual(["a.example.com", "b.example.com"]);
    expect(parseNginxConfig("set $x a#b;")[0]!.args).toEqual(["$x", "a#b"]);
  });

  it("unquotes single and double quotes and their escapes; ; { } inside quotes are text", () => {
    const conf = `server {
  server_name "quoted.example.com" 'single.example.com' "odd\\"name" '' "";
  return 200 "a ; { } b";
  location = /x { return 200 'it\\'s'; }
}`;
    expect(serverNames(conf)).toEqual(["quoted.example.com", "single.example.com", 'odd"name', ""]);
    const parsed = parseNginxConfig(conf)[0]!.block!;
    expect(parsed[1]).toMatchObject({ directive: "return", args: ["200", "a ; { } b"], line: 3 });
    expect(parsed[2]!.block![0]!.args).toEqual(["200", "it's"]);
  });

  it("keeps names as written and each once; the filter lowercases", () => {
    expect(serverNames("server { server_name Example.COM example.com Example.COM; }")).toEqual(["Example.COM", "example.com"]);
  });

  it("takes _, wildcards, regexes and IP addresses as names (certifiableNames skips them)", () => {
    const conf = String.raw`server { server_name _ *.example.com .example.org www.example.* ~^(?<user>.+)\.example\.net$ "~^www\d+\.example\.net$" 192.0.2.1 [2001:db8::1] localhost; }`;
    expect(serverNames(conf)).toEqual(["_", "*.example.com", ".example.org", "www.example.*", String.raw`~^(?<user>.+)\.example\.net$`, String.raw`~^www\d+\.example\.net$`, "192.0.2.1", "[2001:db8::1]", "localhost"]);
  });

  it("handles ${var}, } inside a word, and OpenResty's Lua blocks", () => {
    const conf = `server {
  server_name lua.example.com;
  set $a "\${b}c";
  content_by_lua_block {
    local t = { a = "}" } -- a comment with a quote ' and a brace }
    ngx.say([[ } ]])
  }
  return 200 $\{host}x;
}`;
    const block = parseNginxConfig(conf)[0]!.block!;
    expect(block.map((d) => d.directive)).toEqual(["server_name", "set", "content_by_lua_block", "return"]);
    expect(block[2]!.args[0]).toContain('ngx.say([[ } ]])');
    expect(block[3]!.args).toEqual(["200", "${host}x"]);
    expect(block[1]!.args).toEqual(["$a", "${b}c"]);
    expect(serverNames(conf)).toEqual(["lua.example.com"]);
  });

  it("returns nothing for a file without server blocks", () => {
    expect(serverNames("")).toEqual([]);
    expect(serverNames("# only a comment\nmap $a $b { default 1; }\n")).toEqual([]);
  });

  it.each([
    ["server { server_name a.example.com }", 1, /unexpected "}"/],
    ["server { server_name a.example.com;", 1, /end of file, expecting "}"/],
    ["server { server_name a.example.com; }\n}", 2, /unexpected "}"/],
    ['server { server_name "a.example.com; }', 1, /end of file in a quoted string/],
    ['server { server_name "a"b; }', 1, /unexpected "b" after a quoted string/],
    ["server { ; }", 1, /unexpected ";"/],
    ["\n\nserver_name a.example.com", 3, /expecting ";" or "}"/],
  ])("refuses what nginx refuses: %j", (conf, line, message) => {
    let caught: unknown;
    try {
      serverNames(conf);
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(NginxSyntaxError);
    expect((caught as NginxSyntaxError).line).toBe(line);
    expect((caught as NginxSyntaxError).message).toMatch(message);
  });
});

describe("certifiableNames", () => {
  it("keeps host names certbot can prove over HTTP-01: lowercased, deduplicated, sorted", () => {
    const { domains, skipped } = certifiableNames([
      "WWW.Example.com",
      "example.com",
      "www.example.com",
      "_",
      "",
      "*.example.com",
      ".example.org",
      "www.example.*",
      "~^www\\d+\\.example\\.net$",
      "192.0.2.1",
      "[2001:db8::1]",
      "::1",
      "localhost",
      "app.localhost",
      "intranet",
      "$hostname",
      "exa_mple.com",
      "-a.example.com",
      "a-.example.com",
      "example.com.",
      "bücher.example",
      "xn--bcher-kva.example",
      `${"a".repeat(64)}.com`,
      "a-b.example.co.uk",
    ]);
    expect(domains).toEqual(["a-b.example.co.uk", "example.com", "www.example.com", "xn--bcher-kva.example"]);
    const reasons = Object.fromEntries(skipped.map((s) => [s.name, s.reason]));
    expect(Object.keys(reasons)).toHaveLength(19);
    expect(reasons["_"]).toMatch(/catch-all/);
    expect(reasons[""]).toMatch(/empty/);
    expect(reasons["*.example.com"]).toMatch(/wildcard/);
    expect(reasons[".example.org"]).toMatch(/wildcard/);
    expect(reasons["www.example.*"]).toMatch(/wildcard/);
    expect(reasons["~^www\\d+\\.example\\.net$"]).toMatch(/regular expression/);
    expect(reasons["192.0.2.1"]).toMatch(/IP address/);
    expect(reasons["[2001:db8::1]"]).toMatch(/IP address/);
    expect(reasons["::1"]).toMatch(/IP address/);
    expect(reasons["localhost"]).toMatch(/localhost/);
    expect(reasons["app.localhost"]).toMatch(/localhost/);
    expect(reasons["intranet"]).toMatch(/no dot/);
    expect(reasons["$hostname"]).toMatch(/variable/);
    expect(reasons["example.com."]).toMatch(/trailing dot/);
    expect(reasons["bücher.example"]).toMatch(/xn--/);
    for (const name of ["exa_mple.com", "-a.example.com", "a-.example.com", `${"a".repeat(64)}.com`]) expect(reasons[name]).toMatch(/not a valid host name/);
  });

  it("accepts what the wrapper's valid_domain accepts, and the limits exactly", () => {
    expect(skipReason(`${"a".repeat(63)}.com`)).toBeUndefined();
    const long = `${Array.from({ length: 62 }, () => "abc").join(".")}.com`; // 251 characters
    expect(long.length).toBe(251);
    expect(skipReason(long)).toBeUndefined();
    expect(skipReason(`${long}xyz`)).toMatch(/253/);
    expect(skipReason("1.2.3.4")).toMatch(/IP/);
    expect(skipReason("1.2.3.x4")).toBeUndefined();
    expect(skipReason("example..com")).toMatch(/not a valid host name/);
  });
});

describe("certbotArgv", () => {
  it("is the command and exactly --cert-name <site> [--email <addr>] -d <domain>...", () => {
    const host = CertbotHost.parse({});
    expect(certbotArgv(host, "shop", ["a.example.com", "b.example.com"])).toEqual([
      "sudo",
      "-n",
      "/usr/local/sbin/deployq-certbot",
      "--cert-name",
      "shop",
      "-d",
      "a.example.com",
      "-d",
      "b.example.com",
    ]);
    expect(certbotArgv(CertbotHost.parse({ command: ["certbot-test"], email: "ops@example.com" }), "shop", ["a.example.com"])).toEqual([
      "certbot-test",
      "--cert-name",
      "shop",
      "--email",
      "ops@example.com",
      "-d",
      "a.example.com",
    ]);
  });
});

describe("certbotFailureLines", () => {
  it("keeps what went wrong and where the log is, not certbot's chatter", () => {
    // certbot 2.1's real output when the webroot is missing, between runCommand's header and exit line.
    const output = [
      "$ certbot certonly --webroot -w /nonexistent/dir --cert-name s -d x.example.com   (in /)",
      "Saving debug log to /var/log/letsencrypt/letsencrypt.log",
      "/nonexistent/dir does not exist or is not a directory",
      "Ask for help or search for solutions at https://community.letsencrypt.org. See the logfile /tmp/certbot-log-w8ycu5u7/log or re-run Certbot with -v for more details.",
      "→ exited with code 1 (812 ms)",
      "",
    ].join("\n");
    expect(certbotFailureLines(output)).toEqual(["/nonexistent/dir does not exist or is not a directory", "(certbot's log: /tmp/certbot-log-w8ycu5u7/log)"]);
  });

  it("shortens a long list, keeping its first lines and its last", () => {
    const lines = Array.from({ length: 50 }, (_, i) => `line ${i}`);
    const kept = certbotFailureLines(lines.join("\n"));
    expect(kept).toHaveLength(21);
    expect(kept[0]).toBe("line 0");
    expect(kept.at(-1)).toBe("line 49");
    expect(kept[19]).toMatch(/30 more lines/);
  });
});
