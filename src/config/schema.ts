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
  deployments: z
    .record(
      z.string().regex(DEPLOYMENT_NAME, "deployment names use letters, digits, - and _ (at most 64)"),
      DeploymentConfig,
    )
    .default({}),
});
export type Config = z.infer<typeof Config>;
