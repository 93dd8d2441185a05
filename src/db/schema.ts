import { sql } from "drizzle-orm";
import { bigint, bigserial, boolean, index, integer, jsonb, pgSequence, pgTable, text, timestamp, uniqueIndex } from "drizzle-orm/pg-core";

/**
 * Every delivery the receiver accepted (or a post-receive hook / admin enqueued), and what
 * became of it. (hook_id, delivery_id) is the dedupe key: GitHub keeps the delivery ID on a
 * redelivery, and one event can reach two hooks with the same delivery ID.
 */
export const deliveries = pgTable(
  "deliveries",
  {
    id: bigserial("id", { mode: "number" }).primaryKey(),
    /** X-GitHub-Hook-ID; "" when the sender has none (a post-receive hook, a planted file). */
    hookId: text("hook_id").notNull(),
    deliveryId: text("delivery_id").notNull(),
    event: text("event").notNull(),
    repository: text("repository"),
    ref: text("ref"),
    afterSha: text("after_sha"),
    receivedAt: timestamp("received_at", { withTimezone: true }).notNull().defaultNow(),
    /** The queue entry's file name (the same name in every queue it passes through). */
    entry: text("entry"),
    /** queued | ping | routed | voided | dead-letter */
    outcome: text("outcome").notNull(),
    /** Why it was voided or dead-lettered. */
    reason: text("reason"),
    /** The deployments it was handed to. */
    routedTo: jsonb("routed_to").$type<string[]>(),
    /** How many redeliveries of it were answered "duplicate". */
    duplicates: integer("duplicates").notNull().default(0),
    updatedAt: timestamp("updated_at", { withTimezone: true }).notNull().defaultNow(),
  },
  (t) => [
    uniqueIndex("deliveries_hook_delivery_key").on(t.hookId, t.deliveryId),
    index("deliveries_received_at_idx").on(t.receivedAt),
  ],
);

export type Delivery = typeof deliveries.$inferSelect;
export type DeliveryOutcome = "queued" | "ping" | "routed" | "voided" | "dead-letter";

/**
 * One row per deploy attempt (and per superseded or already-deployed entry, so that nothing
 * is dropped silently). `running` rows left by a process that died are found at start.
 */
export const deploys = pgTable(
  "deploys",
  {
    id: bigserial("id", { mode: "number" }).primaryKey(),
    deployment: text("deployment").notNull(),
    /** The queue entry's file name. */
    entry: text("entry").notNull(),
    deliveryId: text("delivery_id"),
    /** push (webhook, post-receive), deploy (`deployq deploy`), rollback (`deployq rollback`). */
    event: text("event").notNull(),
    ref: text("ref"),
    /** The commit this row deployed (or, when superseded, the one it would have). */
    sha: text("sha"),
    /**
     * The commit a push entry named, when its branch had moved on by the time it was taken:
     * the branch's head (`sha`) was deployed instead. A push never moves a deployment back.
     */
    requestedSha: text("requested_sha"),
    /** running | succeeded | failed | retrying | superseded | already-deployed | interrupted | cancelled */
    status: text("status").notNull(),
    attempt: integer("attempt").notNull().default(1),
    host: text("host").notNull(),
    pid: integer("pid").notNull(),
    startedAt: timestamp("started_at", { withTimezone: true }).notNull().defaultNow(),
    finishedAt: timestamp("finished_at", { withTimezone: true }),
    durationMs: integer("duration_ms"),
    release: text("release"),
    previousRelease: text("previous_release"),
    logPath: text("log_path"),
    error: text("error"),
    exitCode: integer("exit_code"),
    signal: text("signal"),
    /**
     * For superseded entries: what won, either a newer entry (its file name) or, for a push
     * whose branch had moved on to a commit that was already live, that commit's sha.
     */
    supersededBy: text("superseded_by"),
    /**
     * From deploy_fencing_seq, taken once per lock acquisition. A worker whose lock
     * expired (paused, partitioned) finds a newer token here and does not switch `current`.
     */
    fencingToken: bigint("fencing_token", { mode: "number" }),
  },
  (t) => [
    index("deploys_deployment_started_idx").on(t.deployment, t.startedAt),
    index("deploys_status_idx").on(t.status),
    // A deployment's newest rows (status, the dashboard, latestDeploys): `where deployment = … order by id desc limit …`.
    index("deploys_deployment_id_idx").on(t.deployment, t.id),
  ],
);

export const deployFencingSeq = pgSequence("deploy_fencing_seq");

export type Deploy = typeof deploys.$inferSelect;
export type DeployStatus = "running" | "succeeded" | "failed" | "retrying" | "superseded" | "already-deployed" | "interrupted" | "cancelled";

/**
 * The steps of each deploy, in order, with their durations: what the dashboard's timeline
 * and the step histograms show, kept across restarts. Removed with their deploy (pruning).
 * A deploy killed with its process keeps the steps it finished.
 */
export const deploySteps = pgTable(
  "deploy_steps",
  {
    id: bigserial("id", { mode: "number" }).primaryKey(),
    deployId: bigint("deploy_id", { mode: "number" })
      .notNull()
      .references(() => deploys.id, { onDelete: "cascade" }),
    /** 0, 1, 2 … in the order they ran. */
    position: integer("position").notNull(),
    /** fetch | checkout | build | switch | restart | health-check | nginx | prune | rollback | resume | rollout (events/types.ts STEP_KINDS) */
    kind: text("kind").notNull(),
    /** As the deploy's log heads it (with its sha, path or release). */
    title: text("title").notNull(),
    startedAt: timestamp("started_at", { withTimezone: true }).notNull(),
    finishedAt: timestamp("finished_at", { withTimezone: true }).notNull(),
    durationMs: integer("duration_ms").notNull(),
    ok: boolean("ok").notNull(),
    /** The exit status of the command that failed the step, if one did. */
    exitCode: integer("exit_code"),
  },
  (t) => [uniqueIndex("deploy_steps_deploy_position_key").on(t.deployId, t.position)],
);

export type DeployStep = typeof deploySteps.$inferSelect;

/**
 * The event stream (src/events), as every process emitted it: the id is the sequence
 * number a dashboard page or a /ws/v0 client resumes from. Pruned to the newest
 * EVENTS_KEPT rows. Log lines are not events here: they are read from the deploy's log.
 */
export const events = pgTable(
  "events",
  {
    id: bigserial("id", { mode: "number" }).primaryKey(),
    at: timestamp("at", { withTimezone: true }).notNull(),
    /** delivery | deploy | lock */
    kind: text("kind").notNull(),
    name: text("name").notNull(),
    deployment: text("deployment"),
    /** The whole event (StampedEvent). */
    data: jsonb("data").notNull(),
  },
  (t) => [index("events_deployment_id_idx").on(t.deployment, t.id)],
);

/**
 * What an admin did by hand (the dashboard's actions): when, from where, what, and whether it
 * was done or refused. Kept apart from deploys: an action queues an entry, whose deploy
 * has its own row.
 */
export const adminActions = pgTable(
  "admin_actions",
  {
    id: bigserial("id", { mode: "number" }).primaryKey(),
    at: timestamp("at", { withTimezone: true }).notNull().defaultNow(),
    /** dashboard (the CLI's actions are in the entries' `source` and the shell's history). */
    origin: text("origin").notNull(),
    /** deploy | rollback | requeue | flush */
    action: text("action").notNull(),
    deployment: text("deployment"),
    /** The action's arguments (ref, release, queue, entry). */
    details: jsonb("details").$type<Record<string, unknown>>().notNull(),
    ok: boolean("ok").notNull(),
    /** What was done, or why it was refused. */
    message: text("message").notNull(),
    /** The client's address as the receiver saw it. */
    client: text("client"),
  },
  (t) => [index("admin_actions_deployment_id_idx").on(t.deployment, t.id)],
);

export type AdminAction = typeof adminActions.$inferSelect;

/**
 * The dashboard's sessions, in the database so that every receiver instance (pm2 runs two)
 * knows them and a restart logs nobody out. The id is kept only as its SHA-256: a reader of
 * this table cannot log in with what it holds.
 */
export const dashboardSessions = pgTable(
  "dashboard_sessions",
  {
    /** SHA-256 (hex) of the session id the cookie carries. */
    idHash: text("id_hash").primaryKey(),
    /** The CSRF token every state-changing request of this session carries. */
    csrf: text("csrf").notNull(),
    createdAt: timestamp("created_at", { withTimezone: true }).notNull(),
    expiresAt: timestamp("expires_at", { withTimezone: true }).notNull(),
    /** The result of the last action, shown once on the next page, then cleared. */
    flash: jsonb("flash").$type<{ kind: "ok" | "error"; text: string }>(),
  },
  (t) => [index("dashboard_sessions_expires_at_idx").on(t.expiresAt)],
);

/**
 * What deployq has to tell GitHub (src/github/): commit statuses, Deployments and their
 * statuses, each row one request of its `kind`, written in the same transaction as the
 * deploy row change it reports (or, for "queued", before the entry is handed to its
 * deployment), and delivered later by the one sender, which never runs inside a deploy.
 * Rows of one `key` are sent in id order; of a run of collapsible rows only the newest
 * unsent one needs sending, and a row that is not collapsible (a creation) is always sent,
 * before anything written after it (see src/github/outbox.ts for why that order is safe).
 */
export const githubOutbox = pgTable(
  "github_outbox",
  {
    id: bigserial("id", { mode: "number" }).primaryKey(),
    createdAt: timestamp("created_at", { withTimezone: true }).notNull().defaultNow(),
    /** owner/name, from the configuration (never from a payload). */
    repository: text("repository").notNull(),
    /** 40 (or 64) hex digits, validated before the row is written. */
    sha: text("sha").notNull(),
    /** status | deployment (create one) | deployment_status: which request the sender makes (src/github/sender.ts). */
    kind: text("kind").notNull().default("status"),
    /** Rows of one key are sent in id order: status:<repository>@<sha>:<context>, deployment:<github_deployments id>. */
    key: text("key").notNull(),
    /** false: always sent, never replaced by a newer row of its key (a deployment's creation). */
    collapsible: boolean("collapsible").notNull().default(true),
    /** What the kind needs beyond the columns below (for a deployment: its github_deployments row, environment …). */
    payload: jsonb("payload").$type<Record<string, unknown>>(),
    /** deployq/<deployment> */
    context: text("context").notNull(),
    /** A commit status's pending | success | failure | error; a deployment status's queued | in_progress | success | failure | error | inactive; "create" for a creation. */
    state: text("state").notNull(),
    description: text("description").notNull(),
    targetUrl: text("target_url"),
    deployment: text("deployment").notNull(),
    deployId: bigint("deploy_id", { mode: "number" }),
    /** null while it waits; sent | collapsed (a newer state of its key was sent instead) | gave-up (a permanent answer) */
    result: text("result"),
    attempts: integer("attempts").notNull().default(0),
    lastError: text("last_error"),
    lastAttemptAt: timestamp("last_attempt_at", { withTimezone: true }),
    sentAt: timestamp("sent_at", { withTimezone: true }),
  },
  (t) => [
    index("github_outbox_key_idx").on(t.key, t.id),
    index("github_outbox_unsent_idx").on(t.id).where(sql`${t.result} is null`),
  ],
);

export type GithubOutboxRow = typeof githubOutbox.$inferSelect;

/**
 * Which process sends the outbox (one at a time, so that two workers processes never send
 * one key's states out of order): a lease that its holder renews before each send.
 */
export const githubSender = pgTable("github_sender", {
  id: integer("id").primaryKey(),
  owner: text("owner").notNull(),
  leaseUntil: timestamp("lease_until", { withTimezone: true }).notNull(),
});

/**
 * The GitHub Deployments deployq creates ([github] deployments): one per queue entry, per
 * deployment and per commit it deployed (a push whose branch moved on deploys the head: a
 * second one, for that commit). The row is written with the outbox row that creates it;
 * `github_id` is stored when GitHub answers, so that a restart never creates it twice and
 * every status of it goes to that id. `live`: the one of its environment that is live now
 * (its newest success), which the next success marks inactive.
 */
export const githubDeployments = pgTable(
  "github_deployments",
  {
    id: bigserial("id", { mode: "number" }).primaryKey(),
    createdAt: timestamp("created_at", { withTimezone: true }).notNull().defaultNow(),
    deployment: text("deployment").notNull(),
    /** The queue entry's file name. */
    entry: text("entry").notNull(),
    sha: text("sha").notNull(),
    repository: text("repository").notNull(),
    environment: text("environment").notNull(),
    /** The first deploy that reported on it (null: created when the entry was queued). */
    deployId: bigint("deploy_id", { mode: "number" }),
    /** GitHub's id, once POST /repos/{owner}/{repo}/deployments has answered. */
    githubId: bigint("github_id", { mode: "number" }),
    live: boolean("live").notNull().default(false),
  },
  (t) => [
    uniqueIndex("github_deployments_key").on(t.deployment, t.entry, t.sha),
    index("github_deployments_live_idx").on(t.repository, t.environment).where(sql`${t.live}`),
  ],
);

export type GithubDeploymentRow = typeof githubDeployments.$inferSelect;

/**
 * Lost-delivery recovery (src/github/redeliver.ts), per repository webhook deployq found
 * pointing at its public_url: the newest GitHub delivery id it has looked at, so that the
 * next pass lists deliveries back to it only (GitHub's delivery ids grow with time).
 */
export const githubHookCursors = pgTable("github_hook_cursors", {
  hookId: bigint("hook_id", { mode: "number" }).primaryKey(),
  repository: text("repository").notNull(),
  lastDeliveryId: bigint("last_delivery_id", { mode: "number" }).notNull(),
  updatedAt: timestamp("updated_at", { withTimezone: true }).notNull().defaultNow(),
});

/**
 * The redeliveries deployq asked GitHub for, one row per (hook, GUID): a GUID is asked for
 * again only once GitHub shows how the previous redelivery went (a delivery of that GUID
 * with an id above `seenUpTo`) and it failed, at most a few times.
 */
export const githubRedeliveries = pgTable(
  "github_redeliveries",
  {
    hookId: bigint("hook_id", { mode: "number" }).notNull(),
    guid: text("guid").notNull(),
    repository: text("repository").notNull(),
    event: text("event").notNull(),
    /** The delivery redelivered last (GitHub's id). */
    deliveryId: bigint("delivery_id", { mode: "number" }).notNull(),
    /** The greatest delivery id of this GUID when it was asked for: a greater one is that redelivery's outcome. */
    seenUpTo: bigint("seen_up_to", { mode: "number" }).notNull(),
    requests: integer("requests").notNull().default(1),
    requestedAt: timestamp("requested_at", { withTimezone: true }).notNull().defaultNow(),
  },
  (t) => [uniqueIndex("github_redeliveries_hook_guid_key").on(t.hookId, t.guid)],
);

/** Named leases (one process at a time does a named job, such as `redeliver:<public_url>`); a holder that dies loses it when it expires. */
export const githubLeases = pgTable("github_leases", {
  name: text("name").primaryKey(),
  owner: text("owner").notNull(),
  leaseUntil: timestamp("lease_until", { withTimezone: true }).notNull(),
});

/**
 * Whether a deployment's deploys are failing, for [[notify]]: a failure notifies once, when
 * a deployment starts failing, and the first success after it notifies `recovered`.
 * Updated in the transaction of the deploy row that changes it.
 */
export const notifyState = pgTable("notify_state", {
  deployment: text("deployment").primaryKey(),
  failing: boolean("failing").notNull(),
  /** When the failures began (null while it is not failing). */
  failingSince: timestamp("failing_since", { withTimezone: true }),
  /** Failed deploys since then. */
  failures: integer("failures").notNull().default(0),
  updatedAt: timestamp("updated_at", { withTimezone: true }).notNull().defaultNow(),
});

/**
 * One push to a fleet deployment (one with `hosts`), recorded by the router in the
 * transaction that marks its delivery routed: which commit, which hosts must take it, and
 * how (src/fleet/). Each host writes `body` into its own deployment queue once; newer
 * rollouts of a deployment supersede the running ones.
 */
export const rollouts = pgTable(
  "rollouts",
  {
    id: bigserial("id", { mode: "number" }).primaryKey(),
    deployment: text("deployment").notNull(),
    /** The router entry's file name: the same name in every host's queue. */
    entry: text("entry").notNull(),
    deliveryId: text("delivery_id"),
    ref: text("ref"),
    sha: text("sha"),
    /** The hosts it must reach, as the config listed them when it was routed. */
    hosts: jsonb("hosts").$type<string[]>().notNull(),
    parallel: integer("parallel").notNull(),
    canary: text("canary"),
    /** halt | rollback */
    onFailure: text("on_failure").notNull(),
    /** running | succeeded | halted | rolled-back | superseded */
    state: text("state").notNull().default("running"),
    /** The newer rollout that superseded it. */
    supersededBy: bigint("superseded_by", { mode: "number" }),
    /** A failed rollout: the host and step that failed, and why. */
    failedHost: text("failed_host"),
    failedStep: text("failed_step"),
    reason: text("reason"),
    /** The entry as each host writes it into its queue (JSON). */
    body: text("body").notNull(),
    createdAt: timestamp("created_at", { withTimezone: true }).notNull().defaultNow(),
    finishedAt: timestamp("finished_at", { withTimezone: true }),
  },
  (t) => [uniqueIndex("rollouts_deployment_entry_key").on(t.deployment, t.entry), index("rollouts_deployment_id_idx").on(t.deployment, t.id)],
);
export type Rollout = typeof rollouts.$inferSelect;
export type RolloutState = "running" | "succeeded" | "halted" | "rolled-back" | "superseded";

/**
 * One host's part in a rollout: inserted once, when the host has its entry on disk (the
 * hand-over), then moved along by its deployment worker. `switchStartedAt`..`switchEndedAt`
 * is the time the host held a rollout slot: from the switch until it was healthy.
 */
export const rolloutHosts = pgTable(
  "rollout_hosts",
  {
    rolloutId: bigint("rollout_id", { mode: "number" })
      .notNull()
      .references(() => rollouts.id, { onDelete: "cascade" }),
    host: text("host").notNull(),
    /** queued | deploying | succeeded | failed | halted | superseded | rolling-back | rolled-back */
    state: text("state").notNull(),
    deployId: bigint("deploy_id", { mode: "number" }),
    release: text("release"),
    /** What was current before this host switched: where a rollback of the rollout takes it. */
    previousRelease: text("previous_release"),
    step: text("step"),
    error: text("error"),
    handedAt: timestamp("handed_at", { withTimezone: true }).notNull().defaultNow(),
    switchStartedAt: timestamp("switch_started_at", { withTimezone: true }),
    switchEndedAt: timestamp("switch_ended_at", { withTimezone: true }),
    updatedAt: timestamp("updated_at", { withTimezone: true }).notNull().defaultNow(),
  },
  (t) => [uniqueIndex("rollout_hosts_rollout_host_key").on(t.rolloutId, t.host)],
);
export type RolloutHost = typeof rolloutHosts.$inferSelect;
export type RolloutHostState = "queued" | "deploying" | "succeeded" | "failed" | "halted" | "superseded" | "rolling-back" | "rolled-back";

/** The hosts of the fleet, as their workers last checked in (`deployq check` and `status` show who has been seen). */
export const fleetHosts = pgTable("fleet_hosts", {
  host: text("host").primaryKey(),
  pid: integer("pid").notNull(),
  lastSeen: timestamp("last_seen", { withTimezone: true }).notNull().defaultNow(),
});
