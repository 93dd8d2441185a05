import { z } from "zod";
import { isProxyEntry } from "../http/address-range.ts";

/** Deployment names become directory names under queues/deployments/: keep them tame. */
export const DEPLOYMENT_NAME = /^[a-z0-9][a-z0-9_-]{0,63}$/i;
/** GitHub `owner/name`; both parts are restricted to what GitHub itself allows. */
const REPOSITORY = /^[A-Za-z0-9_.-]+\/[A-Za-z0-9_.-]+$/;

const argv = z
  .array(z.string().min(1, "an argument may not be empty"))
  .min(1, "a command needs at least the program name");

/** A path inside the release: relative, without . or .. components. */
const releasePath = z
  .string()
  .min(1)
  .refine((p) => !p.startsWith("/") && !p.split("/").some((part) => part === ".." || part === "."), "must be a relative path inside the release, without . or ..");

const envTable = z.record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, "not an environment variable name"), z.string());

/** A host of a fleet (`host_name`, a deployment's `hosts`): what a DNS label allows, and dots. */
export const HOST_NAME = /^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62}[A-Za-z0-9])?$/;
const hostName = z.string().regex(HOST_NAME, 'must be 1 to 64 letters, digits, ".", "_" or "-", starting and ending with a letter or digit (e.g. "web1")');

/** How a fleet deployment's hosts take a new commit: `parallel` at a time, the canary first, and what a failure does to the rest. */
export const RolloutConfig = z.strictObject({
  parallel: z.number().int("must be a whole number").min(1, "at least 1 host switches at a time").default(1),
  /** Switches first: the other hosts switch only once it is live and healthy on the commit. */
  canary: hostName.optional(),
  /** halt: the hosts that have not started skip the commit; rollback: the hosts that switched go back too. */
  on_failure: z.enum(["halt", "rollback"]).default("halt"),
});
export type RolloutConfig = z.infer<typeof RolloutConfig>;

/** pm2 app names: what pm2 accepts on its command line without surprises (no commas: --only takes a list). */
export const PM2_APP_NAME = /^[A-Za-z0-9][A-Za-z0-9._:@-]{0,99}$/;

export const Pm2Restart = z.strictObject({
  /** The ecosystem file, inside the release (loaded through `current`). */
  pm2: releasePath,
  /** Only these apps of the ecosystem file (default: all of them). */
  only: z.array(z.string().regex(PM2_APP_NAME, "not a pm2 app name (letters, digits, . _ : @ -)")).min(1).optional(),
  /** Environment for the apps, on top of the ecosystem file's own `env`. */
  env: envTable.default({}),
});
export type Pm2Restart = z.infer<typeof Pm2Restart>;

export const RestartConfig = z.union([Pm2Restart, z.strictObject({ script: argv })]);
export type RestartConfig = z.infer<typeof RestartConfig>;

export const HealthConfig = z.strictObject({
  /** Polled after the restart until it answers 2xx. */
  url: z.url({ protocol: /^https?$/, error: "must be an http:// or https:// URL" }),
  /** Give up (and roll back) after this many seconds. */
  timeout_s: z.number().positive().default(30),
});
export type HealthConfig = z.infer<typeof HealthConfig>;

/** A site is `<site>.conf`: the name is also the certificate name, so keep it to one tame path component. */
export const SITE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

export const NginxSites = z.strictObject({
  /** Folder in the release holding `<site>.conf` files. */
  sites_dir: releasePath.default("nginx/sites"),
  /** Where nginx includes them from (absolute; deployq writes only `<site>.conf` files here). */
  conf_dir: z.string().refine((p) => p.startsWith("/"), "must be an absolute path"),
  /** Glob patterns on site names (without .conf): a site is deployed if it matches include and not exclude. */
  include: z.array(z.string().min(1)).default(["*"]),
  exclude: z.array(z.string().min(1)).default([]),
  /** Per site, a URL that must answer (any status below 500) once nginx has reloaded. */
  verify: z.record(z.string().regex(SITE_NAME, "not a site name"), z.url({ protocol: /^https?$/ })).default({}),
  /** Request certificates for the sites' server names (needs a top-level [certbot] table). */
  certificates: z.boolean().default(true),
});
export type NginxSites = z.infer<typeof NginxSites>;

/**
 * [deployments.x.github]: this deployment's GitHub Deployments. Each key overrides the
 * top-level [github] one; unset, the environment is the deployment's name.
 */
export const DeploymentGithub = z.strictObject({
  /** Create a GitHub Deployment per deploy (default: [github] deployments). */
  deployments: z.boolean().optional(),
  /** The GitHub environment (the Environments page's name); default: the deployment's name. */
  environment: z
    .string()
    .min(1, "may not be empty (leave it out to use the deployment's name)")
    .max(255, "GitHub environment names have at most 255 characters")
    // eslint-disable-next-line no-control-regex
    .refine((e) => e.trim() === e && !/[\u0000-\u001f\u007f]/.test(e), "may not start or end with spaces or hold control characters")
    .optional(),
  /** GitHub's production_environment; unset: GitHub's default (true for an environment named "production"). */
  production_environment: z.boolean().optional(),
  /** Where the deployed app is reached; GitHub links the environment to it. */
  environment_url: z.url({ protocol: /^https?$/, error: "must be an http:// or https:// URL, such as https://api.example.com" }).optional(),
});
export type DeploymentGithub = z.infer<typeof DeploymentGithub>;

export const DeploymentConfig = z.strictObject({
  repository: z
    .string()
    .regex(REPOSITORY, 'must be "owner/name", as in the repository\'s GitHub URL'),
  branch: z
    .string()
    .min(1)
    .refine((b) => !b.startsWith("refs/"), 'give the branch name without "refs/heads/"'),
  remote: z.string().min(1),
  path: z.string().min(1),
  strategy: z.enum(["releases", "in-place"]).default("releases"),
  keep_releases: z.number().int().min(2).default(5),
  /** Deploy records (rows and log files) kept on this host; default: the top-level keep_deploys. */
  keep_deploys: z.number().int("must be a whole number").min(1, "must keep at least 1 deploy (the one that just finished)").optional(),
  commands: z.array(argv).default([]),
  restart: RestartConfig.optional(),
  /** After the restart: poll this URL; no 2xx within the timeout rolls the deploy back. */
  health: HealthConfig.optional(),
  /** nginx site files from the release, deployed (with their certificates) after the app is healthy. */
  nginx: NginxSites.optional(),
  enabled: z.boolean().default(true),
  /**
   * Paths linked from <path>/shared/ into every release (releases strategy). A trailing
   * "/" marks a directory (created when missing); a file must exist in shared/.
   */
  shared: z.array(releasePath).default([]),
  /** Extra environment for the build commands and the restart script (secrets belong in shared files, not here). */
  env: envTable.default({}),
  /** Each build command and the restart script is killed after this many seconds. */
  command_timeout_s: z.number().positive().default(900),
  /** Attempts for transient failures (remote unreachable, lock service down) before the entry is dead-lettered. */
  max_attempts: z.number().int().min(1).default(5),
  /** First retry delay; it doubles with each attempt, with jitter. */
  retry_backoff_s: z.number().positive().default(10),
  /**
   * When several pushes are waiting, deploy once the queue has been quiet this long (for at
   * most ten times this), so a burst costs one deploy of its newest commit. 0: never wait.
   * A single waiting push is deployed at once.
   */
  coalesce_ms: z.number().int().min(0).default(300),
  /**
   * Deploy a push only once these check runs or commit status contexts (by name, as GitHub
   * shows them on the commit) have succeeded on its commit; a failed one fails the deploy.
   * Needs GITHUB_TOKEN. `deployq deploy` and rollbacks are an operator's choice and are not held.
   */
  require_checks: z
    .array(z.string().trim().min(1, "a check name may not be empty").max(200, "a check name is at most 200 characters"))
    .refine((names) => new Set(names).size === names.length, "lists a check twice")
    .default([]),
  /** A push waiting for its required checks fails after this many seconds if they have not all succeeded. */
  checks_timeout_s: z.number().int().min(1).default(1800),
  /** GitHub Deployments of this deployment (with GITHUB_TOKEN). */
  github: DeploymentGithub.optional(),
  /**
   * The hosts (their `host_name`s) that serve this deployment, as one fleet: a push is
   * recorded once as a rollout in the shared Postgres, and each host deploys it in turn
   * (`rollout`). Absent: this host alone, as without a fleet.
   */
  hosts: z
    .array(hostName)
    .min(1, "list at least one host, or remove hosts (this host alone)")
    .refine((names) => new Set(names).size === names.length, "lists a host twice")
    .optional(),
  rollout: RolloutConfig.optional(),
}).superRefine((d, ctx) => {
  if (d.rollout && !d.hosts) ctx.addIssue({ code: "custom", path: ["rollout"], message: "a rollout is how the hosts of a fleet take turns: list them in hosts, or remove rollout" });
  if (d.rollout?.canary !== undefined && d.hosts && !d.hosts.includes(d.rollout.canary)) {
    ctx.addIssue({ code: "custom", path: ["rollout", "canary"], message: `"${d.rollout.canary}" is not one of hosts (${d.hosts.join(", ")}): name one of them, or remove canary` });
  }
});
export type DeploymentConfig = z.infer<typeof DeploymentConfig>;

/** A lock-name prefix: Redis-key characters only, no surrounding ":" (the names add their own). */
export const LOCK_PREFIX = /^[A-Za-z0-9](?:[A-Za-z0-9:._-]{0,62}[A-Za-z0-9])?$/;

/** A TCP port to listen on; 0 lets the system pick a free one. */
export const PORT = z.number().int().min(0).max(65535);

export const ServerConfig = z.strictObject({
  host: z.string().min(1).default("127.0.0.1"),
  /** --port and DEPLOYQ_PORT override it; 0: a free port the system picks (printed, and announced in data_dir/run). */
  port: PORT.default(3400),
  /**
   * The address people reach deployq at (behind a proxy: its public one), such as
   * "https://deploy.example.com". A browser connecting to /ws/v0 must come from this origin;
   * unset, browsers are refused (scripts and `deployq watch` send no Origin and are let in).
   */
  public_url: z
    .url({ protocol: /^https?$/, error: "must be an http(s) URL such as https://deploy.example.com" })
    .transform((u) => new URL(u).origin)
    .optional(),
  /**
   * The reverse proxies (addresses, CIDR ranges, or proxy-addr's "loopback", "linklocal",
   * "uniquelocal") whose X-Forwarded-For and X-Forwarded-Proto are believed: the client's
   * address is then the last one in X-Forwarded-For that is not such a proxy. Empty: never
   * believed, the client is the TCP peer.
   */
  trust_proxy: z
    .array(
      z.string().refine(isProxyEntry, {
        error: (issue) => `${JSON.stringify(issue.input)} is not an IP address or CIDR range: write it as "127.0.0.1", "10.0.0.0/8", "::1" or "fd00::/8" (or "loopback", "linklocal", "uniquelocal")`,
      }),
    )
    .default([]),
});

/**
 * Where `deployq workers`, which has no HTTP server of its own, serves GET /metrics. Without
 * a port it serves none. `deployq serve` and `deployq receiver` serve /metrics on [server]'s
 * address and ignore this table.
 */
export const MetricsConfig = z.strictObject({
  host: z.string().min(1).default("127.0.0.1"),
  /** 0: a free port the system picks (logged at start). */
  port: PORT.optional(),
});

const DEFAULT_NGINX = {
  test_command: ["sudo", "-n", "nginx", "-t"],
  reload_command: ["sudo", "-n", "systemctl", "reload", "nginx"],
  pid_file: "/run/nginx.pid",
  verify_timeout_s: 10,
};

/** How this host's nginx is tested and reloaded (the sites come from each deployment's [deployments.x.nginx]). */
export const NginxHost = z.strictObject({
  test_command: argv.default(DEFAULT_NGINX.test_command),
  reload_command: argv.default(DEFAULT_NGINX.reload_command),
  /** The nginx master's pid file: a reload took effect when the master runs new workers. */
  pid_file: z.string().refine((p) => p.startsWith("/"), "must be an absolute path").default(DEFAULT_NGINX.pid_file),
  /** How long to wait for the reload to take effect (new workers, verify URLs). */
  verify_timeout_s: z.number().positive().default(DEFAULT_NGINX.verify_timeout_s),
});
export type NginxHost = z.infer<typeof NginxHost>;

/** certbot, for the sites of deployments with nginx (absent: no certificates are requested). */
export const CertbotHost = z.strictObject({
  /** Called with `--cert-name <site> [--email <addr>] -d <domain>...` (the sudoers wrapper's interface). */
  command: argv.default(["sudo", "-n", "/usr/local/sbin/deployq-certbot"]),
  /** The ACME account email. */
  email: z.email().optional(),
  /** Where certbot writes HTTP-01 challenges; nginx must serve it at /.well-known/acme-challenge/ for every site. */
  webroot: z.string().refine((p) => p.startsWith("/"), "must be an absolute path").default("/var/www/letsencrypt"),
});
export type CertbotHost = z.infer<typeof CertbotHost>;

/**
 * Where the receiver serves the dashboard: one path prefix, so that nginx can proxy it (and
 * only it) as is. Absolute, no "." or ".." component, no trailing slash, URL-safe characters.
 */
export const DASHBOARD_PATH = /^(?:\/[A-Za-z0-9_~-][A-Za-z0-9._~-]*)+$/;

/** The receiver's other endpoints: a dashboard mounted there would hide them. */
const RESERVED_PATHS = ["/github-webhook", "/healthz", "/status", "/deliveries", "/metrics", "/ws"];
const RESERVED_PATHS_TEXT = RESERVED_PATHS.join(", ");

export const DashboardConfig = z.strictObject({
  path: z
    .string()
    .regex(DASHBOARD_PATH, 'must start with "/", have no trailing slash, and use letters, digits, - _ . ~ (e.g. "/dashboard" or "/deployq/dashboard")')
    .refine((p) => !p.split("/").some((part) => part === "." || part === ".."), 'may not contain "." or ".." components')
    .refine((p) => !RESERVED_PATHS.some((r) => p === r || p.startsWith(`${r}/`)), `may not be (or be under) one of the receiver's own paths: ${RESERVED_PATHS_TEXT}`)
    .default("/dashboard"),
});
export type DashboardConfig = z.infer<typeof DashboardConfig>;

/** Commit statuses to GitHub (on only with GITHUB_TOKEN; GITHUB_API_URL for GitHub Enterprise Server). */
export const GithubConfig = z.strictObject({
  /** Between two writes to the API: GitHub asks for at least a second between mutations (secondary rate limits). */
  write_interval_ms: z.number().int().min(0).default(1000),
  /** One request to the API is abandoned (and retried later) after this long. */
  timeout_ms: z.number().int().min(100).default(10_000),
  /** Also a GitHub Deployment per deploy, with its statuses (each deployment may say otherwise in [deployments.x.github]). */
  deployments: z.boolean().default(false),
  /**
   * Seconds between two looks at the repository webhooks' recent deliveries, to have GitHub
   * redeliver what deployq never received (src/github/redeliver.ts), also once at start.
   * 0: off. Off anyway without GITHUB_TOKEN or [server] public_url.
   */
  redeliver_interval_s: z.number().int("must be a whole number of seconds").min(0).default(300),
  /**
   * POST /github-webhook only from GitHub's webhook source addresses (GET /meta `hooks`,
   * cached in data_dir/github-meta.json, refreshed daily: src/github/meta.ts). The client's
   * address is the TCP peer, or behind a proxy listed in [server] trust_proxy, the one it forwards.
   */
  allowlist: z.boolean().default(false),
});

/** What a [[notify]] table may be told of (src/notify/notify.ts says when each happens). */
export const NOTIFY_EVENTS = ["failure", "recovered", "rollback", "dead-letter", "success"] as const;
export type NotifyEvent = (typeof NOTIFY_EVENTS)[number];

/**
 * The environment variables a notifier reads its URL and secret from: deployq's own, so
 * that what it deploys never gets them (pm2 apps get them blanked, as the other secrets).
 */
export const NOTIFY_ENV = /^DEPLOYQ_NOTIFY_[A-Z0-9_]{1,64}$/;
const notifyEnv = z.string().regex(NOTIFY_ENV, 'must be the name of an environment variable starting with DEPLOYQ_NOTIFY_ (such as "DEPLOYQ_NOTIFY_SLACK_URL"): deployq keeps those out of the apps it deploys');

/** One [[notify]] table: where to tell people what happened, in which format, and of what. */
export const NotifyConfig = z
  .strictObject({
    /** The environment variable holding the URL (a secret: a Slack or Discord webhook URL is its own credential). It names the notifier too. */
    url_env: notifyEnv,
    /** slack: Block Kit (Slack and Mattermost take it); discord: an embed; json: deployq's own document, signed. */
    format: z.enum(["slack", "discord", "json"], { error: 'must be "slack", "discord" or "json"' }),
    events: z
      .array(z.enum(NOTIFY_EVENTS, { error: `must be one of ${NOTIFY_EVENTS.join(", ")}` }))
      .min(1, `name at least one of ${NOTIFY_EVENTS.join(", ")}`)
      .default(["failure", "recovered", "rollback", "dead-letter"]),
    /** Only these deployments (default: every one). */
    deployments: z.array(z.string()).min(1, "leave it out to hear of every deployment").optional(),
    /** json: the environment variable holding the key of its X-Deployq-Signature-256 HMAC. */
    secret_env: notifyEnv.optional(),
  })
  .refine((n) => n.format !== "json" || n.secret_env !== undefined, { message: "a json notifier is signed: set secret_env to the variable holding its key", path: ["secret_env"] })
  .refine((n) => n.format === "json" || n.secret_env === undefined, { message: "only a json notifier is signed (Slack and Discord check nothing): remove secret_env", path: ["secret_env"] });
export type NotifyConfig = z.infer<typeof NotifyConfig>;

export const Config = z.strictObject({
  /** This host's name in a fleet, in `deploys` and in the logs; default: the machine's hostname. */
  host_name: hostName.optional(),
  server: ServerConfig.default({ host: "127.0.0.1", port: 3400, trust_proxy: [] }),
  metrics: MetricsConfig.default({ host: "127.0.0.1" }),
  /** Where the embedded database, lock files and deploy logs live. */
  data_dir: z.string().min(1).default("./data"),
  /** The queue root; DEPLOYQ_QUEUES_DIR overrides it. */
  queues_dir: z.string().min(1).default("./queues"),
  /** Milliseconds between full rescans of each queue directory (the watcher is only a hint). */
  rescan_interval_ms: z.number().int().min(50).default(5000),
  /** On SIGINT/SIGTERM a running command gets this long to finish before its process group is killed. */
  shutdown_grace_s: z.number().min(0).default(30),
  /** Lifetime of a distributed lock (REDIS_URL); it is extended at half its life while held. */
  lock_ttl_ms: z.number().int().min(500).default(30_000),
  /**
   * Every lock name starts with it (`<lock_prefix>:deployment:<name>`), so that two installs
   * sharing one Redis do not share locks. Default: `deployq:` and 8 hex digits of the queue
   * root's real path (src/lock/lock.ts defaultLockPrefix). Hosts of one fleet that must take
   * turns set the same value.
   */
  lock_prefix: z
    .string()
    .regex(LOCK_PREFIX, "must be 1 to 64 letters, digits, : . _ or -, starting and ending with a letter or digit (e.g. \"deployq:web1\")")
    .optional(),
  /** pm2's home for `restart = { pm2 = ... }`: the apps run under the pm2 daemon there. Default: PM2_HOME, else ~/.pm2. */
  pm2_home: z.string().min(1).optional(),
  /** Deploy records (rows and log files) kept per deployment on this host, newest first; a deployment's own keep_deploys wins. */
  keep_deploys: z.number().int("must be a whole number").min(1, "must keep at least 1 deploy (the one that just finished)").default(100),
  nginx: NginxHost.default(DEFAULT_NGINX),
  /** The dashboard (served by the receiver when DEPLOYQ_ADMIN_TOKEN is set). */
  dashboard: DashboardConfig.default({ path: "/dashboard" }),
  certbot: CertbotHost.optional(),
  github: GithubConfig.default({ write_interval_ms: 1000, timeout_ms: 10_000, deployments: false, redeliver_interval_s: 300, allowlist: false }),
  /** [[notify]]: Slack, Discord or any HTTP endpoint, told of failures, recoveries, rollbacks… through the outbox. */
  notify: z
    .array(NotifyConfig)
    .default([])
    .refine((list) => new Set(list.map((n) => n.url_env)).size === list.length, "two [[notify]] tables have the same url_env: each notifier is known by it, give each its own"),
  deployments: z
    .record(
      z.string().regex(DEPLOYMENT_NAME, "deployment names use letters, digits, - and _ (at most 64)"),
      DeploymentConfig,
    )
    .default({}),
});
export type Config = z.infer<typeof Config>;
