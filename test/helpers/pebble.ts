import { execFile } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { mkdirSync } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { request } from "node:https";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { freePort } from "./load.ts";
import { type Spawned, spawnTracked } from "./processes.ts";
import { until } from "./wait.ts";

/**
 * A real ACME server for tests: pebble (Debian's /usr/bin/pebble, Let's Encrypt's test CA
 * server) on 127.0.0.1, and the real certbot pointed at it.
 *
 *   const pebble = await startPebble();
 *   const certbot = { command: pebble.certbotCommand(dir), email: "ops@example.com", webroot: certbotDirs(dir).webroot };
 *   await ensureCertificate({ site: "shop", names, certbot, stateDir }, ctx);
 *   // the certificate: certbotDirs(dir).configDir/live/shop/cert.pem; certificateNames() reads its SANs
 *   await pebble.stop();
 *
 * - Its TLS certificate (for 127.0.0.1 and localhost) and the CA that signed it are made
 *   with openssl in a fresh mkdtemp directory; `caFile` is that CA (certbot trusts it
 *   through REQUESTS_CA_BUNDLE, which certbotCommand sets).
 * - PEBBLE_VA_ALWAYS_VALID=1: every challenge passes without pebble connecting anywhere
 *   (so any host name can be certified, and nothing has to serve the webroot);
 *   PEBBLE_WFE_NONCEREJECT=0: no random "bad nonce" rejections (certbot would retry them,
 *   but the tests should not depend on that).
 * - Its ports (ACME, management, and the http/tls ports its validator would use) are free
 *   ports of 127.0.0.1; if one was taken meanwhile, pebble is started again on others.
 * - It is spawned with spawnTracked: a test file that does not call stop() fails.
 *
 * certbotCommand(dir) is the certbot argv that sudoers/deployq-certbot runs, with the test's
 * own directories and server instead of root's: use it as `certbot.command`, and the
 * step appends `--cert-name <site> [--email <addr>] -d <domain>...` as it does to the wrapper.
 * recordingCommand() wraps any command to record its calls (argv, start and end times).
 */
export interface Pebble {
  /** https://127.0.0.1:<port>/dir */
  directoryUrl: string;
  /** The CA that signed pebble's own TLS certificate (not the CA of the certificates it issues). */
  caFile: string;
  /** pebble's output so far (its log: orders, authorizations, issued certificates). */
  output(): string;
  /** A certbot argv prefix using `dir` for certbot's directories (see certbotDirs), created here. */
  certbotCommand(dir: string): string[];
  /** Stops pebble and removes its directory (not the certbot directories). */
  stop(): Promise<void>;
}

export interface CertbotDirs {
  /** certbot's --config-dir: accounts/, live/<cert-name>/, archive/, renewal/. */
  configDir: string;
  workDir: string;
  logsDir: string;
  /** certbot's -w: where it writes the HTTP-01 challenges. */
  webroot: string;
  /** TMPDIR for certbot (it writes a temporary log there when it cannot take its lock). */
  tmpDir: string;
}

export function certbotDirs(dir: string): CertbotDirs {
  return {
    configDir: path.join(dir, "config"),
    workDir: path.join(dir, "work"),
    logsDir: path.join(dir, "logs"),
    webroot: path.join(dir, "webroot"),
    tmpDir: path.join(dir, "tmp"),
  };
}

const exec = promisify(execFile);

async function openssl(args: string[], cwd: string): Promise<void> {
  await exec("openssl", args, { cwd });
}

/** A CA and a certificate for 127.0.0.1 and localhost signed by it, in `dir`. */
async function makeTlsCertificate(dir: string): Promise<{ caFile: string; certFile: string; keyFile: string }> {
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  await openssl(
    ["req", "-x509", ...ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "7", "-subj", "/CN=deployq test CA for pebble", "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
    dir,
  );
  await openssl(["req", ...ec, "-keyout", "key.pem", "-out", "cert.csr", "-subj", "/CN=localhost"], dir);
  await writeFile(
    path.join(dir, "cert.ext"),
    "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
  );
  await openssl(["x509", "-req", "-in", "cert.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "cert.pem", "-days", "7", "-extfile", "cert.ext"], dir);
  return { caFile: path.join(dir, "ca.pem"), certFile: path.join(dir, "cert.pem"), keyFile: path.join(dir, "key.pem") };
}

/** GET over HTTPS trusting `ca`: the status, or undefined when nothing answers. */
function httpsStatus(url: string, ca: Buffer): Promise<number | undefined> {
  return new Promise((resolve) => {
    const req = request(url, { ca, timeout: 2000 }, (res) => {
      res.resume();
      res.once("end", () => resolve(res.statusCode));
    });
    req.once("timeout", () => req.destroy());
    req.once("error", () => resolve(undefined));
    req.end();
  });
}

export async function startPebble(): Promise<Pebble> {
  const dir = await mkdtemp(path.join(tmpdir(), "deployq-pebble-"));
  try {
    const tls = await makeTlsCertificate(dir);
    const ca = await readFile(tls.caFile);
    for (let attempt = 1; ; attempt++) {
      const [port, managementPort, httpPort, tlsPort] = [await freePort(), await freePort(), await freePort(), await freePort()];
      const configFile = path.join(dir, "pebble-config.json");
      await writeFile(
        configFile,
        JSON.stringify({
          pebble: {
            listenAddress: `127.0.0.1:${port}`,
            managementListenAddress: `127.0.0.1:${managementPort}`,
            certificate: tls.certFile,
            privateKey: tls.keyFile,
            httpPort,
            tlsPort,
            ocspResponderURL: "",
            externalAccountBindingRequired: false,
          },
        }),
      );
      const spawned: Spawned = spawnTracked("pebble", ["-config", configFile], { PEBBLE_VA_ALWAYS_VALID: "1", PEBBLE_VA_NOSLEEP: "1", PEBBLE_WFE_NONCEREJECT: "0" }, dir);
      const directoryUrl = `https://127.0.0.1:${port}/dir`;
      const exited = () => spawned.child.exitCode !== null || spawned.child.signalCode !== null;
      try {
        await until(`pebble answering at ${directoryUrl}`, async () => exited() || (await httpsStatus(directoryUrl, ca)) === 200, 30_000);
      } catch (err) {
        spawned.child.kill("SIGKILL");
        await spawned.exited;
        throw err;
      }
      if (exited()) {
        // A port taken between freePort() and pebble's listen: try others.
        if (attempt < 3 && /address already in use/.test(spawned.output())) continue;
        throw new Error(`pebble exited: ${spawned.output()}`);
      }
      return {
        directoryUrl,
        caFile: tls.caFile,
        output: spawned.output,
        certbotCommand(certbotDir: string): string[] {
          const d = certbotDirs(certbotDir);
          for (const p of Object.values(d)) mkdirSync(p, { recursive: true });
          return [
            "env",
            `REQUESTS_CA_BUNDLE=${tls.caFile}`,
            `TMPDIR=${d.tmpDir}`,
            "certbot",
            // As sudoers/deployq-certbot runs it:
            "certonly",
            "--webroot",
            "-w",
            d.webroot,
            "--non-interactive",
            "--agree-tos",
            "--keep-until-expiring",
            // ... but against pebble, with the test's directories instead of root's.
            "--server",
            directoryUrl,
            "--config-dir",
            d.configDir,
            "--work-dir",
            d.workDir,
            "--logs-dir",
            d.logsDir,
          ];
        },
        async stop() {
          if (!exited()) {
            spawned.child.kill("SIGTERM");
            await spawned.exited;
          }
          await rm(dir, { recursive: true, force: true });
        },
      };
    }
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}

const RECORDER = fileURLToPath(new URL("./record-command.mjs", import.meta.url));

/** `command`, run through record-command.mjs: every call appends its argv, start and end to `recordFile`. */
export function recordingCommand(recordFile: string, command: readonly string[]): string[] {
  return [process.execPath, RECORDER, recordFile, ...command];
}

export interface RecordedCall {
  pid: number;
  argv: string[];
  start: number;
  /** Absent while the call runs. */
  end?: number;
  code?: number | null;
}

/** The calls recorded in `recordFile`, in the order they started. */
export async function readRecordedCalls(recordFile: string): Promise<RecordedCall[]> {
  let text = "";
  try {
    text = await readFile(recordFile, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
  }
  const calls = new Map<number, RecordedCall>();
  for (const line of text.split("\n").filter(Boolean)) {
    const event = JSON.parse(line) as { event: "start" | "end"; pid: number; time: number; argv?: string[]; code?: number | null };
    if (event.event === "start") calls.set(event.pid, { pid: event.pid, argv: event.argv ?? [], start: event.time });
    else {
      const call = calls.get(event.pid);
      if (call) Object.assign(call, { end: event.time, code: event.code });
    }
  }
  return [...calls.values()].sort((a, b) => a.start - b.start);
}

/** The DNS names (subjectAltName) of a PEM certificate, sorted. */
export async function certificateNames(certFile: string): Promise<string[]> {
  const cert = new X509Certificate(await readFile(certFile));
  return (cert.subjectAltName ?? "")
    .split(", ")
    .filter((entry) => entry.startsWith("DNS:"))
    .map((entry) => entry.slice(4))
    .sort();
}
