import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { Writable } from "node:stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CertbotHost } from "../../src/config/schema.ts";
import { DeployqError, TransientError } from "../../src/errors.ts";
import { ExecError } from "../../src/exec/exec-error.ts";
import { createLocalLocks } from "../../src/lock/local-lock.ts";
import { NGINX_LOCK } from "../../src/lock/lock.ts";
import { checkCertbot, ensureCertificate, readCertificateState, serverNames } from "../../src/steps/certbot.ts";
import type { CommandContext } from "../../src/steps/command-context.ts";
import { type CertbotDirs, type Pebble, certbotDirs, certificateNames, readRecordedCalls, recordingCommand, startPebble } from "../helpers/pebble.ts";
import { REPO_ROOT, spawnTracked } from "../helpers/processes.ts";
import { until } from "../helpers/wait.ts";

/**
 * The certbot step against the real certbot and a real ACME server (pebble): certificates
 * obtained, kept, reissued under the same --cert-name, serialized under deployq:nginx, and
 * certbot's "Another instance of Certbot is already running" (its own lock, held here as
 * the renewal timer would hold it) retried.
 */

const EMAIL = "ops@example.com";

/** A deploy log that keeps its text. */
function logSink(): { log: Writable; text: () => string } {
  let text = "";
  const log = new Writable({
    write(chunk: Buffer | string, _encoding, callback) {
      text += chunk.toString();
      callback();
    },
  });
  return { log, text: () => text };
}

/** Holds certbot's own lock on `dir` (fcntl lockf on <dir>/.certbot.lock, as a running certbot does) until stopped. */
async function holdCertbotLock(dir: string): Promise<{ release: () => Promise<void> }> {
  const holder = spawnTracked("python3", [
    "-c",
    "import fcntl, signal, sys\nf = open(sys.argv[1], 'a')\nfcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\nprint('locked', flush=True)\nsignal.pause()\n",
    path.join(dir, ".certbot.lock"),
  ]);
  await holder.waitFor("locked", 10_000);
  return {
    async release() {
      holder.child.kill("SIGTERM");
      await holder.exited;
    },
  };
}

describe("certbot step against pebble", () => {
  let pebble: Pebble;
  let root: string;
  let dirs: CertbotDirs;
  let stateDir: string;
  let records: string;
  let prefix: string[];
  let certbot: CertbotHost;

  beforeAll(async () => {
    pebble = await startPebble();
    root = await mkdtemp(path.join(tmpdir(), "deployq-certbot-step-"));
    dirs = certbotDirs(path.join(root, "certbot"));
    prefix = pebble.certbotCommand(path.join(root, "certbot"));
    stateDir = path.join(root, "data", "certificates");
    records = path.join(root, "calls.jsonl");
    certbot = CertbotHost.parse({ command: recordingCommand(records, prefix), email: EMAIL, webroot: dirs.webroot });
  });
  afterAll(async () => {
    await pebble?.stop();
    if (root) await rm(root, { recursive: true, force: true });
  });

  const ctxWith = (log: Writable, signal?: AbortSignal): CommandContext => ({ log, timeoutMs: 120_000, ...(signal ? { signal } : {}) });
  const calls = () => readRecordedCalls(records);
  const live = (site: string) => path.join(dirs.configDir, "live", site, "cert.pem");

  const SHOP = `
# shop: the site file a release ships in nginx/sites/shop.conf
server {
    listen 80;
    server_name _ Example.com "www.example.com" *.example.com 192.0.2.10 localhost; # not all certifiable
    location /.well-known/acme-challenge/ { root /var/www/letsencrypt; }
    location / { return 301 https://$host$request_uri; }
}
server {
    listen 443 ssl;
    server_name example.com www.example.com;
    ssl_certificate /etc/letsencrypt/live/shop/fullchain.pem;
    ssl_certificate_key /etc/letsencrypt/live/shop/privkey.pem;
}
`;

  it("obtains a certificate for the site's server names, through exactly the wrapper's arguments", async () => {
    const { log, text } = logSink();
    const outcome = await ensureCertificate({ site: "shop", names: serverNames(SHOP), certbot, stateDir }, ctxWith(log));
    expect(outcome).toBe("obtained");
    expect(await certificateNames(live("shop"))).toEqual(["example.com", "www.example.com"]);

    const made = await calls();
    expect(made).toHaveLength(1);
    expect(made[0]!.argv.slice(prefix.length)).toEqual(["--cert-name", "shop", "--email", EMAIL, "-d", "example.com", "-d", "www.example.com"]);
    expect(made[0]!.code).toBe(0);
    expect((await readCertificateState(stateDir, "shop"))?.domains).toEqual(["example.com", "www.example.com"]);

    expect(text()).toMatch(/skipping "_": the catch-all placeholder/);
    expect(text()).toMatch(/skipping "\*\.example\.com": a wildcard/);
    expect(text()).toMatch(/skipping "192\.0\.2\.10": an IP address/);
    expect(text()).toMatch(/skipping "localhost": a localhost name/);
    expect(text()).toMatch(/Successfully received certificate/); // certbot's own output is in the deploy log
  });

  it("does nothing when the domain list is unchanged (certbot not run, certificate untouched)", async () => {
    const before = await stat(live("shop"));
    const bytes = await readFile(live("shop"));
    const { log, text } = logSink();
    // The same names in another order, case and repetition.
    const outcome = await ensureCertificate({ site: "shop", names: ["WWW.example.com", "example.com", "www.example.com", "_"], certbot, stateDir }, ctxWith(log));
    expect(outcome).toBe("unchanged");
    expect(await calls()).toHaveLength(1);
    expect(await readFile(live("shop"))).toEqual(bytes);
    expect((await stat(live("shop"))).mtimeMs).toBe(before.mtimeMs);
    expect(text()).toMatch(/certificate shop: unchanged \(example\.com www\.example\.com\)/);
  });

  it("adding a name reissues the same --cert-name (one lineage, new SAN list); removing one does too", async () => {
    const { log, text } = logSink();
    const outcome = await ensureCertificate({ site: "shop", names: ["example.com", "www.example.com", "shop.example.com"], certbot, stateDir }, ctxWith(log));
    expect(outcome).toBe("obtained");
    expect(await certificateNames(live("shop"))).toEqual(["example.com", "shop.example.com", "www.example.com"]);
    // certbot --non-interactive answers its "You are updating certificate shop to include new
    // domain(s)" question with its default (yes): the same lineage, renewed with the new list.
    expect(text()).toMatch(/Renewing an existing certificate for example\.com and 2 more domains/);
    expect(await readdir(path.join(dirs.configDir, "live"))).toEqual(["README", "shop"]);
    expect(await readdir(path.join(dirs.configDir, "renewal"))).toEqual(["shop.conf"]);
    expect((await readdir(path.join(dirs.configDir, "archive", "shop"))).filter((f) => f.startsWith("cert"))).toEqual(["cert1.pem", "cert2.pem"]);
    expect((await calls()).at(-1)!.argv.slice(prefix.length)).toEqual(["--cert-name", "shop", "--email", EMAIL, "-d", "example.com", "-d", "shop.example.com", "-d", "www.example.com"]);

    expect(await ensureCertificate({ site: "shop", names: ["shop.example.com"], certbot, stateDir }, ctxWith(logSink().log))).toBe("obtained");
    expect(await certificateNames(live("shop"))).toEqual(["shop.example.com"]);
    expect(await readdir(path.join(dirs.configDir, "live"))).toEqual(["README", "shop"]);
    expect((await readCertificateState(stateDir, "shop"))?.domains).toEqual(["shop.example.com"]);
  });

  it("runs nothing for a site without a certifiable name", async () => {
    const before = (await calls()).length;
    const { log, text } = logSink();
    expect(await ensureCertificate({ site: "internal", names: serverNames("server { server_name _ localhost 10.0.0.1 intranet; }"), certbot, stateDir }, ctxWith(log))).toBe("none");
    expect(await calls()).toHaveLength(before);
    expect(text()).toMatch(/no server name certbot can prove over HTTP-01/);
    expect(existsSync(path.join(stateDir, "internal.json"))).toBe(false);
  });

  it("refuses a site name the wrapper would refuse, before running anything", async () => {
    const before = (await calls()).length;
    await expect(ensureCertificate({ site: "../etc", names: ["example.com"], certbot, stateDir }, ctxWith(logSink().log))).rejects.toThrow(/not a site name/);
    expect(await calls()).toHaveLength(before);
  });

  it("two sites at once under the deployq:nginx lock: certbot runs one at a time", async () => {
    const locks = createLocalLocks();
    const before = (await calls()).length;
    const run = (site: string, names: string[]) => locks.using(NGINX_LOCK, (signal) => ensureCertificate({ site, names, certbot, stateDir }, ctxWith(logSink().log, signal)));
    const outcomes = await Promise.all([run("blog", ["blog.example.com"]), run("docs", ["docs.example.com", "api.example.com"])]);
    expect(outcomes).toEqual(["obtained", "obtained"]);
    const made = (await calls()).slice(before);
    expect(made).toHaveLength(2);
    expect(made.map((c) => c.code)).toEqual([0, 0]);
    expect(made[1]!.start).toBeGreaterThanOrEqual(made[0]!.end!);
    expect(await certificateNames(live("blog"))).toEqual(["blog.example.com"]);
    expect(await certificateNames(live("docs"))).toEqual(["api.example.com", "docs.example.com"]);
    await locks.close();
  });

  it('retries "Another instance of Certbot is already running" with backoff, then succeeds', async () => {
    const before = (await calls()).length;
    const lock = await holdCertbotLock(dirs.configDir);
    const { log, text } = logSink();
    let released = false;
    try {
      const pending = ensureCertificate({ site: "busy", names: ["busy.example.com"], certbot, stateDir, retry: { attempts: 10, delayMs: 100, maxDelayMs: 400 } }, ctxWith(log));
      // The renewal timer's certbot goes away once ours has been turned away at least once.
      await until("a certbot run turned away by the lock", async () => (await calls()).slice(before).some((c) => c.code === 1));
      await lock.release();
      released = true;
      expect(await pending).toBe("obtained");
    } finally {
      if (!released) await lock.release();
    }
    const made = (await calls()).slice(before);
    expect(made.length).toBeGreaterThanOrEqual(2);
    expect(made.at(-1)!.code).toBe(0);
    expect(made.slice(0, -1).every((c) => c.code === 1)).toBe(true);
    expect(text()).toMatch(/Another instance of Certbot is already running\./);
    expect(text()).toMatch(/another certbot is running \(attempt 1 of 10\); trying again in 100 ms/);
    expect(await certificateNames(live("busy"))).toEqual(["busy.example.com"]);
  });

  it("gives up after the last attempt with a TransientError while the other certbot stays", async () => {
    const before = (await calls()).length;
    const lock = await holdCertbotLock(dirs.configDir);
    try {
      const err = await ensureCertificate({ site: "stuck", names: ["stuck.example.com"], certbot, stateDir, retry: { attempts: 3, delayMs: 50 } }, ctxWith(logSink().log)).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(TransientError);
      expect((err as Error).message).toMatch(/another certbot was still running after 3 attempts/);
    } finally {
      await lock.release();
    }
    const made = (await calls()).slice(before);
    expect(made.map((c) => c.code)).toEqual([1, 1, 1]);
    expect(await readCertificateState(stateDir, "stuck")).toBeUndefined();
  });

  it("stops waiting for the other certbot when the deploy is cancelled", async () => {
    const before = (await calls()).length;
    const lock = await holdCertbotLock(dirs.configDir);
    try {
      const abort = new AbortController();
      const pending = ensureCertificate({ site: "stuck", names: ["stuck.example.com"], certbot, stateDir, retry: { attempts: 5, delayMs: 60_000 } }, ctxWith(logSink().log, abort.signal)).catch(
        (e: unknown) => e,
      );
      await until("the first run turned away", async () => (await calls()).slice(before).some((c) => c.end !== undefined));
      const t0 = Date.now();
      abort.abort();
      const err = await pending;
      expect(Date.now() - t0).toBeLessThan(5000);
      expect(err).toBeInstanceOf(ExecError);
      expect((err as ExecError).reason).toBe("aborted");
    } finally {
      await lock.release();
    }
    expect((await calls()).slice(before)).toHaveLength(1);
  });

  it("any other failure is permanent, with certbot's own words", async () => {
    const before = (await calls()).length;
    const broken = CertbotHost.parse({ ...certbot, command: recordingCommand(records, prefix.map((a) => (a === dirs.webroot ? "/nonexistent/webroot" : a))) });
    const err = await ensureCertificate({ site: "broken", names: ["broken.example.com"], certbot: broken, stateDir }, ctxWith(logSink().log)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DeployqError);
    expect(err).not.toBeInstanceOf(TransientError);
    const message = (err as Error).message;
    expect(message).toMatch(/^certificate broken: certbot could not obtain it for broken\.example\.com \(exit code 1\):\n/);
    expect(message).toContain("/nonexistent/webroot does not exist or is not a directory");
    expect(message).toMatch(/\(certbot's log: .+\)$/);
    expect(message).not.toMatch(/Saving debug log|Ask for help/);
    expect((await calls()).slice(before)).toHaveLength(1);
    expect(await readCertificateState(stateDir, "broken")).toBeUndefined();
  });

  it("checkCertbot: the command, the webroot, the email", async () => {
    const ok = await checkCertbot(certbot);
    expect(ok.map((r) => [r.name, r.ok])).toEqual([
      ["certbot command", true],
      ["certbot webroot", true],
      ["certbot email", true],
    ]);
    expect(ok[2]!.detail).toBe(EMAIL);

    const missing = await checkCertbot(CertbotHost.parse({ command: ["/nonexistent/certbot"], webroot: path.join(root, "nowhere") }));
    expect(missing.map((r) => [r.name, r.ok])).toEqual([
      ["certbot command", false],
      ["certbot webroot", false],
      ["certbot email", true],
    ]);
    expect(missing[2]!.detail).toMatch(/^warning: no email/);

    const hasSudo = spawnSync("sh", ["-c", "command -v sudo"]).status === 0;
    if (hasSudo && process.getuid?.() === 0) {
      // Root may run anything through sudo, but the wrapper is not installed here: sudo -l says so.
      const wrapper = await checkCertbot(CertbotHost.parse({ webroot: dirs.webroot }));
      expect(wrapper[0]).toMatchObject({ name: "certbot command", ok: existsSync("/usr/local/sbin/deployq-certbot") });
      expect(wrapper.find((r) => r.detail.includes("always writes challenges to /var/www/letsencrypt"))).toBeDefined();
      const allowed = await checkCertbot(CertbotHost.parse({ command: ["sudo", "-n", "/bin/true"], webroot: dirs.webroot, email: EMAIL }));
      expect(allowed[0]).toEqual({ name: "certbot command", ok: true, detail: "sudo allows it: /bin/true" });
    }
  });
});

/**
 * The production path: the step calls sudoers/deployq-certbot (the root wrapper, which
 * fixes every certbot flag), as root, in a private mount namespace where certbot's root
 * locations are the test's: /etc/letsencrypt (with a cli.ini naming pebble as the server,
 * and the work and logs directories), the CA bundle (pebble's TLS CA), and /var/www (an
 * empty tmpfs, where the wrapper creates its webroot). Nothing of it is seen outside.
 */
const NAMESPACE = String.raw`
set -euo pipefail
etc=$1 ca=$2 wrapper=$3
shift 3
mount --bind "$etc" /etc/letsencrypt
mount --bind "$ca" /etc/ssl/certs/ca-certificates.crt
mount -t tmpfs -o mode=0755 tmpfs /var/www
exec "$wrapper" "$@"
`;

function canUseNamespaces(): boolean {
  if (process.getuid?.() !== 0) return false;
  if (!existsSync("/etc/letsencrypt") || !existsSync("/var/www") || !existsSync("/etc/ssl/certs/ca-certificates.crt")) return false;
  return spawnSync("unshare", ["-m", "sh", "-c", "mount -t tmpfs tmpfs /mnt && umount /mnt"], { stdio: "ignore" }).status === 0;
}

describe("through sudoers/deployq-certbot, as root (private mount namespace)", () => {
  let pebble: Pebble;
  let root: string;

  beforeAll(async () => {
    expect(canUseNamespaces(), "needs root, unshare, /etc/letsencrypt and /var/www (certbot and nginx installed), as in CI").toBe(true);
    pebble = await startPebble();
    root = await mkdtemp(path.join(tmpdir(), "deployq-certbot-wrapper-"));
  });
  afterAll(async () => {
    await pebble?.stop();
    if (root) await rm(root, { recursive: true, force: true });
  });

  it("obtains, keeps, and reissues the same certificate name when a name is added", async () => {
    const etc = path.join(root, "etc-letsencrypt");
    await mkdir(etc, { mode: 0o755 });
    await writeFile(
      path.join(etc, "cli.ini"),
      `server = ${pebble.directoryUrl}\nwork-dir = ${path.join(root, "work")}\nlogs-dir = ${path.join(root, "logs")}\nmax-log-backups = 0\n`,
    );
    const records = path.join(root, "calls.jsonl");
    const certbot = CertbotHost.parse({
      command: recordingCommand(records, ["unshare", "-m", "bash", "-c", NAMESPACE, "namespace", etc, pebble.caFile, path.join(REPO_ROOT, "sudoers", "deployq-certbot")]),
      email: EMAIL,
    });
    const stateDir = path.join(root, "state");
    const ctx = (): CommandContext => ({ log: logSink().log, timeoutMs: 120_000 });
    const cert = path.join(etc, "live", "shop", "cert.pem");

    expect(await ensureCertificate({ site: "shop", names: ["example.com", "www.example.com"], certbot, stateDir }, ctx())).toBe("obtained");
    expect(await certificateNames(cert)).toEqual(["example.com", "www.example.com"]);
    expect(await ensureCertificate({ site: "shop", names: ["www.example.com", "example.com"], certbot, stateDir }, ctx())).toBe("unchanged");

    const sink = logSink();
    expect(await ensureCertificate({ site: "shop", names: ["example.com", "www.example.com", "new.example.com"], certbot, stateDir }, { log: sink.log, timeoutMs: 120_000 })).toBe("obtained");
    expect(await certificateNames(cert)).toEqual(["example.com", "new.example.com", "www.example.com"]);
    expect(sink.text()).toMatch(/Renewing an existing certificate for example\.com and 2 more domains/);
    expect(await readdir(path.join(etc, "live"))).toEqual(["README", "shop"]);
    // The wrapper's fixed flags, as certbot recorded them for renewals.
    const renewal = await readFile(path.join(etc, "renewal", "shop.conf"), "utf8");
    expect(renewal).toMatch(/^authenticator = webroot$/m);
    expect(renewal).toMatch(/^webroot_path = \/var\/www\/letsencrypt,?$/m);
    expect((await readRecordedCalls(records)).map((c) => c.code)).toEqual([0, 0]);
  });
});
