import { mkdir, readFile, stat } from "node:fs/promises";
import path from "node:path";
import { Writable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import { type CertbotHost, SITE_NAME } from "../config/schema.ts";
import { DeployqError, TransientError, errorMessage } from "../errors.ts";
import { ExecError } from "../exec/exec-error.ts";
import { runCommand } from "../exec/run-command.ts";
import { fsyncDir, writeFileDurably } from "../queue/fsync.ts";
import { checkCommand } from "./check-command.ts";
import { type CommandContext, runOptions } from "./command-context.ts";
import { type NginxDirective, parseNginxConfig } from "./nginx-config.ts";

/**
 * Every name in the `server_name` directives of an nginx site file, in order, each once.
 *
 * The file is parsed as nginx reads it (./nginx-config.ts: quotes, escapes, comments,
 * blocks), and the names come from the `server` blocks of the http context: at the top
 * level (a site file is included inside `http {}`) or inside an `http` block; `server`
 * blocks of `stream` or `mail` and `server` directives of an `upstream` are not sites.
 * Throws NginxSyntaxError (a DeployqError) when the file does not parse.
 */
export function serverNames(confText: string): string[] {
  const names: string[] = [];
  const seen = new Set<string>();
  const servers = (directives: NginxDirective[]) => directives.filter((d) => d.directive === "server" && d.block);
  const top = parseNginxConfig(confText);
  for (const server of [...servers(top), ...top.filter((d) => d.directive === "http" && d.block).flatMap((http) => servers(http.block!))]) {
    for (const d of server.block!) {
      if (d.directive !== "server_name") continue;
      for (const name of d.args) {
        if (seen.has(name)) continue;
        seen.add(name);
        names.push(name);
      }
    }
  }
  return names;
}

/** Let's Encrypt's limit of names per certificate, and the wrapper's. */
export const MAX_DOMAINS = 100;

/**
 * Why certbot cannot prove `name` (already lowercased) over HTTP-01, or undefined when it
 * can. What passes is exactly what sudoers/deployq-certbot's valid_domain accepts (minus
 * `localhost` names, which no public CA issues for): lowercase labels of letters, digits
 * and '-' (not first or last), 1-63 characters each, at least two labels, the last with a
 * letter, at most 253 characters, no trailing dot, no wildcard.
 */
export function skipReason(name: string): string | undefined {
  if (name === "") return 'the empty name (requests without a "Host" header)';
  if (name === "_") return "the catch-all placeholder";
  if (name.startsWith("~")) return "a regular expression";
  if (name.includes("*") || name.startsWith(".")) return "a wildcard (Let's Encrypt issues those only through the DNS challenge)";
  if (name.includes("$")) return "a variable";
  if (name.includes(":") || name.startsWith("[") || /^[0-9.]+$/.test(name)) return "an IP address (certbot's webroot plugin proves host names only)";
  if (name === "localhost" || name.endsWith(".localhost")) return "a localhost name";
  if (!name.includes(".")) return "not a fully qualified domain name (no dot)";
  if (name.length > 253) return "longer than 253 characters";
  if (name.endsWith(".")) return "a trailing dot (write the name without it)";
  const labels = name.split(".");
  if (!/^[a-z0-9.-]+$/.test(name) || !labels.every((l) => /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/.test(l))) {
    return "not a valid host name (labels of 1-63 letters, digits and '-'; an internationalized name must be written in its xn-- form)";
  }
  if (!/[a-z]/.test(labels[labels.length - 1]!)) return "an IP address (certbot's webroot plugin proves host names only)";
  return undefined;
}

/** The names certbot can prove over HTTP-01, lowercased, deduplicated and sorted; and those skipped, with why. */
export function certifiableNames(names: readonly string[]): { domains: string[]; skipped: Array<{ name: string; reason: string }> } {
  const domains = new Set<string>();
  const skipped: Array<{ name: string; reason: string }> = [];
  for (const name of names) {
    const lower = name.toLowerCase();
    const reason = skipReason(lower);
    if (reason) skipped.push({ name, reason });
    else domains.add(lower);
  }
  return { domains: [...domains].sort(), skipped };
}

/** certbot's argv for a site: `certbot.command` and exactly the wrapper's arguments. */
export function certbotArgv(certbot: CertbotHost, site: string, domains: readonly string[]): string[] {
  return [...certbot.command, "--cert-name", site, ...(certbot.email ? ["--email", certbot.email] : []), ...domains.flatMap((d) => ["-d", d])];
}

/** certbot's own words when its lock is taken (by the distribution's renewal timer, typically). */
export const ANOTHER_INSTANCE = /Another instance of Certbot is already running/i;

export interface CertbotRetry {
  /** Runs in all while another certbot holds its lock (default 8). */
  attempts?: number;
  /** Before the second run; doubled each time (default 2000). */
  delayMs?: number;
  /** At most this long between two runs (default 30000). */
  maxDelayMs?: number;
}

const DEFAULT_RETRY = { attempts: 8, delayMs: 2000, maxDelayMs: 30_000 } satisfies Required<CertbotRetry>;

export interface EnsureCertificateOptions {
  /** The site, used as `--cert-name`. */
  site: string;
  /** The site file's server names (filtered here to those certbot can prove over HTTP). */
  names: string[];
  certbot: CertbotHost;
  /** `<dataDir>/certificates`: the domain list last obtained per certificate. */
  stateDir: string;
  /** Backoff while "Another instance of Certbot is already running" (defaults: 8 runs over about 2 minutes). */
  retry?: CertbotRetry;
  /**
   * "exact" (default): the certificate holds exactly these names. "cover": it must hold at
   * least these; when some are missing it is reissued for the names it has plus these. Before
   * a new site file is active, "cover" keeps the certificate good for the file it replaces
   * too, which is still what nginx serves if the new file fails and is restored; "exact"
   * once the new file is live drops names that no longer appear.
   */
  mode?: "exact" | "cover";
}

/** What `<stateDir>/<site>.json` holds. */
export interface CertificateState {
  site: string;
  domains: string[];
  obtainedAt: string;
}

/** Where the domain lists live: `<data_dir>/certificates/<site>.json`. */
export function certificateStateDir(dataDir: string): string {
  return path.join(dataDir, "certificates");
}

export function certificateStatePath(stateDir: string, site: string): string {
  return path.join(stateDir, `${site}.json`);
}

/** The domain list last obtained for `site`, or undefined (never obtained, or a state file that cannot be read). */
export async function readCertificateState(stateDir: string, site: string): Promise<CertificateState | undefined> {
  let text: string;
  try {
    text = await readFile(certificateStatePath(stateDir, site), "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw err;
  }
  try {
    const state = JSON.parse(text) as Partial<CertificateState>;
    if (!Array.isArray(state.domains) || !state.domains.every((d) => typeof d === "string")) return undefined;
    return { site, domains: state.domains, obtainedAt: String(state.obtainedAt ?? "") };
  } catch {
    return undefined;
  }
}

/** Durable: after a crash the state is the old or the new one, never half. */
async function writeCertificateState(stateDir: string, state: CertificateState): Promise<void> {
  await mkdir(stateDir, { recursive: true });
  // Site names never start with '.', so the temporary never collides with a state file.
  await writeFileDurably(certificateStatePath(stateDir, state.site), Buffer.from(`${JSON.stringify(state, null, 2)}\n`), 0o644, `.${state.site}.json`);
  await fsyncDir(stateDir);
}

/** A log that also keeps what went through it (bounded), to quote certbot back. */
function keepingLog(log: Writable): { stream: Writable; text: () => string } {
  let kept = "";
  const stream = new Writable({
    write(chunk: Buffer | string, _encoding, callback) {
      log.write(chunk);
      if (kept.length < 256 * 1024) kept += chunk.toString();
      callback();
    },
  });
  return { stream, text: () => kept };
}

const NOISE = [
  /^\$ /, // runCommand's header
  /^→ /, // runCommand's exit line
  /^Saving debug log to /,
  /^Requesting a certificate for /,
  /^Renewing an existing certificate for /,
  /^Account registered/,
  /^(- )+-?$/,
  /^If you like Certbot/,
  /^\* Donating to /,
  /^Ask for help or search for solutions at /,
];
const MAX_QUOTED_LINES = 20;

/** The lines of certbot's output (or the wrapper's, or sudo's) that say what went wrong, and where certbot's log is. */
export function certbotFailureLines(output: string): string[] {
  const lines = output
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "" && !NOISE.some((re) => re.test(l)));
  const logfile = /See the logfile (\S+)/.exec(output)?.[1];
  const quoted = lines.length > MAX_QUOTED_LINES ? [...lines.slice(0, MAX_QUOTED_LINES - 1), `… (${lines.length - MAX_QUOTED_LINES} more lines)`, lines[lines.length - 1]!] : lines;
  return logfile ? [...quoted, `(certbot's log: ${logfile})`] : quoted;
}

function sameList(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** Obtains (or reissues, same --cert-name) the site's certificate when its domain list changed; does nothing otherwise. The caller holds deployq:nginx. */
export async function ensureCertificate(options: EnsureCertificateOptions, ctx: CommandContext): Promise<"unchanged" | "obtained" | "none"> {
  const { site, certbot, stateDir } = options;
  const log = ctx.log;
  if (!SITE_NAME.test(site)) {
    throw new DeployqError("DEPLOY", `certificate: ${JSON.stringify(site)} is not a site name (1-63 letters, digits, '.', '_', '-', starting with a letter or digit)`);
  }
  const { domains, skipped } = certifiableNames(options.names);
  for (const s of skipped) log.write(`certificate ${site}: skipping ${JSON.stringify(s.name)}: ${s.reason}\n`);
  if (domains.length === 0) {
    log.write(`certificate ${site}: no server name certbot can prove over HTTP-01; no certificate requested\n`);
    return "none";
  }
  if (domains.length > MAX_DOMAINS) {
    throw new DeployqError("DEPLOY", `certificate ${site}: ${domains.length} server names, more than the ${MAX_DOMAINS} a certificate can hold; split the site`);
  }
  const state = await readCertificateState(stateDir, site);
  if (state && sameList(state.domains, domains)) {
    log.write(`certificate ${site}: unchanged (${domains.join(" ")})\n`);
    return "unchanged";
  }
  if (options.mode === "cover" && state) {
    if (domains.every((d) => state.domains.includes(d))) {
      log.write(`certificate ${site}: already covers ${domains.join(" ")}\n`);
      return "unchanged";
    }
    const union = [...new Set([...state.domains, ...domains])].sort();
    if (union.length <= MAX_DOMAINS) domains.splice(0, domains.length, ...union);
  }
  log.write(
    state
      ? `certificate ${site}: domains changed (${state.domains.join(" ")} → ${domains.join(" ")}); reissuing the same certificate name\n`
      : `certificate ${site}: requesting one for ${domains.join(" ")}\n`,
  );

  await runCertbot(certbotArgv(certbot, site, domains), site, domains, { ...DEFAULT_RETRY, ...options.retry }, ctx);
  await writeCertificateState(stateDir, { site, domains, obtainedAt: new Date().toISOString() });
  return "obtained";
}

async function runCertbot(argv: string[], site: string, domains: string[], retry: Required<CertbotRetry>, ctx: CommandContext): Promise<void> {
  const started = Date.now();
  for (let attempt = 1; ; attempt++) {
    const output = keepingLog(ctx.log);
    try {
      await runCommand(argv, { ...runOptions(ctx, "/"), log: output.stream });
      return;
    } catch (err) {
      if (!(err instanceof ExecError) || err.reason === "aborted") throw err;
      const said = output.text();
      if (err.reason === "exit" && ANOTHER_INSTANCE.test(said)) {
        if (attempt >= retry.attempts) {
          throw new TransientError(
            `certificate ${site}: another certbot was still running after ${attempt} attempt${attempt === 1 ? "" : "s"} over ${Math.round((Date.now() - started) / 1000)} s ` +
              `(certbot said "Another instance of Certbot is already running": the distribution's renewal timer, or a certbot run by hand); the deploy will be retried`,
            { cause: err },
          );
        }
        const delay = Math.min(retry.maxDelayMs, retry.delayMs * 2 ** (attempt - 1));
        ctx.log.write(`certificate ${site}: another certbot is running (attempt ${attempt} of ${retry.attempts}); trying again in ${delay} ms\n`);
        try {
          await sleep(delay, undefined, ctx.signal ? { signal: ctx.signal } : {});
        } catch {
          throw new ExecError(argv, undefined, undefined, "", "aborted", `certificate ${site}: cancelled (shutdown, or the lock was lost) while waiting for another certbot to finish`);
        }
        continue;
      }
      const how =
        err.reason === "timeout"
          ? `timed out after ${ctx.timeoutMs} ms and was killed`
          : err.reason === "spawn"
            ? errorMessage(err)
            : err.signal
              ? `killed by ${err.signal}`
              : `exit code ${err.exitCode}`;
      const lines = certbotFailureLines(said);
      throw new DeployqError(
        "DEPLOY",
        `certificate ${site}: certbot could not obtain it for ${domains.join(" ")} (${how})${lines.length ? `:\n${lines.join("\n")}` : ""}`,
        { cause: err },
      );
    }
  }
}

/** What the default (sudoers) command's wrapper always passes as `-w`. */
const WRAPPER_WEBROOT = "/var/www/letsencrypt";

/** For `deployq check`, changing nothing. */
export async function checkCertbot(certbot: CertbotHost): Promise<Array<{ name: string; ok: boolean; detail: string }>> {
  const results: Array<{ name: string; ok: boolean; detail: string }> = [];
  results.push(
    await checkCommand("certbot command", certbot.command, {
      missing: "install certbot (apt-get install certbot) or change [certbot] command",
      sudo: "install sudoers/deployq and sudoers/deployq-certbot (see docs/production.md) or change [certbot] command",
    }),
  );

  try {
    const s = await stat(certbot.webroot);
    results.push(s.isDirectory() ? { name: "certbot webroot", ok: true, detail: certbot.webroot } : { name: "certbot webroot", ok: false, detail: `${certbot.webroot} is not a directory` });
  } catch {
    results.push({ name: "certbot webroot", ok: false, detail: `${certbot.webroot} does not exist: create it (install -d -m 0755 ${certbot.webroot}: see docs/production.md); nginx must serve it at /.well-known/acme-challenge/ for every site` });
  }
  if (certbot.command.at(-1)?.endsWith("/deployq-certbot") && path.resolve(certbot.webroot) !== WRAPPER_WEBROOT) {
    results.push({ name: "certbot webroot", ok: false, detail: `the deployq-certbot wrapper always writes challenges to ${WRAPPER_WEBROOT}, not ${certbot.webroot}: set webroot to it` });
  }

  results.push(
    certbot.email
      ? { name: "certbot email", ok: true, detail: certbot.email }
      : {
          name: "certbot email",
          ok: true,
          detail:
            "warning: no email: certbot --non-interactive refuses to register a new ACME account without one (\"You should register before running non-interactively, or provide --agree-tos and --email <email_address> flags\"); set it unless an account is already registered or root's /etc/letsencrypt/cli.ini sets email",
        },
  );
  return results;
}
