// pm2 process file for deployq: the webhook receiver and the workers as two apps.
//
//   pm2 start ecosystem.config.cjs --env production     # or: pm2-runtime ecosystem.config.cjs --env production (systemd)
//   pm2 reload ecosystem.config.cjs                      # after an upgrade: drains, then starts the new code
//   pm2 stop ecosystem.config.cjs / pm2 delete ecosystem.config.cjs
//
// CommonJS (.cjs) because the package is "type": "module". The file is evaluated by the pm2
// command you type, in your shell's environment: the apps get that environment, with the
// values below on top. Secrets are never written here: GITHUB_WEBHOOK_SECRET, DATABASE_URL,
// REDIS_URL and GITHUB_TOKEN come from the environment pm2 is started with (under systemd, the
// unit's EnvironmentFile=).
//
// Environment read here (all optional except DATABASE_URL):
//   DATABASE_URL              required: the receiver and the workers are two processes, and the
//                             embedded PGlite database allows one process only
//   DEPLOYQ_CONFIG            the TOML file; default ./deployq.toml in this folder, and
//                             /etc/deployq/deployq.toml with --env production
//   DEPLOYQ_PM2_LOG_DIR       where pm2 writes the apps' stdout/stderr; default ./logs in this folder
//   DEPLOYQ_PM2_KILL_TIMEOUT_MS  see kill_timeout below; default 40000
//
// Shutdown: pm2 stop / restart / reload send SIGINT. deployq then drains (the receiver stops
// accepting and finishes its requests; a worker lets a running command go on for
// shutdown_grace_s, then kills it and leaves its entry queued) and exits. pm2 sends SIGKILL
// kill_timeout ms after SIGINT, so kill_timeout MUST EXCEED shutdown_grace_s (default 30 s)
// plus a few seconds: raise DEPLOYQ_PM2_KILL_TIMEOUT_MS when you raise shutdown_grace_s.
// Even a SIGKILL loses nothing acknowledged (the queues are on disk), but it turns a clean
// stop into an interrupted deploy that is redone at the next start.
//
// Reload: these are fork-mode apps (one process each; the receiver owns its port), and for
// fork mode pm2's "reload" is a restart: the old process is stopped (drained) first, then the
// new one is started. The receiver's port is closed in between, so GitHub gets "connection
// refused" for a delivery in that window (it records the delivery as failed; redeliver it from
// the webhook's settings or the REST API): nothing that was answered 2xx is lost.
"use strict";

const fs = require("node:fs");
const path = require("node:path");

const env = process.env;

// The pm2 command evaluating this file: `pm2 <command> ecosystem.config.cjs`, or
// `pm2-runtime [start] ecosystem.config.cjs`, whose first argument is this file.
const command = process.argv.slice(2).find((arg) => !arg.startsWith("-"));
// Commands that only act on apps already running do not need what starting one needs, so
// that `pm2 stop|delete ecosystem.config.cjs` works from any shell.
const onlyActsOnRunningApps = new Set(["stop", "delete", "del", "kill", "flush", "reloadLogs", "describe", "show", "logs", "jlist", "ls", "list", "status"]);

if (!env.DATABASE_URL && !onlyActsOnRunningApps.has(command)) {
  throw new Error(
    "deployq's ecosystem.config.cjs: DATABASE_URL is not set. pm2 runs `deployq receiver` and `deployq workers` " +
      "as two processes, and the embedded PGlite database (used when DATABASE_URL is unset) allows one process " +
      "only. Set DATABASE_URL to a Postgres URL in the environment pm2 is started with (under systemd: the " +
      "unit's EnvironmentFile), or run `deployq serve` (one process) instead.",
  );
}

const logDir = path.resolve(env.DEPLOYQ_PM2_LOG_DIR || path.join(__dirname, "logs"));
if (!onlyActsOnRunningApps.has(command)) fs.mkdirSync(logDir, { recursive: true });

const killTimeoutMs = Number.parseInt(env.DEPLOYQ_PM2_KILL_TIMEOUT_MS || "40000", 10);
if (!Number.isInteger(killTimeoutMs) || killTimeoutMs <= 0) {
  throw new Error(`deployq's ecosystem.config.cjs: DEPLOYQ_PM2_KILL_TIMEOUT_MS must be a number of milliseconds, not ${JSON.stringify(env.DEPLOYQ_PM2_KILL_TIMEOUT_MS)}`);
}

// A relative DEPLOYQ_CONFIG means relative to where the pm2 command was typed, not to this folder.
const configFromEnv = env.DEPLOYQ_CONFIG ? path.resolve(env.DEPLOYQ_CONFIG) : undefined;

/** What both apps share; `role` is the deployq command each one runs. */
function app(name, role) {
  return {
    name,
    script: path.join(__dirname, "bin", "deployq.js"),
    args: [role],
    cwd: __dirname,
    exec_mode: "fork",
    instances: 1,

    // Start: deployq sends "ready" once the receiver listens / the workers have scanned their
    // queues (after migrating the database). Until then pm2 shows the app as launching, and
    // `pm2 start` / `pm2 reload` wait for it, at most listen_timeout ms.
    wait_ready: true,
    listen_timeout: 30_000,

    // Stop: SIGINT (the first drains, see above), then SIGKILL after kill_timeout.
    kill_timeout: killTimeoutMs,
    // Signal deployq's main process only. pm2's default (treekill) also sends SIGINT to every
    // descendant, which would interrupt a running build at once instead of letting it finish
    // within shutdown_grace_s; deployq stops its own commands (their process groups) itself.
    treekill: false,

    // Crashes: restart, with a delay growing from 100 ms (doubling, capped at 15 s by pm2) and
    // reset once the app stays up. max_restarts counts quick crashes only (up less than
    // min_uptime): a config error stops being retried instead of looping forever.
    autorestart: true,
    min_uptime: 10_000,
    max_restarts: 10,
    exp_backoff_restart_delay: 100,
    watch: false,

    // Logs: deployq writes JSON lines (pino, each with its own "time"), so pm2 adds no prefix
    // (`time: false`) and the files stay readable with jq.
    out_file: path.join(logDir, `${name}.out.log`),
    error_file: path.join(logDir, `${name}.err.log`),
    merge_logs: true,
    time: false,

    // `--env production` applies env_production over env. pm2 keeps an app's environment
    // across restarts and merges a reload's on top of it, so `env` sets nothing that would
    // undo production on a `pm2 reload` typed without `--env production`.
    env: configFromEnv ? { DEPLOYQ_CONFIG: configFromEnv } : {},
    env_production: {
      NODE_ENV: "production",
      DEPLOYQ_CONFIG: configFromEnv || "/etc/deployq/deployq.toml",
    },
  };
}

module.exports = {
  apps: [app("deployq-receiver", "receiver"), app("deployq-workers", "workers")],
};
