import { readFileSync } from "node:fs";
import { homedir, hostname } from "node:os";
import path from "node:path";
import { parse as parseToml } from "smol-toml";
import type { z } from "zod";
import { ConfigError, errorMessage } from "../errors.ts";
import { defaultLockPrefix } from "../lock/lock.ts";
import { type CertbotHost, Config, type DeploymentConfig, type NginxHost, type NotifyEvent, PORT, type RolloutConfig } from "./schema.ts";

export const DEFAULT_CONFIG_PATH = "./deployq.toml";

/** deployq's own secrets: in its environment only, never in what it deploys. */
export const SECRET_VARIABLES = ["GITHUB_WEBHOOK_SECRET", "DATABASE_URL", "REDIS_URL", "GITHUB_TOKEN", "DEPLOYQ_ADMIN_TOKEN"] as const;

export interface Secrets {
  /** One or more webhook secrets (comma-separated in the environment, for rotation). */
  webhookSecrets: string[];
  databaseUrl: string | undefined;
  redisUrls: string[];
  githubToken: string | undefined;
  /** DEPLOYQ_ADMIN_TOKEN: the dashboard's login and what /ws/v0 clients authenticate with (unset: both are off). */
  adminToken: string | undefined;
}

/** The validated configuration with every path made absolute and the secrets from the environment. */
export type Deployment = Omit<DeploymentConfig, "keep_deploys" | "rollout"> & {
  name: string;
  keep_deploys: number;
  /** With hosts: how they take turns (defaults filled in); without: undefined. */
  rollout: RolloutConfig | undefined;
};

/** A deployment served by a fleet (`hosts`): its pushes become rollouts in the shared database. */
export const isFleet = (d: Pick<Deployment, "hosts">): d is Pick<Deployment, "hosts"> & { hosts: string[] } => d.hosts !== undefined;

/** Whether host `hostName` deploys `d` (a fleet deployment: when it is one of its hosts; any other: always). */
export const deploysHere = (d: Pick<Deployment, "hosts">, hostName: string): boolean => !d.hosts || d.hosts.includes(hostName);

export interface Settings {
  configPath: string;
  /** This host's name (host_name, default: the machine's hostname): in deploy rows, and among a fleet's hosts. */
  hostName: string;
  host: string;
  port: number;
  /** Where `deployq workers` serves /metrics ([metrics]); no port: it serves none. */
  metrics: { host: string; port: number | undefined };
  /** [server] public_url as an origin ("https://deploy.example.com"): the one browsers may open /ws/v0 from. */
  publicUrl: string | undefined;
  /** [server] trust_proxy: the proxies whose X-Forwarded-For / -Proto are believed (empty: none). */
  trustProxy: string[];
  dataDir: string;
  queuesDir: string;
  rescanIntervalMs: number;
  shutdownGraceMs: number;
  lockTtlMs: number;
  /** In front of every lock name (lock_prefix, default from the queue root). */
  lockPrefix: string;
  /** In front of the locks every host of a fleet shares (a rollout's slots): lock_prefix, default "deployq". */
  fleetLockPrefix: string;
  /** pm2's home for deployments restarted with pm2 (and for the daemon under pm2). */
  pm2Home: string;
  nginx: NginxHost;
  /** Absent: no certificates are requested. */
  certbot: CertbotHost | undefined;
  /** Where the receiver serves the dashboard ([dashboard] path). */
  dashboard: { path: string };
  deployments: Map<string, Deployment>;
  /** Commit statuses, Deployments and lost-delivery recovery ([github], GITHUB_API_URL); only when secrets.githubToken is set. */
  github: { apiUrl: string; writeIntervalMs: number; timeoutMs: number; deployments: boolean; /** 0: lost-delivery recovery off. */ redeliverIntervalMs: number; /** POST /github-webhook only from GitHub's hook ranges. */ allowlist: boolean };
  /** [[notify]], in the file's order. */
  notify: Notifier[];
  secrets: Secrets;
}

/** One [[notify]] table, with its URL and key from the environment (checked at start: requireNotifyUrls). */
export interface Notifier {
  /** Its url_env: what the logs, the outbox and /metrics call it (never its URL, a secret). */
  name: string;
  url: string | undefined;
  format: "slack" | "discord" | "json";
  events: ReadonlySet<NotifyEvent>;
  /** undefined: every deployment. */
  deployments: ReadonlySet<string> | undefined;
  secretEnv: string | undefined;
  secret: string | undefined;
}

export interface LoadOptions {
  /** --config on the command line; wins over DEPLOYQ_CONFIG. */
  configPath?: string | undefined;
  /** --port on the command line (as typed); wins over DEPLOYQ_PORT, which wins over [server] port. */
  port?: string | undefined;
  env?: NodeJS.ProcessEnv;
}

function list(value: string | undefined): string[] {
  return (value ?? "")
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
}

function describeIssue(issue: z.core.$ZodIssue): string {
  const key = issue.path.length > 0 ? issue.path.map(String).join(".") : "(top level)";
  if (issue.code === "unrecognized_keys") {
    const where = issue.path.length > 0 ? ` in [${issue.path.map(String).join(".")}]` : "";
    return `unknown key${issue.keys.length > 1 ? "s" : ""} ${issue.keys.map((k) => `"${k}"`).join(", ")}${where}: remove ${issue.keys.length > 1 ? "them" : "it"} or check the spelling (top-level keys go before the first [table])`;
  }
  if (issue.code === "invalid_key") return `deployment name "${key}": ${issue.issues[0]?.message ?? issue.message}`;
  return `${key}: ${issue.message}`;
}

/**
 * Reads and validates the TOML configuration. Paths in the file are relative to the
 * file's own folder, so the daemon behaves the same whatever directory pm2 or systemd
 * starts it in; DEPLOYQ_QUEUES_DIR (relative to the working directory) overrides queues_dir.
 */
export function loadSettings(options: LoadOptions = {}): Settings {
  const env = options.env ?? process.env;
  const configPath = path.resolve(options.configPath ?? env.DEPLOYQ_CONFIG ?? DEFAULT_CONFIG_PATH);
  let text: string;
  try {
    text = readFileSync(configPath, "utf8");
  } catch (err) {
    throw new ConfigError(
      `cannot read the configuration ${configPath} (${errorMessage(err)}): ` +
        "pass --config <file> or set DEPLOYQ_CONFIG, or copy deployq.example.toml to ./deployq.toml",
      { cause: err },
    );
  }
  let raw: unknown;
  try {
    raw = parseToml(text);
  } catch (err) {
    throw new ConfigError(`${configPath} is not valid TOML: ${errorMessage(err)}`, { cause: err });
  }
  const parsed = Config.safeParse(raw);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => `  - ${describeIssue(i)}`);
    throw new ConfigError(
      `${configPath} is not a valid deployq configuration:\n${lines.join("\n")}\n` +
        "Fix these keys (deployq.example.toml shows every key) and start again.",
    );
  }
  const config = parsed.data;
  if ("router" in config.deployments) {
    throw new ConfigError(`${configPath}: deployment name "router" is reserved (queues/dead-letter/router/ is the router's): rename it`);
  }
  const base = path.dirname(configPath);
  const port = options.port !== undefined ? parsePort(options.port, "--port") : env.DEPLOYQ_PORT ? parsePort(env.DEPLOYQ_PORT, "DEPLOYQ_PORT") : config.server.port;
  const deployments = new Map<string, Deployment>();
  for (const [name, deployment] of Object.entries(config.deployments)) {

    // A local remote written as a relative path ("." or "./x", "../x") is relative to this file too.
    const remote = /^\.\.?(\/|$)/.test(deployment.remote) ? path.resolve(base, deployment.remote) : deployment.remote;
    const rollout = deployment.hosts ? (deployment.rollout ?? { parallel: 1, on_failure: "halt" as const }) : undefined;
    deployments.set(name, { ...deployment, name, remote, path: path.resolve(base, deployment.path), keep_deploys: deployment.keep_deploys ?? config.keep_deploys, rollout });
  }
  for (const [i, n] of config.notify.entries()) {
    const unknown = (n.deployments ?? []).filter((d) => !deployments.has(d));
    if (unknown.length > 0) throw new ConfigError(`${configPath}: notify[${i}] (${n.url_env}) names ${unknown.map((d) => `"${d}"`).join(", ")}, which ${unknown.length === 1 ? "is not a deployment" : "are not deployments"} of this file: fix the name or remove it`);
  }
  const queuesDir = env.DEPLOYQ_QUEUES_DIR ? path.resolve(env.DEPLOYQ_QUEUES_DIR) : path.resolve(base, config.queues_dir);
  return {
    configPath,
    hostName: config.host_name ?? hostname(),
    host: config.server.host,
    port,
    metrics: { host: config.metrics.host, port: config.metrics.port },
    publicUrl: config.server.public_url,
    trustProxy: config.server.trust_proxy,
    dataDir: path.resolve(base, config.data_dir),
    queuesDir,
    rescanIntervalMs: config.rescan_interval_ms,
    shutdownGraceMs: config.shutdown_grace_s * 1000,
    lockTtlMs: config.lock_ttl_ms,
    lockPrefix: config.lock_prefix ?? installLockPrefix(queuesDir),
    fleetLockPrefix: config.lock_prefix ?? "deployq",
    pm2Home: path.resolve(base, config.pm2_home ?? (env.PM2_HOME || path.join(homedir(), ".pm2"))),
    nginx: config.nginx,
    certbot: config.certbot,
    dashboard: { path: config.dashboard.path },
    deployments,
    github: {
      apiUrl: githubApiUrl(env.GITHUB_API_URL),
      writeIntervalMs: config.github.write_interval_ms,
      timeoutMs: config.github.timeout_ms,
      deployments: config.github.deployments,
      redeliverIntervalMs: config.github.redeliver_interval_s * 1000,
      allowlist: config.github.allowlist,
    },
    notify: config.notify.map((n) => ({
      name: n.url_env,
      url: env[n.url_env] || undefined,
      format: n.format,
      events: new Set(n.events),
      deployments: n.deployments ? new Set(n.deployments) : undefined,
      secretEnv: n.secret_env,
      secret: n.secret_env ? env[n.secret_env] || undefined : undefined,
    })),
    secrets: {
      webhookSecrets: list(env.GITHUB_WEBHOOK_SECRET),
      databaseUrl: env.DATABASE_URL || undefined,
      redisUrls: list(env.REDIS_URL),
      githubToken: env.GITHUB_TOKEN || undefined,
      adminToken: env.DEPLOYQ_ADMIN_TOKEN || undefined,
    },
  };
}

/** GITHUB_API_URL: GitHub Enterprise Server's REST root (https://github.example.com/api/v3); unset: github.com's. */
function githubApiUrl(value: string | undefined): string {
  if (!value) return "https://api.github.com";
  let url: URL | undefined;
  try {
    url = new URL(value);
  } catch {
    url = undefined;
  }
  if (!url || (url.protocol !== "https:" && url.protocol !== "http:") || url.username || url.password || url.search || url.hash) {
    throw new ConfigError(`GITHUB_API_URL must be the http(s) address of the REST API, such as https://github.example.com/api/v3 (no credentials or query); the value is not repeated here, in case it holds a secret`);
  }
  return url.href.replace(/\/+$/, "");
}

function installLockPrefix(queuesDir: string): string {
  try {
    return defaultLockPrefix(queuesDir);
  } catch (err) {
    throw new ConfigError(
      `cannot resolve the queue root ${queuesDir} (${errorMessage(err)}), from which the default lock_prefix comes: ` +
        "let this user read the folders above it, or set lock_prefix",
      { cause: err },
    );
  }
}

/** A port from the command line or the environment: digits only, 0 to 65535 (0: the system picks a free one). */
function parsePort(value: string, source: string): number {
  const port = /^\d{1,5}$/.test(value) ? Number(value) : Number.NaN;
  if (!PORT.safeParse(port).success) {
    throw new ConfigError(`${source} must be a port number from 1 to 65535, or 0 to let the system pick a free one (printed at start), not ${JSON.stringify(value)}`);
  }
  return port;
}

/**
 * The deployments whose pushes wait for their checks read them from GitHub: refused at
 * start without GITHUB_TOKEN (not at config load: `deployq status` needs no token).
 */
export function requireChecksToken(settings: Settings): void {
  const gated = [...settings.deployments.values()].filter((d) => d.require_checks.length > 0 && d.enabled);
  if (gated.length > 0 && !settings.secrets.githubToken) {
    throw new ConfigError(
      `${gated.map((d) => d.name).join(", ")} ${gated.length === 1 ? "has" : "have"} require_checks, which reads each push's checks from GitHub: ` +
        `set GITHUB_TOKEN (a token with "Checks: read" and "Commit statuses: read" on ${[...new Set(gated.map((d) => d.repository))].join(", ")}), or remove require_checks`,
    );
  }
}

/**
 * The processes that run the workers send the notifications: each [[notify]] needs its URL
 * (an http(s) URL, without which it would hear of nothing) and a json one its key. Checked
 * at start, not at config load (`deployq status` needs neither). Values are never echoed.
 */
export function requireNotifyUrls(settings: Pick<Settings, "notify">): void {
  const problems = settings.notify.flatMap(notifierProblems);
  if (problems.length > 0) throw new ConfigError(`[[notify]]: ${problems.join("; ")}`);
}

/** What keeps one notifier from working (none: its URL, and a json one's key, are set and well formed). */
export function notifierProblems(n: Notifier): string[] {
  const problems: string[] = [];
  if (!n.url) problems.push(`${n.name} is not set: export the notifier's URL (a Slack, Mattermost or Discord incoming webhook, or your own endpoint)`);
  else if (!isHttpUrl(n.url)) problems.push(`${n.name} is not an http(s) URL (such as https://hooks.slack.com/services/…); its value is not repeated here, as it is a secret`);
  if (n.secretEnv && !n.secret) problems.push(`${n.secretEnv} is not set: export the key that ${n.name}'s json notifications are signed with (its receiver checks X-Deployq-Signature-256 with it)`);
  return problems;
}

function isHttpUrl(value: string): boolean {
  try {
    const url = new URL(value);
    return url.protocol === "https:" || url.protocol === "http:";
  } catch {
    return false;
  }
}

/**
 * A fleet deployment whose hosts are not only this one keeps its rollouts in a Postgres
 * every host reaches, and its slots in a Redis/Dragonfly they all share: refused at the
 * start of the workers without them (PGlite and in-process locks are this host's alone).
 */
export function requireFleetServices(settings: Settings): void {
  const fleet = [...settings.deployments.values()].filter((d) => d.enabled && d.hosts && d.hosts.some((h) => h !== settings.hostName));
  if (fleet.length === 0) return;
  const missing = [...(settings.secrets.databaseUrl ? [] : ["DATABASE_URL (the Postgres every host shares)"]), ...(settings.secrets.redisUrls.length > 0 ? [] : ["REDIS_URL (the Dragonfly/Redis nodes every host shares, comma-separated)"])];
  if (missing.length === 0) return;
  throw new ConfigError(
    `${fleet.map((d) => d.name).join(", ")} ${fleet.length === 1 ? "lists hosts" : "list hosts"} other than this one (${settings.hostName}): the hosts of a fleet share their rollouts and locks; set ${missing.join(" and ")}, or remove hosts`,
  );
}

/** The receiver refuses to start without a secret: an unsigned receiver would deploy anyone's push. */
export function requireWebhookSecrets(settings: Settings): string[] {
  if (settings.secrets.webhookSecrets.length === 0) {
    throw new ConfigError(
      "GITHUB_WEBHOOK_SECRET is not set: export the secret you entered in the GitHub webhook settings " +
        "(several, comma-separated, while you rotate it)",
    );
  }
  return settings.secrets.webhookSecrets;
}
