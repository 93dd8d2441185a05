// pm2 process file for deployq: the webhook receiver and the workers as two apps.
//
//   pm2 start ecosystem.config.cjs --env production     # or: pm2-runtime ecosystem.config.cjs --env production (systemd)
//   pm2 reload ecosystem.config.cjs                      # after an upgrade: drains, then starts the new code
//   pm2 stop ecosystem.config.cjs / pm2 delete ecosystem.config.cjs
//
// CommonJS (.cjs) because the package is "type": "module". The file is evaluated by the pm2
// command you type, in your shell's environment (under systemd: inside pm2-runtime, which is
// pm2's daemon itself): the apps get that environment, with the values below on top.
//
// Secrets (GITHUB_WEBHOOK_SECRET, DATABASE_URL, REDIS_URL, GITHUB_TOKEN, DEPLOYQ_ADMIN_TOKEN) are never written
// here. In production they are in a file named by DEPLOYQ_ENV_FILE (the unit sets
// DEPLOYQ_ENV_FILE=/etc/deployq/env), which this file reads and puts into the `env` of these
// two apps only. They must not be in the environment of the command that starts pm2's
// daemon (pm2-runtime, or the first `pm2 ...` typed in a shell): the daemon keeps that
// environment for good, and every cluster-mode app it runs gets it, because pm2 forks cluster
// workers with node's cluster.fork, which copies the daemon's whole process.env
// (node_modules/pm2/lib/God/ClusterMode.js; fork-mode apps get only their own pm2 env,
// God/ForkMode.js). The apps deployq deploys with `restart = { pm2 = ... }` run under this
// same daemon (the same PM2_HOME), so they would see deployq's secrets
// (test/integration/pm2-secrets.test.ts). pm2's `filter_env` does not help: it filters only
// the environment of the CLI that starts an app (Common.prepareAppConf), not the daemon's
// (checked with pm2 7.0.4: a cluster app with filter_env still saw them).
// Without DEPLOYQ_ENV_FILE (development) the secrets come from the environment pm2 is started
// with, as before, and this file warns that a daemon started from it hands them on to
// cluster-mode apps.
//
// Environment read here (and in the DEPLOYQ_ENV_FILE file, whose values win):
//   DEPLOYQ_ENV_FILE          optional: the file of deployq's own variables (see readEnvFile
//                             below for its format), given to these two apps only
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
// Reload: the receiver runs in pm2's cluster mode, two instances, and `pm2 reload` replaces them
// one at a time: pm2 starts the new instance, waits for its "ready" (wait_ready), and only then
// sends the old one SIGINT (God/Reload.js, hardReload; `reload` acts on at most one id at a time
// when an app has two, API.js _operate). In cluster mode the listening socket belongs to pm2's
// daemon (node's cluster primary), which hands each connection to an instance that listens
// (round robin): the port never closes, so GitHub never gets "connection refused" during a
// reload or an upgrade, and a crash of one instance leaves the other serving. The two instances
// share the dedupe and the group commit through Postgres, so a delivery is queued once whichever
// takes it. The workers stay one fork-mode process (in-process locks need one process; with
// REDIS_URL several could run, but one per host is enough): its reload drains it, then starts the
// new one, and entries wait in their queues meanwhile. A reload evaluates this file again, so it
// reads DEPLOYQ_ENV_FILE again: changed and added variables reach the new processes (pm2 merges
// them over the old environment, so a variable removed from the file stays until the apps are
// deleted and started again, e.g. systemctl restart).
//
// How pm2 7 runs a cluster instance (lib/God/ClusterMode.js, lib/ProcessContainer.js): it forks
// its own ProcessContainer.js with node's cluster.fork, which import()s bin/deployq.js (an ES
// module, "type": "module") after appending `args` to process.argv; `interpreter` does not apply
// (it always runs the daemon's own node) and `node_args` become the worker's execArgv, so
// bin/deployq.js registers tsx itself and needs neither. The instance's argv starts with the
// daemon's own arguments (cluster.fork's default; under pm2-runtime: `start ecosystem.config.cjs
// --env production`) and ends with `args`: src/cli/deployq.ts (commandLine) keeps the app's. The instance's stdout is pm2's hook on
// process.stdout.write, not fd 1 (see src/log.ts). Stopping an instance is the same SIGINT as in
// fork mode (shutdown_with_message is off), and deployq's drain then closes the instance's server,
// so the daemon stops handing it connections while it finishes its requests.
"use strict";

const fs = require("node:fs");
const path = require("node:path");

// The pm2 command evaluating this file: `pm2 <command> ecosystem.config.cjs`, or
// `pm2-runtime [start] ecosystem.config.cjs`, whose first argument is this file.
const command = process.argv.slice(2).find((arg) => !arg.startsWith("-"));
// Commands that only act on apps already running do not need what starting one needs, so
// that `pm2 stop|delete ecosystem.config.cjs` works from any shell.
const onlyActsOnRunningApps = new Set(["stop", "delete", "del", "kill", "flush", "reloadLogs", "describe", "show", "logs", "jlist", "ls", "list", "status"]);
const startsApps = !onlyActsOnRunningApps.has(command);

/**
 * A configuration error ends the pm2 command evaluating this file with EX_CONFIG (78). A
 * thrown error is not enough: pm2 catches it, logs it and goes on with no app, so
 * `pm2-runtime` exits 0 (systemd sees a clean stop, and the unit looks merely inactive) and
 * `pm2 start|reload` exit 0 too. The unit does not restart on 78 (RestartPreventExitStatus):
 * it shows "failed", with this message in the journal.
 */
/** Never returns. */
function refuse(message) {
  process.stderr.write(`deployq's ecosystem.config.cjs: ${message}\n`);
  process.exit(78);
}

/** The variables of deployq's own that must never reach another app (see above). */
// The same list as SECRET_VARIABLES in src/config/load.ts.
const SECRET_NAMES = ["GITHUB_WEBHOOK_SECRET", "DATABASE_URL", "REDIS_URL", "GITHUB_TOKEN", "DEPLOYQ_ADMIN_TOKEN"];

/**
 * Reads DEPLOYQ_ENV_FILE: the subset of systemd's EnvironmentFile= syntax that both agree on,
 * so that the same file also works with `systemd-run -p EnvironmentFile=...`:
 *   NAME=value        one per line; spaces around the value are dropped, quotes inside it kept
 *   NAME='value'      verbatim (a backslash too), no ' inside
 *   NAME="value"      verbatim, no " nor backslash inside
 *   # comment, ; comment, blank lines
 * A line it cannot read exactly as systemd would (no `=`, `export NAME=...`, a name that is not
 * [A-Za-z_][A-Za-z0-9_]*, a backslash escape, an unclosed or multi-line quote) is refused with
 * its line number: never guessed, and never printed (it may hold a secret).
 */
function readEnvFile(file) {
  const problem = (what) => refuse(`DEPLOYQ_ENV_FILE ${file}: ${what} (the file holds NAME=value lines, # comments; see the top of ecosystem.config.cjs)`);
  let text;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (err) {
    return problem(`cannot be read (${err.code || err.message}): the user running pm2 must be able to read it`);
  }
  // systemd's whitespace: space, tab, CR (not JavaScript's trim(), which also drops e.g. U+00A0).
  const trim = (t) => t.replace(/^[ \t\r]+|[ \t\r]+$/g, "");
  const vars = {};
  text
    .replace(/^\uFEFF/, "")
    .split("\n")
    .forEach((raw, i) => {
      const line = trim(raw);
      if (line === "" || line.startsWith("#") || line.startsWith(";")) return;
      const at = `line ${i + 1}`;
      const eq = line.indexOf("=");
      const name = eq < 0 ? "" : trim(line.slice(0, eq));
      if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) {
        return problem(`${at} is not NAME=value (a name of letters, digits and _, then =; no \`export\`)`);
      }
      let value = trim(line.slice(eq + 1));
      const quote = value[0];
      if (quote === "'" || quote === '"') {
        const inner = value.slice(1, -1);
        if (value.length < 2 || !value.endsWith(quote) || inner.includes(quote) || (quote === '"' && inner.includes("\\"))) {
          return problem(
            `${at} (${name}): a quoted value must close on the same line with the same quote, and hold no ${quote}${quote === '"' ? " nor backslash" : ""}; ` +
              `use single quotes for a value with backslashes or double quotes`,
          );
        }
        value = inner;
      } else if (value.includes("\\")) {
        return problem(`${at} (${name}): systemd reads a backslash in an unquoted value as an escape, which this file does not support: put the value in single quotes`);
      }
      vars[name] = value;
    });
  return vars;
}

// deployq's own variables from DEPLOYQ_ENV_FILE: into the two apps' `env` below, never into
// process.env (under pm2-runtime, this process IS pm2's daemon).
const envFile = process.env.DEPLOYQ_ENV_FILE ? path.resolve(process.env.DEPLOYQ_ENV_FILE) : undefined;
const fromFile = envFile && startsApps ? readEnvFile(envFile) : {};
const env = { ...process.env, ...fromFile };

// The notifiers' URLs and keys ([[notify]] url_env, secret_env) are DEPLOYQ_NOTIFY_* secrets.
const inherited = [...SECRET_NAMES.filter((name) => process.env[name]), ...Object.keys(process.env).filter((name) => name.startsWith("DEPLOYQ_NOTIFY_"))];
if (inherited.length > 0 && startsApps) {
  console.warn(
    `deployq's ecosystem.config.cjs: ${inherited.join(", ")} ${inherited.length === 1 ? "is" : "are"} in the environment of this pm2 command. ` +
      "A pm2 daemon started from it keeps them and passes them to every cluster-mode app it runs (deployq blanks them in the apps " +
      "it deploys with restart = { pm2 = ... }, not in others). Put them in a file and set DEPLOYQ_ENV_FILE instead (docs/production.md), " +
      "then restart pm2's daemon (pm2 kill).",
  );
}

if (!env.DATABASE_URL && startsApps) {
  refuse(
    "DATABASE_URL is not set. pm2 runs `deployq receiver` and `deployq workers` " +
      "as two processes, and the embedded PGlite database (used when DATABASE_URL is unset) allows one process " +
      `only. Set DATABASE_URL to a Postgres URL in ${envFile ? `DEPLOYQ_ENV_FILE (${envFile})` : "the file DEPLOYQ_ENV_FILE names (under systemd: /etc/deployq/env), or in the environment pm2 is started with"}, ` +
      "or run `deployq serve` (one process) instead.",
  );
}

const logDir = path.resolve(env.DEPLOYQ_PM2_LOG_DIR || path.join(__dirname, "logs"));
if (startsApps) fs.mkdirSync(logDir, { recursive: true });

const killTimeoutMs = Number.parseInt(env.DEPLOYQ_PM2_KILL_TIMEOUT_MS || "40000", 10);
if (!Number.isInteger(killTimeoutMs) || killTimeoutMs <= 0) {
  refuse(`DEPLOYQ_PM2_KILL_TIMEOUT_MS must be a number of milliseconds, not ${JSON.stringify(env.DEPLOYQ_PM2_KILL_TIMEOUT_MS)}`);
}

// A relative DEPLOYQ_CONFIG means relative to where the pm2 command was typed, not to this folder.
const configFromEnv = env.DEPLOYQ_CONFIG ? path.resolve(env.DEPLOYQ_CONFIG) : undefined;

/** What both apps share; `role` is the deployq command each one runs, `instances` how many in cluster mode (see Reload above). */
function app(name, role, instances) {
  return {
    name,
    script: path.join(__dirname, "bin", "deployq.js"),
    args: [role],
    cwd: __dirname,
    ...(instances > 1 ? { exec_mode: "cluster", instances } : { exec_mode: "fork", instances: 1 }),

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

    // Crashes: restart, with a delay growing from 100 ms (×1.5 each time, capped at 15 s by pm2) and
    // reset once the app stays up, and never give up: an outage (Postgres down at start) can
    // last longer than any count of quick restarts (pm2 marks an app "errored" and stops after
    // max_restarts of them, lib/God.js handleExit; with the former 10 it stayed down after
    // Postgres came back). A configuration error is the one exit a restart cannot fix: the
    // daemon commands exit 78 (EX_CONFIG) for it, and pm2 does not restart that code (pm2 7
    // still lists such an app as "waiting restart": the reason is in its error log).
    autorestart: true,
    min_uptime: 10_000,
    max_restarts: 1_000_000_000, // finite: pm2 sends its config as JSON, where Infinity becomes null
    stop_exit_codes: [78],
    exp_backoff_restart_delay: 100,
    watch: false,

    // Logs: deployq writes JSON lines (pino, each with its own "time"), so pm2 adds no prefix
    // (`time: false`) and the files stay readable with jq.
    out_file: path.join(logDir, `${name}.out.log`),
    error_file: path.join(logDir, `${name}.err.log`),
    merge_logs: true,
    time: false,

    // pm2 gives an app the environment of the pm2 command that starts it, with `env` on top:
    // DEPLOYQ_ENV_FILE's variables (the secrets) reach these two apps here, and only here.
    // `--env production` applies env_production over env. pm2 keeps an app's environment
    // across restarts and merges a reload's on top of it, so `env` sets nothing that would
    // undo production on a `pm2 reload` typed without `--env production`.
    env: { ...fromFile, ...(configFromEnv ? { DEPLOYQ_CONFIG: configFromEnv } : {}) },
    env_production: {
      NODE_ENV: "production",
      DEPLOYQ_CONFIG: configFromEnv || "/etc/deployq/deployq.toml",
    },
  };
}

module.exports = {
  apps: [app("deployq-receiver", "receiver", 2), app("deployq-workers", "workers", 1)],
};
