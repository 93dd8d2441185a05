import { Command, Option } from "commander";
import { loadSettings } from "../config/load.ts";
import { DeployqError, errorMessage } from "../errors.ts";
import { LOG_FORMATS, type LogFormat } from "../log.ts";
import { VERSION } from "../version.ts";
import { MAX_DELIVERIES_LIMIT, DEFAULT_DELIVERIES_LIMIT, parseDeliveriesLimit } from "../db/queries/recent-deliveries.ts";
import { runCheck } from "./check.ts";
import { deliveriesCommand } from "./deliveries.ts";
import { deployCommand, rollbackCommand } from "./deploy.ts";
import { cancelCommand, pauseCommand, resumeCommand } from "./pause.ts";
import { releasesCommand } from "./releases.ts";
import { rolloutLsCommand, rolloutShowCommand } from "./rollout.ts";
import { DEFAULT_ROLLOUTS_LIMIT, MAX_ROLLOUTS_LIMIT, parseRolloutsLimit } from "../fleet/rollout-report.ts";
import { statusCommand } from "./status.ts";
import { runMigrate } from "./migrate.ts";
import { describePostReceive, postReceive } from "./post-receive.ts";
import { queueFlush, queueLs, queueRequeue, queueShow } from "./queue.ts";
import { sendTestDelivery } from "./send-test-delivery.ts";
import { sitesRemove } from "./sites.ts";
import { runDaemon } from "./serve.ts";
import { logsCommand } from "./logs.ts";
import { hookInstall, hookList, hookPing, hookRemove } from "./github-hook.ts";
import { watchCommand } from "./watch.ts";

const program = new Command("deployq")
  .version(VERSION)
  .description("Push-to-deploy daemon: signed GitHub webhooks in, durable filesystem queues, deploys out.")
  .option("-c, --config <file>", "configuration file (default: $DEPLOYQ_CONFIG or ./deployq.toml)")
  .addOption(
    new Option("--log-format <format>", "deployq's own log (serve, receiver, workers): JSON lines, or pretty lines for people (default: pretty on a terminal, else json)")
      .choices(LOG_FORMATS)
      .env("DEPLOYQ_LOG_FORMAT"),
  )
  .addHelpText(
    "after",
    `
Environment:
  GITHUB_WEBHOOK_SECRET  webhook secret(s), comma-separated during a rotation (required by the receiver; github hook install sets the first)
  DATABASE_URL           Postgres URL; unset: embedded PGlite in the data directory (one process only)
  REDIS_URL              Dragonfly/Redis for redlock (comma-separated for a quorum); unset: in-process locks
  GITHUB_TOKEN           commit statuses ("Commit statuses: read and write"), github hook and the recovery of lost
                         deliveries ("Webhooks: read and write"); unset: none of them
  GITHUB_API_URL         GitHub Enterprise Server's REST API root; unset: https://api.github.com
  DEPLOYQ_ADMIN_TOKEN    the token /ws/v0 clients (watch, logs -f) authenticate with; unset: /ws/v0 is off
  DEPLOYQ_CONFIG         configuration file, if --config is not given
  DEPLOYQ_QUEUES_DIR     queue root, overriding queues_dir from the configuration
  DEPLOYQ_PORT           the port serve and receiver listen on, overriding [server] port (--port wins)
  DEPLOYQ_LOG_LEVEL      trace, debug, info (default), warn, error
  DEPLOYQ_LOG_FORMAT     json or pretty, if --log-format is not given

Queues are plain directories: ls and cat them; see queues/README.md.`,
  );

const configPath = (): string | undefined => program.opts<{ config?: string }>().config;
const logFormat = (): LogFormat | undefined => program.opts<{ logFormat?: LogFormat }>().logFormat;
const settings = () => loadSettings({ configPath: configPath() });
const noWatch = new Option("--no-watch", "rely on the periodic rescan only (for filesystems without inotify, such as NFS)");
const port = new Option("--port <port>", "listen on this port instead of [server] port (default: $DEPLOYQ_PORT); 0: a free one, printed at start");

program
  .command("serve")
  .description("run the receiver and all workers in one process (the quickstart)")
  .addOption(noWatch)
  .addOption(port)
  .action((o: { watch: boolean; port?: string }) => runDaemon("serve", { configPath: configPath(), port: o.port, watch: o.watch, logFormat: logFormat() }));
program
  .command("receiver")
  .description("run only the webhook receiver (pm2 app deployq-receiver, two instances in cluster mode; needs DATABASE_URL beside `deployq workers`)")
  .addOption(port)
  .action((o: { port?: string }) => runDaemon("receiver", { configPath: configPath(), port: o.port, watch: true, logFormat: logFormat() }));
program
  .command("workers")
  .description("run only the workers: the router and one worker per deployment (pm2 app deployq-workers)")
  .addOption(noWatch)
  .action((o: { watch: boolean }) => runDaemon("workers", { configPath: configPath(), watch: o.watch, logFormat: logFormat() }));
program
  .command("migrate")
  .description("apply the database migrations (also done at every start)")
  .action(() => runMigrate(configPath()));
program
  .command("check")
  .description(
    "validate the configuration, reach the database (creating none), the lock service, each deployment's remote " +
      "(git ls-remote) and the queue root, and check that each configured step can run (pm2, sudo rights for nginx and " +
      "certbot, conf_dir, webroot) and which hosts of each fleet deployment have checked in, changing nothing; exits 1 when something is wrong",
  )
  .option("--json", "machine-readable output")
  .action(async (o: { json?: boolean }) => {
    process.exitCode = await runCheck(configPath(), o.json ?? false);
  });

const queue = program.command("queue").description("inspect and repair the queues");
queue
  .command("ls [queue]")
  .description("without a queue: every queue with its size; with one (router, <deployment>, dead-letter/<name>; refused unless it exists): its entries")
  .option("--json", "machine-readable output")
  .action((spec: string | undefined, o: { json?: boolean }) => queueLs(settings(), spec, o.json ?? false));
queue
  .command("show <entry>")
  .description("print an entry (by file name or delivery ID), wherever it is")
  .option("--json", "machine-readable output")
  .action((id: string, o: { json?: boolean }) => queueShow(settings(), id, o.json ?? false));
queue
  .command("requeue <queue>")
  .description(
    "move dead-lettered entries of router or a deployment back into its queue, without their error; " +
      "of several requeued into a deployment's queue only the newest runs (the others are recorded as superseded by it)",
  )
  .option("--entry <id>", "only this entry (file name or delivery ID)")
  .option("--json", "machine-readable output")
  .action((name: string, o: { entry?: string; json?: boolean }) => queueRequeue(settings(), name, o.entry, o.json ?? false));
queue
  .command("flush <queue>")
  .description("delete every entry of a queue (router, <deployment>, dead-letter/<name>; refused unless it exists)")
  .option("--yes", "really delete")
  .option("--json", "machine-readable output")
  .action(async (spec: string, o: { yes?: boolean; json?: boolean }) => {
    process.exitCode = await queueFlush(settings(), spec, o.yes ?? false, o.json ?? false);
  });

program
  .command("deploy <deployment>")
  .description(
    "deploy a branch or commit of the configured remote (default: the configured branch), through the deployment's queue; " +
      "the ref is checked against the remote first (a branch must exist there, a short sha must name one commit of the mirror)",
  )
  .option("--ref <branch|sha>", "what to deploy: a branch of the remote, a full sha, or a short one (4+ hex digits, as `status` and `git log --oneline` print)")
  .option("--force", "deploy even when that commit is already deployed (after a change to `env` or a shared file)")
  .option("--no-wait", "queue it and return, without following its progress")
  .action(async (name: string, o: { ref?: string; force?: boolean; wait: boolean }) => {
    process.exitCode = await deployCommand(settings(), name, o.ref, { wait: o.wait, force: o.force ?? false });
  });
program
  .command("rollback <deployment>")
  .description("switch current back to the previous good release (or --to one) and run restart")
  .option("--to <release>", "a release name from `deployq releases` (refused unless it exists, is complete and not bad)")
  .option("--no-wait", "queue it and return, without following its progress")
  .action(async (name: string, o: { to?: string; wait: boolean }) => {
    process.exitCode = await rollbackCommand(settings(), name, o.to, { wait: o.wait });
  });
program
  .command("pause <deployment>")
  .description("freeze a deployment's deploys: pushes keep queueing and the newest still wins, but nothing deploys until `resume` (or --for ends)")
  .option("--reason <text>", "why (shown by status, the log and the dashboard)")
  .option("--for <duration>", "end the pause by itself after this long: 90s, 30m, 2h, 1d")
  .option("--json", "machine-readable output")
  .action(async (name: string, o: { reason?: string; for?: string; json?: boolean }) => {
    process.exitCode = await pauseCommand(settings(), name, { reason: o.reason, for: o.for, json: o.json ?? false });
  });
program
  .command("resume <deployment>")
  .description("end a pause: the newest waiting entry deploys")
  .option("--json", "machine-readable output")
  .action(async (name: string, o: { json?: boolean }) => {
    process.exitCode = await resumeCommand(settings(), name, { json: o.json ?? false });
  });
program
  .command("cancel <deployment>")
  .description("stop the running deploy before its switch: its commands are killed, the previous release stays current, the entry goes to dead-letter/")
  .option("--json", "machine-readable output")
  .action(async (name: string, o: { json?: boolean }) => {
    process.exitCode = await cancelCommand(settings(), name, { json: o.json ?? false });
  });
program
  .command("releases <deployment>")
  .description("list a deployment's releases (* marks current)")
  .option("--json", "machine-readable output")
  .action((name: string, o: { json?: boolean }) => releasesCommand(settings(), name, o.json ?? false));
program
  .command("status [deployment]")
  .description(
    "the router's backlog; per deployment: current release, sha and branch, the last deploy (and the last that ran) with " +
      "outcome, duration, its whole error and its own log file, queue depth, dead letters, nginx sites and their certificates; " +
      "for a fleet deployment (hosts), its newest rollout and each host's state in it, release and last check-in",
  )
  .option("--json", "machine-readable output")
  .action((name: string | undefined, o: { json?: boolean }) => statusCommand(settings(), name, o.json ?? false));

const sites = program.command("sites").description("the nginx site files deployments own (deployq status lists them)");
sites
  .command("remove <deployment>")
  .description(
    "take out the site files a deployment owns once its nginx key (or the deployment) is gone from the configuration: " +
      "under the nginx lock (<lock_prefix>:nginx), nginx -t, reload and verify; on failure the files go back",
  )
  .action(async (name: string) => {
    process.exitCode = await sitesRemove(settings(), name);
  });

const github = program
  .command("github")
  .summary("GitHub: github hook install|list|ping|remove <deployment> manages the repository webhook")
  .description("GitHub, through its API with GITHUB_TOKEN (GITHUB_API_URL for GitHub Enterprise Server)");
const hook = github
  .command("hook")
  .summary("install|list|ping|remove <deployment>: the repository webhook that posts to [server] public_url + /github-webhook")
  .description(
    "the webhook of a deployment's repository that posts to [server] public_url + /github-webhook, found by that URL; " +
      'GITHUB_TOKEN needs the repository permission "Webhooks: read and write"',
  );
hook
  .command("install <deployment>")
  .description(
    "create the repository's webhook for deployq, or update it (found by its URL: running it again changes nothing else): " +
      "content type json, secret from GITHUB_WEBHOOK_SECRET, the events the repository's deployments need (push)",
  )
  .option("--json", "machine-readable output")
  .action(async (name: string, o: { json?: boolean }) => hookInstall(settings(), name, { json: o.json ?? false }));
hook
  .command("list <deployment>")
  .description("list the repository's webhooks (* marks the one that posts to deployq), with GitHub's last response to each")
  .option("--json", "machine-readable output")
  .action(async (name: string, o: { json?: boolean }) => hookList(settings(), name, { json: o.json ?? false }));
hook
  .command("ping <deployment>")
  .description("ask GitHub to send deployq's webhook a ping (`deployq deliveries` shows it once received); refused when there is no such webhook")
  .option("--json", "machine-readable output")
  .action(async (name: string, o: { json?: boolean }) => hookPing(settings(), name, { json: o.json ?? false }));
hook
  .command("remove <deployment>")
  .description("delete the repository's webhook(s) that post to deployq (other webhooks are left alone)")
  .option("--json", "machine-readable output")
  .action(async (name: string, o: { json?: boolean }) => hookRemove(settings(), name, { json: o.json ?? false }));

program
  .command("deliveries")
  .description(
    "recent deliveries, newest first, with their outcome: queued, ping, routed (to which deployments), voided (with the reason), " +
      "dead-letter; and how many redeliveries were answered duplicate",
  )
  .option("--limit <n>", `how many (1 to ${MAX_DELIVERIES_LIMIT})`, String(DEFAULT_DELIVERIES_LIMIT))
  .option("--json", "machine-readable output")
  .action((o: { limit: string; json?: boolean }) => {
    const limit = parseDeliveriesLimit(o.limit);
    if (limit === undefined) throw new DeployqError("CONFIG", `--limit must be a whole number from 1 to ${MAX_DELIVERIES_LIMIT}, got ${JSON.stringify(o.limit)}`);
    return deliveriesCommand(settings(), limit, o.json ?? false);
  });

const rollout = program
  .command("rollout")
  .summary("ls [deployment] | show <id>: the rollouts of fleet deployments (hosts = [...]) and each host's part in them")
  .description("the rollouts of fleet deployments (hosts = [...]): each push to one, and how far each host got with it");
rollout
  .command("ls [deployment]")
  .description(
    "the newest rollouts, newest first (of one deployment, or all): id, deployment, sha, state (running, succeeded, halted, rolled-back, superseded), " +
      'when created, and each listed host\'s state ("-": not handed over to it yet)',
  )
  .option("--limit <n>", `how many (1 to ${MAX_ROLLOUTS_LIMIT})`, String(DEFAULT_ROLLOUTS_LIMIT))
  .option("--json", "machine-readable output")
  .action((name: string | undefined, o: { limit: string; json?: boolean }) => {
    const limit = parseRolloutsLimit(o.limit);
    if (limit === undefined) throw new DeployqError("CONFIG", `--limit must be a whole number from 1 to ${MAX_ROLLOUTS_LIMIT}, got ${JSON.stringify(o.limit)}`);
    return rolloutLsCommand(settings(), name, limit, o.json ?? false);
  });
rollout
  .command("show <id>")
  .description(
    "one rollout (id from `rollout ls`): deployment, sha, ref, entry, hosts, parallel, canary, on_failure, state, the host and step that failed and why, " +
      "when created and finished; per host: state, release, when it held its slot (switch to healthy) and for how long, error",
  )
  .option("--json", "machine-readable output")
  .action((id: string, o: { json?: boolean }) => rolloutShowCommand(settings(), id, o.json ?? false));

const liveUrlOption = () => new Option("--url <url>", "the daemon's address (default: the running daemon announced in the data directory, else [server] host and port)");
program
  .command("watch [deployment]")
  .description(
    "print events live as they happen, one line each (time, deployment, what happened, outcome, duration), through /ws/v0 " +
      "(needs DEPLOYQ_ADMIN_TOKEN); with a deployment, only its events and every delivery's; reconnects and resumes when the connection is lost",
  )
  .addOption(liveUrlOption())
  .option("--json", "one JSON message per line, as /ws/v0 sends them (docs/ws-protocol.md)")
  .action((name: string | undefined, o: { url?: string; json?: boolean }) => watchCommand(settings(), name, { url: o.url, json: o.json ?? false }));
program
  .command("logs <deployment>")
  .description(
    "print the newest deploy log of a deployment on this host; with -f, follow the deploy running now (from its start) or the next one, " +
      "through /ws/v0 (needs DEPLOYQ_ADMIN_TOKEN), until it ends: exits 1 when it failed",
  )
  .option("-f, --follow", "follow the running deploy's log as it is written")
  .addOption(liveUrlOption())
  .option("--json", "with -f: one JSON message per line (LogLine, then the deploy's finished event)")
  .action(async (name: string, o: { follow?: boolean; url?: string; json?: boolean }) => {
    process.exitCode = await logsCommand(settings(), name, { follow: o.follow ?? false, url: o.url, json: o.json ?? false });
  });

program
  .command("send-test-delivery")
  .description(
    "sign a real push payload with GITHUB_WEBHOOK_SECRET and POST it to the receiver; exits 1 when the answer is that nothing will deploy " +
      "(with the reason), 2 when nothing listens at the URL (saying how to start the daemon)",
  )
  .option("--url <url>", "webhook URL (default: the configured server's /github-webhook)")
  .option("--deployment <name>", "send a push of a branch this deployment follows (default: the first one); for a glob, a remote branch that matches it")
  .option("--repository <owner/name>", "repository full name (default: the deployment's)")
  .option("--branch <branch>", "branch name (default: the deployment's branch)")
  .option("--sha <sha>", "the pushed commit (default: the branch's head on the deployment's remote, else a random one)")
  .option("--event <event>", "X-GitHub-Event", "push")
  .action(async (o: { url?: string; deployment?: string; repository?: string; branch?: string; sha?: string; event: string }) => {
    process.exitCode = await sendTestDelivery(settings(), o);
  });
program
  .command("post-receive")
  .summary('queue pushes from a bare repository\'s post-receive hook ("<old> <new> <ref>" lines on stdin)')
  .description(
    'queue pushes from a bare repository\'s post-receive hook ("<old> <new> <ref>" lines on stdin): prints ' +
      '"deployq: queued <entry> for <deployments>" per ref a deployment follows, and for any other ref (a tag, another branch, a deletion) ' +
      '"Ref <ref> received. Doing nothing: only <branch> may be deployed on this server." (or why not), queueing nothing',
  )
  .requiredOption("--repository <owner/name>", "the repository name deployments follow (matched like a webhook's repository.full_name)")
  .action(async (o: { repository: string }) => {
    await postReceive(settings(), o.repository, (outcome) => process.stdout.write(`${describePostReceive(outcome)}\n`));
  });

/**
 * The command line. A pm2 cluster-mode instance (the receiver, ecosystem.config.cjs) is forked
 * by pm2's daemon with node's cluster.fork, so its argv is the daemon's own arguments followed
 * by the app's `args` (lib/God.js setupMaster sets no `args`; lib/ProcessContainer.js appends
 * them). Under pm2-runtime, the daemon is `pm2-runtime start ecosystem.config.cjs --env
 * production`, and `start` would be taken for a command. The app's arguments are the last
 * ones, and pm2 also copies them into the environment (`args`, joined with commas): keep those.
 */
function commandLine(argv: string[], env: NodeJS.ProcessEnv): string[] {
  if (env.exec_mode !== "cluster_mode" || !env.pm_exec_path || env.args === undefined) return argv;
  const args = env.args === "" ? [] : env.args.split(",");
  if (args.length > argv.length - 2 || args.some((a, i) => argv[argv.length - args.length + i] !== a)) return argv;
  return [argv[0]!, env.pm_exec_path, ...args];
}

/**
 * Exit codes: 0 done, 1 unexpected, 2 a refused request. A daemon command (serve, receiver,
 * workers) whose configuration is wrong exits 78 (EX_CONFIG) instead: pm2 (stop_exit_codes in
 * ecosystem.config.cjs) and systemd (RestartPreventExitStatus) do not restart it, since a
 * restart cannot fix it, while every other exit (Postgres down at start, a crash) is
 * restarted, without ever giving up.
 */
const EX_CONFIG = 78;
const DAEMONS = new Set(["serve", "receiver", "workers"]);

program.parseAsync(commandLine(process.argv, process.env)).catch((err: unknown) => {
  const known = err instanceof DeployqError;
  const debug = process.env.DEPLOYQ_LOG_LEVEL === "debug" || process.env.DEPLOYQ_LOG_LEVEL === "trace";
  process.stderr.write(`deployq: ${known || !debug ? errorMessage(err) : ((err as Error).stack ?? errorMessage(err))}\n`);
  const daemon = DAEMONS.has(program.args[0] ?? "");
  process.exit(known && daemon && err.code === "CONFIG" ? EX_CONFIG : known ? 2 : 1);
});
