import { spawn, spawnSync } from "node:child_process";
import { chmod, copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { existsSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { REPO_ROOT } from "../helpers/processes.ts";

/**
 * The root rights deployq has (sudoers/deployq), the certbot wrapper that stands between
 * the deployq user and certbot (sudoers/deployq-certbot), and the systemd units that must
 * not take sudo away (systemd/).
 */

const SUDOERS = path.join(REPO_ROOT, "sudoers", "deployq");
const WRAPPER = path.join(REPO_ROOT, "sudoers", "deployq-certbot");
const SYSTEMD = path.join(REPO_ROOT, "systemd");
const WEBROOT = "/var/www/letsencrypt";
const SECURE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const ALLOWED = ["/usr/sbin/nginx -t", "/usr/bin/systemctl reload nginx", "/usr/local/sbin/deployq-certbot"];
/** certbot's argv for `--cert-name <site> -d <domain>...`, everything but the names fixed. */
const FIXED = ["certonly", "--webroot", "-w", WEBROOT, "--non-interactive", "--agree-tos", "--keep-until-expiring"];

interface Result {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs a program (argv, no shell) to completion. */
function run(file: string, args: string[], env: NodeJS.ProcessEnv = process.env): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { env, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (c: Buffer) => (stdout += c.toString()));
    child.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
    child.once("error", reject);
    child.once("close", (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
}

function has(command: string): boolean {
  return spawnSync("sh", ["-c", `command -v ${command}`], { stdio: "ignore" }).status === 0;
}

/**
 * The sudoers file's rules, parsed: comments and blank lines dropped, continuation lines
 * joined; every other line is a Defaults line or a user specification.
 */
function parseSudoers(text: string): { defaults: string[]; rules: Array<{ user: string; host: string; runas: string; tags: string[]; commands: string[] }>; other: string[] } {
  const lines = text
    .replace(/\\\n/g, " ")
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "" && !l.startsWith("#"));
  const defaults: string[] = [];
  const rules: Array<{ user: string; host: string; runas: string; tags: string[]; commands: string[] }> = [];
  const other: string[] = [];
  for (const line of lines) {
    if (/^Defaults\b/.test(line)) {
      defaults.push(line);
      continue;
    }
    const m = /^(\S+)\s+(\S+)\s*=\s*\(([^)]*)\)\s*((?:[A-Z_]+:\s*)*)(.+)$/.exec(line);
    if (!m) {
      other.push(line);
      continue;
    }
    rules.push({
      user: m[1]!,
      host: m[2]!,
      runas: m[3]!.trim(),
      tags: m[4]!.split(":").map((t) => t.trim()).filter(Boolean),
      commands: m[5]!.split(",").map((c) => c.trim().replace(/\s+/g, " ")),
    });
  }
  return { defaults, rules, other };
}

describe("sudoers/deployq: exactly three root commands", () => {
  it("passes visudo -cf", async () => {
    expect(has("visudo"), "visudo is missing: apt-get install sudo").toBe(true);
    const r = await run("visudo", ["-cf", SUDOERS]);
    expect(r.stderr).toBe("");
    expect(r.stdout).toMatch(/parsed OK/);
    expect(r.code).toBe(0);
  });

  it("grants the deployq user nginx -t, systemctl reload nginx and the certbot wrapper, as root, and nothing else", async () => {
    const { defaults, rules, other } = parseSudoers(await readFile(SUDOERS, "utf8"));
    // No aliases, includes or anything else that could widen the rules below.
    expect(other).toEqual([]);
    expect(rules.map((r) => r.commands).flat().sort()).toEqual([...ALLOWED].sort());
    for (const rule of rules) {
      expect(rule).toMatchObject({ user: "deployq", host: "ALL", runas: "root", tags: ["NOPASSWD"] });
      expect(rule.commands).toHaveLength(1);
    }
    // The caller chooses neither PATH (the wrapper finds certbot through it) nor the environment.
    expect(defaults).toContain(`Defaults:deployq secure_path="${SECURE_PATH}"`);
    expect(defaults).toContain("Defaults:deployq env_reset");
    expect(defaults.join("\n")).not.toMatch(/setenv|env_keep|!env_reset|exempt_group|!secure_path/);
  });

  it("says the same through sudo's own parser (cvtsudoers)", async () => {
    expect(has("cvtsudoers"), "cvtsudoers comes with Debian's sudo package: apt-get install sudo (.ci/run does)").toBe(true);
    const r = await run("cvtsudoers", ["-f", "json", SUDOERS]);
    expect(r.code).toBe(0);
    interface Spec {
      User_List: Array<Record<string, string>>;
      Host_List: Array<Record<string, string>>;
      Cmnd_Specs: Array<{ runasusers?: Array<Record<string, string>>; runasgroups?: unknown; Options?: Array<Record<string, unknown>>; Commands: Array<Record<string, string>> }>;
    }
    const json = JSON.parse(r.stdout) as { User_Specs: Spec[]; [k: string]: unknown };
    expect(Object.keys(json).sort()).toEqual(["Defaults", "User_Specs"]);
    const commands: string[] = [];
    for (const spec of json.User_Specs) {
      expect(spec.User_List).toEqual([{ username: "deployq" }]);
      expect(spec.Host_List).toEqual([{ hostname: "ALL" }]);
      for (const c of spec.Cmnd_Specs) {
        expect(c.runasusers).toEqual([{ username: "root" }]);
        expect(c.runasgroups).toBeUndefined();
        expect(c.Options).toEqual([{ authenticate: false }]);
        for (const cmd of c.Commands) {
          expect(Object.keys(cmd)).toEqual(["command"]);
          commands.push(cmd.command!);
        }
      }
    }
    expect(commands.sort()).toEqual([...ALLOWED].sort());
  });
});

describe("sudoers/deployq-certbot: only --cert-name <site> -d <domain>... reaches certbot", () => {
  let dir: string;
  let argvFile: string;
  let envFile: string;
  let env: NodeJS.ProcessEnv;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "deployq-certbot-"));
    argvFile = path.join(dir, "argv");
    envFile = path.join(dir, "env");
    // A fake certbot, first in PATH, that records its argv (NUL-separated) and environment.
    // The wrapper passes it no environment but PATH, so the paths are written into it.
    await mkdir(path.join(dir, "bin"));
    await writeFile(path.join(dir, "bin", "certbot"), `#!/bin/sh\nprintf '%s\\0' "$@" >'${argvFile}'\nenv >'${envFile}'\n`);
    await chmod(path.join(dir, "bin", "certbot"), 0o755);
    env = {
      PATH: `${path.join(dir, "bin")}:${process.env.PATH ?? "/usr/bin:/bin"}`,
      // What a hostile caller might try; none of it may reach certbot.
      PYTHONPATH: "/nonexistent/evil",
      REQUESTS_CA_BUNDLE: "/nonexistent/evil.pem",
      CERTBOT_DEPLOY_HOOK: "id",
      BASH_ENV: path.join(dir, "bash_env"),
      SHELLOPTS: "xtrace",
    };
    await writeFile(path.join(dir, "bash_env"), `echo BASH_ENV was read >&2\n`);
  });
  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  async function wrapper(args: string[]): Promise<Result & { argv: string[] | undefined }> {
    await rm(argvFile, { force: true });
    await rm(envFile, { force: true });
    const r = await run(WRAPPER, args, env);
    const argv = existsSync(argvFile) ? (await readFile(argvFile, "utf8")).split("\0").slice(0, -1) : undefined;
    return { ...r, argv };
  }

  const valid = ["--cert-name", "api", "-d", "example.com"];
  const refused: Array<[string, string[]]> = [
    // certbot flags that run commands as root, or read/write where the caller says
    ...["--deploy-hook", "--pre-hook", "--post-hook", "--manual-auth-hook", "--manual-cleanup-hook", "--renew-hook"].map(
      (flag): [string, string[]] => [flag, [...valid, flag, "touch /tmp/pwned"]],
    ),
    ...["--config-dir", "--work-dir", "--logs-dir", "--config", "-c", "--webroot-path", "-w"].map((flag): [string, string[]] => [flag, [...valid, flag, "/tmp/evil"]]),
    ["--server", [...valid, "--server", "https://evil.example/dir"]],
    ["--deploy-hook first", ["--deploy-hook", "id", ...valid]],
    ["--flag=value form", [...valid, "--deploy-hook=id"]],
    ["--cert-name=value form", ["--cert-name=api", "-d", "example.com"]],
    ["an extra positional argument", [...valid, "extra"]],
    ["a subcommand", ["renew", ...valid]],
    ["--", [...valid, "--", "--deploy-hook", "id"]],
    ["-d without a value", [...valid, "-d"]],
    ["no arguments", []],
    ["missing --cert-name", ["-d", "example.com"]],
    ["missing -d", ["--cert-name", "api"]],
    ["--cert-name twice", [...valid, "--cert-name", "other"]],
    ["--email twice", [...valid, "--email", "a@example.com", "--email", "b@example.com"]],
    // site names
    ...["a b", "a;b", "$(id)", "`id`", "a'b", 'a"b', "a\nb", "-api", "--deploy-hook", "", "../etc", "a/b", "x".repeat(64), "a$b", "a|b", "a&b", "a>b"].map(
      (name): [string, string[]] => [`site ${JSON.stringify(name)}`, ["--cert-name", name, "-d", "example.com"]],
    ),
    // domains
    ...[
      "a b.com",
      "example.com;id",
      "$(id).example.com",
      "`id`.example.com",
      "'x'.example.com",
      '"x".example.com',
      "example.com\n--deploy-hook=id",
      "-example.com",
      "--deploy-hook",
      "*.example.com",
      "Example.com",
      "localhost",
      "example..com",
      ".example.com",
      "example.com.",
      "exa_mple.com",
      "-a.example.com",
      "a-.example.com",
      "1.2.3.4",
      `${"a".repeat(64)}.com`,
      `${Array.from({ length: 64 }, () => "abc").join(".")}.com`, // 259 characters
      "",
    ].map((domain): [string, string[]] => [`domain ${JSON.stringify(domain)}`, ["--cert-name", "api", "-d", domain]]),
    // emails
    ...["a b@example.com", "x@y", "$(id)@example.com", "-x@example.com", "a@b@example.com", "a;b@example.com", "@example.com"].map(
      (email): [string, string[]] => [`email ${JSON.stringify(email)}`, [...valid, "--email", email]],
    ),
  ];

  it.each(refused)("refuses %s: exit 64, a message, certbot not run", async (_what, args) => {
    const r = await wrapper(args);
    expect(r.argv).toBeUndefined();
    expect(r.code).toBe(64);
    expect(r.stderr).toMatch(/^deployq-certbot: .+\nusage: deployq-certbot --cert-name <site> -d <domain>/);
    expect(r.stderr).not.toMatch(/BASH_ENV was read/);
    expect(r.stdout).toBe("");
  });

  it("runs certbot with exactly the fixed argv and a clean environment", async () => {
    // The webroot is created (root-owned) at the first run; without root it must exist.
    expect(process.getuid?.() === 0 || existsSync(WEBROOT), `run the tests as root, or create ${WEBROOT} root-owned`).toBe(true);
    const r = await wrapper(["--cert-name", "api", "-d", "example.com", "-d", "www.example.com"]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.argv).toEqual([...FIXED, "--cert-name", "api", "-d", "example.com", "-d", "www.example.com"]);

    const withEmail = await wrapper(["-d", "a-b.example.co.uk", "--email", "Ops+certs@Example.com", "--cert-name", "Site_1.x"]);
    expect(withEmail.code).toBe(0);
    expect(withEmail.argv).toEqual([...FIXED, "--cert-name", "Site_1.x", "--email", "Ops+certs@Example.com", "-d", "a-b.example.co.uk"]);

    // Only PATH (how certbot was found), HOME=/root and LANG reach certbot (sh adds PWD).
    const certbotEnv = Object.fromEntries(
      (await readFile(envFile, "utf8"))
        .split("\n")
        .filter(Boolean)
        .map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]),
    );
    expect(Object.keys(certbotEnv).sort()).toEqual(["HOME", "LANG", "PATH", "PWD"]);
    expect(certbotEnv).toMatchObject({ HOME: "/root", PATH: env.PATH, PWD: "/" });
  });

  it("takes up to 100 domains", async () => {
    expect(process.getuid?.() === 0 || existsSync(WEBROOT), `run the tests as root, or create ${WEBROOT} root-owned`).toBe(true);
    const domains = Array.from({ length: 100 }, (_, i) => `d${i}.example.com`);
    const ok = await wrapper(["--cert-name", "many", ...domains.flatMap((d) => ["-d", d])]);
    expect(ok.code).toBe(0);
    expect(ok.argv?.filter((a) => a === "-d")).toHaveLength(100);
    const tooMany = await wrapper(["--cert-name", "many", ...[...domains, "d100.example.com"].flatMap((d) => ["-d", d])]);
    expect(tooMany.code).toBe(64);
    expect(tooMany.argv).toBeUndefined();
  });
});

/**
 * The shipped sudoers file and wrapper, end to end through the real sudo, as a `deployq`
 * user: in a private mount namespace (unshare -m), where /etc/passwd, /etc/group,
 * /etc/shadow and /etc/sudoers.d are replaced by copies that add the user and hold only
 * sudoers/deployq, /usr/local/sbin holds the wrapper, /usr/local/bin a fake certbot (so it
 * is found through secure_path), /var is an empty tmpfs and / is read-only (as under the
 * unit's ProtectSystem=strict). Nothing of it is visible outside the namespace.
 */
const SETUP = String.raw`
set -euo pipefail
repo=$1 scratch=$2 webroot=$3
shift 3
t=$scratch/ns
rm -rf "$t" "$scratch/argv" "$scratch/env"
mkdir -p "$t"
chmod 0755 "$t"
cp /etc/passwd /etc/group /etc/shadow "$t/"
if ! getent passwd deployq >/dev/null; then
  uid=64990
  while getent passwd "$uid" >/dev/null || getent group "$uid" >/dev/null; do uid=$((uid + 1)); done
  echo "deployq:x:$uid:$uid:deployq:/var/lib/deployq:/usr/sbin/nologin" >>"$t/passwd"
  echo "deployq:x:$uid:" >>"$t/group"
  echo "deployq:!:19000::::::" >>"$t/shadow"
fi
for f in passwd group shadow; do mount --bind "$t/$f" "/etc/$f"; done
mkdir -m 0755 "$t/sudoers.d" "$t/sbin" "$t/bin"
install -m 0440 "$repo/sudoers/deployq" "$t/sudoers.d/deployq"
mount --bind "$t/sudoers.d" /etc/sudoers.d
install -m 0755 "$repo/sudoers/deployq-certbot" "$t/sbin/deployq-certbot"
mount --bind "$t/sbin" /usr/local/sbin
printf '#!/bin/sh\nprintf "%%s\\0" "$@" >%s/argv\nenv >%s/env\n' "$scratch" "$scratch" >"$t/bin/certbot"
chmod 0755 "$t/bin/certbot"
mount --bind "$t/bin" /usr/local/bin
mount -t tmpfs -o mode=0755 tmpfs /var
case $webroot in
  fresh) ;;
  group-writable) mkdir -m 0775 /var/www ;;
  deployq-owned) mkdir /var/www && chown deployq /var/www ;;
  symlink) mkdir /var/www /var/elsewhere && ln -s /var/elsewhere /var/www/letsencrypt ;;
esac
mount --bind "$scratch" "$scratch"
mount -o remount,bind,ro /
exec setpriv --reuid=deployq --regid=deployq --clear-groups "$@"
`;

function canUseNamespaces(): boolean {
  if (process.getuid?.() !== 0) return false;
  if (!has("unshare") || !has("setpriv") || !has("sudo")) return false;
  return spawnSync("unshare", ["-m", "sh", "-c", "mount -t tmpfs tmpfs /mnt && umount /mnt"], { stdio: "ignore" }).status === 0;
}

describe("through sudo, as the deployq user (private mount namespace; needs root and unshare)", () => {
  let scratch: string;

  beforeAll(async () => {
    expect(canUseNamespaces(), "these tests need root and unshare (util-linux), as in CI").toBe(true);
    scratch = await mkdtemp(path.join(tmpdir(), "deployq-sudo-"));
    await chmod(scratch, 0o755);
  });
  afterAll(async () => {
    if (scratch) await rm(scratch, { recursive: true, force: true });
  });

  async function asDeployq(argv: string[], webroot = "fresh", callerEnv: Record<string, string> = {}): Promise<Result & { argv: string[] | undefined; env: string | undefined }> {
    const r = await run("unshare", ["-m", "bash", "-c", SETUP, "setup", REPO_ROOT, scratch, webroot, "env", ...Object.entries(callerEnv).map(([k, v]) => `${k}=${v}`), ...argv], {
      PATH: process.env.PATH,
      LANG: "C",
    });
    const argvFile = path.join(scratch, "argv");
    const envFile = path.join(scratch, "env");
    return {
      ...r,
      argv: existsSync(argvFile) ? (await readFile(argvFile, "utf8")).split("\0").slice(0, -1) : undefined,
      env: existsSync(envFile) ? await readFile(envFile, "utf8") : undefined,
    };
  }

  it("sudo -l lists exactly the three commands", async () => {
    const r = await asDeployq(["sudo", "-n", "-l"]);
    expect(r.code).toBe(0);
    const listed = r.stdout
      .split("\n")
      .filter((l) => /^\s+\(/.test(l))
      .map((l) => l.trim());
    expect(listed.sort()).toEqual(ALLOWED.map((c) => `(root) NOPASSWD: ${c}`).sort());
  });

  it("runs the wrapper as root; certbot comes from secure_path, with none of the caller's environment", async () => {
    const r = await asDeployq(["sudo", "-n", "/usr/local/sbin/deployq-certbot", "--cert-name", "api", "-d", "example.com"], "fresh", {
      PATH: "/nonexistent:/usr/bin:/bin",
      PYTHONPATH: "/nonexistent/evil",
      REQUESTS_CA_BUNDLE: "/nonexistent/evil.pem",
    });
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.argv).toEqual([...FIXED, "--cert-name", "api", "-d", "example.com"]);
    expect(r.env).toContain(`PATH=${SECURE_PATH}\n`);
    expect(r.env).toContain("HOME=/root\n");
    expect(r.env).not.toMatch(/PYTHONPATH|REQUESTS_CA_BUNDLE|SUDO_/);
  });

  it("refuses the wrapper's forbidden flags through sudo too", async () => {
    const r = await asDeployq(["sudo", "-n", "/usr/local/sbin/deployq-certbot", "--cert-name", "api", "-d", "example.com", "--deploy-hook", "id"]);
    expect(r.code).toBe(64);
    expect(r.stderr).toMatch(/refused argument --deploy-hook/);
    expect(r.argv).toBeUndefined();
  });

  it("refuses every other command, other arguments, another target user and -E", async () => {
    const denied: string[][] = [
      ["sudo", "-n", "/usr/bin/systemctl", "restart", "nginx"],
      ["sudo", "-n", "/usr/bin/systemctl", "reload", "nginx.service"],
      ["sudo", "-n", "/usr/bin/systemctl", "reload", "nginx", "ssh"],
      ["sudo", "-n", "/usr/bin/systemctl", "reload"],
      ["sudo", "-n", "/usr/local/bin/certbot", "renew"],
      ["sudo", "-n", "/bin/sh", "-c", "id"],
      ["sudo", "-n", "-u", "nobody", "/usr/local/sbin/deployq-certbot", "--cert-name", "api", "-d", "example.com"],
      ["sudo", "-n", "-E", "/usr/local/sbin/deployq-certbot", "--cert-name", "api", "-d", "example.com"],
      ["sudo", "-n", "PATH=/tmp", "/usr/local/sbin/deployq-certbot", "--cert-name", "api", "-d", "example.com"],
    ];
    for (const argv of denied) {
      const r = await asDeployq(argv);
      expect(r.code, `${argv.join(" ")}\n${r.stderr}`).toBe(1);
      expect(r.stderr, argv.join(" ")).toMatch(/a password is required|not allowed|may not run/);
      expect(r.argv, argv.join(" ")).toBeUndefined();
    }
    if (existsSync("/usr/sbin/nginx")) {
      // `sudo -l <command>` checks without running: a command that is not allowed exits 1 and is not listed.
      for (const argv of [["/usr/sbin/nginx", "-T"], ["/usr/sbin/nginx", "-t", "-c", "/tmp/x.conf"], ["/usr/sbin/nginx", "-t", "-g", "daemon off;"]]) {
        const r = await asDeployq(["sudo", "-n", "-l", ...argv]);
        expect(r.code, `sudo -l ${argv.join(" ")}\n${r.stdout}${r.stderr}`).toBe(1);
        expect(r.stdout, argv.join(" ")).toBe("");
      }
    }
    // ... while the allowed ones are allowed (sudo -l <command> checks without running it).
    const reload = await asDeployq(["sudo", "-n", "-l", "/usr/bin/systemctl", "reload", "nginx"]);
    expect(reload.code).toBe(0);
    expect(reload.stdout.trim()).toBe("/usr/bin/systemctl reload nginx");
    if (existsSync("/usr/sbin/nginx")) {
      const test = await asDeployq(["sudo", "-n", "-l", "/usr/sbin/nginx", "-t"]);
      expect(test.code).toBe(0);
    }
  });

  it("cannot work with NoNewPrivileges: why deployq.service must not set it", async () => {
    const r = await asDeployq(["setpriv", "--no-new-privs", "sudo", "-n", "/usr/local/sbin/deployq-certbot", "--cert-name", "api", "-d", "example.com"]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/no new privileges/i);
    expect(r.argv).toBeUndefined();
  });

  it.each(["group-writable", "deployq-owned", "symlink"])("refuses a webroot that is not root's alone (%s): exit 78, certbot not run", async (webroot) => {
    const r = await asDeployq(["sudo", "-n", "/usr/local/sbin/deployq-certbot", "--cert-name", "api", "-d", "example.com"], webroot);
    expect(r.code).toBe(78);
    expect(r.stderr).toMatch(/deployq-certbot: .*\/var\/www.*\n.*must be a directory owned by root/);
    expect(r.argv).toBeUndefined();
  });
});

describe("systemd units", () => {
  /** [Service] settings of a unit: key → every value assigned, in order. */
  async function serviceSettings(unit: string): Promise<Map<string, string[]>> {
    const settings = new Map<string, string[]>();
    let section = "";
    for (const raw of (await readFile(path.join(SYSTEMD, unit), "utf8")).split("\n")) {
      const line = raw.trim();
      if (line === "" || line.startsWith("#") || line.startsWith(";")) continue;
      if (line.startsWith("[")) {
        section = line;
        continue;
      }
      if (section !== "[Service]") continue;
      const eq = line.indexOf("=");
      const key = line.slice(0, eq);
      settings.set(key, [...(settings.get(key) ?? []), line.slice(eq + 1)]);
    }
    return settings;
  }

  it("deployq.service runs pm2-runtime as deployq, sandboxed, without anything that takes sudo away", async () => {
    const s = await serviceSettings("deployq.service");
    const last = (key: string) => s.get(key)?.at(-1);
    expect(last("User")).toBe("deployq");
    expect(last("WorkingDirectory")).toBe("/opt/deployq");
    expect(last("ExecStart")).toMatch(/^\/opt\/deployq\/node_modules\/\.bin\/pm2-runtime (start )?ecosystem\.config\.cjs --env production$/);
    expect(s.get("Environment")).toEqual(
      expect.arrayContaining(["NODE_ENV=production", "PM2_HOME=/var/lib/deployq/pm2", "DEPLOYQ_CONFIG=/etc/deployq/deployq.toml", "DEPLOYQ_ENV_FILE=/etc/deployq/env"]),
    );
    // Not in pm2-runtime's environment: pm2 hands it to every cluster-mode app (test/integration/pm2-secrets.test.ts).
    expect(s.get("EnvironmentFile")).toBeUndefined();
    expect(last("KillMode")).toBe("mixed");
    expect(last("Restart")).toBe("on-failure");
    // Longer than pm2's kill_timeout (40 s by default) for both apps.
    expect(Number.parseInt(last("TimeoutStopSec") ?? "0", 10)).toBeGreaterThan(80);
    expect(last("ProtectSystem")).toBe("strict");
    const writable = (s.get("ReadWritePaths") ?? []).flatMap((v) => v.split(/\s+/)).map((p) => p.replace(/^-/, ""));
    expect(writable).toEqual(expect.arrayContaining(["/var/www", "/etc/letsencrypt", "/var/lib/letsencrypt", "/var/log/letsencrypt", "/etc/nginx/conf.d"]));
    expect(last("StateDirectory")).toBe("deployq"); // /var/lib/deployq: data, queues, PM2_HOME

    // systemd.exec(5): these imply NoNewPrivileges=yes for a service with User=, and sudo
    // cannot gain root under NoNewPrivileges (see the namespace test above); PrivateUsers=
    // and CapabilityBoundingSet= would take root's rights from sudo's children.
    expect(["no", "false", "off", "0", undefined]).toContain(last("NoNewPrivileges")?.toLowerCase());
    for (const key of [
      "DynamicUser",
      "LockPersonality",
      "MemoryDenyWriteExecute",
      "PrivateDevices",
      "ProtectClock",
      "ProtectHostname",
      "ProtectKernelLogs",
      "ProtectKernelModules",
      "ProtectKernelTunables",
      "RestrictAddressFamilies",
      "RestrictNamespaces",
      "RestrictRealtime",
      "RestrictSUIDSGID",
      "SystemCallArchitectures",
      "SystemCallFilter",
      "SystemCallLog",
      "PrivateUsers",
      "CapabilityBoundingSet",
    ]) {
      expect(s.has(key), `${key}= must not be set in deployq.service`).toBe(false);
    }
  });

  it("dragonfly.service runs /usr/local/bin/dragonfly as dragonfly on 127.0.0.1:6379", async () => {
    const s = await serviceSettings("dragonfly.service");
    expect(s.get("User")).toEqual(["dragonfly"]);
    expect(s.get("ExecStart")?.[0]).toMatch(/^\/usr\/local\/bin\/dragonfly .*--bind 127\.0\.0\.1 --port 6379 --dir \/var\/lib\/dragonfly$/);
    expect(s.get("NoNewPrivileges")).toEqual(["yes"]);
    expect(s.get("ProtectSystem")).toEqual(["strict"]);
    expect(s.get("StateDirectory")).toEqual(["dragonfly"]);
  });

  describe("systemd/verify.sh (systemd-analyze verify)", () => {
    let dir: string;
    beforeAll(async () => {
      expect(has("systemd-analyze"), "systemd-analyze comes with Debian's systemd package (.ci/run installs it)").toBe(true);
      dir = await mkdtemp(path.join(tmpdir(), "deployq-units-"));
    });
    afterAll(async () => {
      if (dir) await rm(dir, { recursive: true, force: true });
    });

    it("passes on the units as shipped", async () => {
      const r = await run(path.join(SYSTEMD, "verify.sh"), []);
      expect(r.stderr).toBe("");
      expect(r.stdout).toMatch(/^ok: deployq\.service dragonfly\.service pass systemd-analyze verify/);
      expect(r.code).toBe(0);
    });

    it.each([
      ["NoNewPrivileges=yes", /NoNewPrivileges=yes breaks sudo/],
      ["SystemCallFilter=@system-service", /SystemCallFilter= must not be set/],
      ["ProtectKernelTunables=yes", /ProtectKernelTunables= must not be set/],
      ["KillMod=mixed", /Unknown key 'KillMod'/],
      ["TimeoutStopSec=two minutes", /Failed to parse time value/],
      ["ReadWritePaths=relative/path", /path is not absolute/],
      ["Requires=no-such-unit.service", /no-such-unit\.service not found/],
    ])("fails when deployq.service gets %s", async (line, message) => {
      const copy = path.join(dir, line.replace(/\W+/g, "_"));
      await mkdir(copy);
      for (const f of ["verify.sh", "deployq.service", "dragonfly.service"]) await copyFile(path.join(SYSTEMD, f), path.join(copy, f));
      await chmod(path.join(copy, "verify.sh"), 0o755);
      const unit = await readFile(path.join(copy, "deployq.service"), "utf8");
      const section = line.startsWith("Requires=") ? "[Unit]" : "[Service]";
      await writeFile(path.join(copy, "deployq.service"), unit.replace(new RegExp(`^\\${section.slice(0, -1)}\\]\n`, "m"), `${section}\n${line}\n`));
      const r = await run(path.join(copy, "verify.sh"), []);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(message);
    });
  });
});
