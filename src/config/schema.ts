import { z } from "zod";

/** Deployment names become directory names under queues/deployments/: keep them tame. */
export const DEPLOYMENT_NAME = /^[a-z0-9][a-z0-9_-]{0,63}$/i;
/** GitHub `owner/name`; both parts are restricted to what GitHub itself allows. */
const REPOSITORY = /^[A-Za-z0-9_.-]+\/[A-Za-z0-9_.-]+$/;

const argv = z
  .array(z.string().min(1, "an argument may not be empty"))
  .min(1, "a command needs at least the program name");

export const RestartConfig = z.union([
  z.strictObject({ pm2: z.string().min(1) }),
  z.strictObject({ script: argv }),
]);
export type RestartConfig = z.infer<typeof RestartConfig>;

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
  commands: z.array(argv).default([]),
  restart: RestartConfig.optional(),
  enabled: z.boolean().default(true),
  /**
   * Paths linked from <path>/shared/ into every release (releases strategy). A trailing
   * "/" marks a directory (created when missing); a file must exist in shared/.
   */
  shared: z
    .array(
      z
        .string()
        .min(1)
        .refine((p) => !p.startsWith("/") && !p.split("/").some((part) => part === ".." || part === "."), "must be a relative path inside the release, without . or .."),
    )
    .default([]),
  /** Extra environment for the build commands and the restart script (secrets belong in shared files, not here). */
  env: z.record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, "not an environment variable name"), z.string()).default({}),
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
});
export type DeploymentConfig = z.infer<typeof DeploymentConfig>;

export const ServerConfig = z.strictObject({
  host: z.string().min(1).default("127.0.0.1"),
  port: z.number().int().min(0).max(65535).default(3400),
});

export const Config = z.strictObject({
  server: ServerConfig.default({ host: "127.0.0.1", port: 3400 }),
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
  deployments: z
    .record(
      z.string().regex(DEPLOYMENT_NAME, "deployment names use letters, digits, - and _ (at most 64)"),
      DeploymentConfig,
    )
    .default({}),
});
export type Config = z.infer<typeof Config>;
