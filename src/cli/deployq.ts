import { Command, Option } from "commander";
import { loadSettings } from "../config/load.ts";
import { DeployqError, errorMessage } from "../errors.ts";
import { LOG_FORMATS, type LogFormat } from "../log.ts";
import { VERSION } from "../version.ts";
import { runCheck } from "./check.ts";
import { deployCommand, rollbackCommand } from "./deploy.ts";
import { releasesCommand } from "./releases.ts";
import { statusCommand } from "./status.ts";
import { runMigrate } from "./migrate.ts";
import { postReceive } from "./post-receive.ts";
import { queueFlush, queueLs, queueRequeue, queueShow } from "./queue.ts";
import { sendTestDelivery } from "./send-test-delivery.ts";
import { sitesRemove } from "./sites.ts";
import { runDaemon } from "./serve.ts";

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
  GITHUB_WEBHOOK_SECRET  webhook secret(s), comma-separated during a rotation (required by the receiver)
  DATABASE_URL           Postgres URL; unset: embedded PGlite in the data directory (one process only)
  REDIS_URL              Dragonfly/Redis for redlock (comma-separated for a quorum); unset: in-process locks
  DEPLOYQ_CONFIG         configuration file, if --config is not given
  DEPLOYQ_QUEUES_DIR     queue root, overriding queues_dir from the configuration
  DEPLOYQ_LOG_LEVEL      trace, debug, info (default), warn, error
  DEPLOYQ_LOG_FORMAT     json or pretty, if --log-format is not given

Queues are plain directories: ls and cat them; see queues/README.md.`,
  );

const configPath = (): string | undefined => program.opts<{ config?: string }>().config;
const logFormat = (): LogFormat | undefined => program.opts<{ logFormat?: LogFormat }>().logFormat;
const settings = () => loadSettings({ configPath: configPath() });
const noWatch = new Option("--no-watch", "rely on the periodic rescan only (for filesystems without inotify, such as NFS)");

program
  .command("serve")
  .description("run the receiver and all workers in one process (the quickstart)")
  .addOption(noWatch)
  .action((o: { watch: boolean }) => runDaemon("serve", configPath(), o.watch, logFormat()));
program
  .command("receiver")
  .description("run only the webhook receiver (pm2 app deployq-receiver; needs DATABASE_URL beside `deployq workers`)")
  .action(() => runDaemon("receiver", configPath(), true, logFormat()));
program
  .command("workers")
  .description("run only the workers: the router and one worker per deployment (pm2 app deployq-workers)")
  .addOption(noWatch)
  .action((o: { watch: boolean }) => runDaemon("workers", configPath(), o.watch, logFormat()));
program
  .command("migrate")
  .description("apply the database migrations (also done at every start)")
  .action(() => runMigrate(configPath()));
program
  .command("check")
  .description(
    "validate the configuration, reach the database and the queue root, and check that each configured step can run " +
      "(pm2, sudo rights for nginx and certbot, conf_dir, webroot), changing nothing; exits 1 when something is wrong",
  )
  .option("--json", "machine-readable output")
  .action(async (o: { json?: boolean }) => {
    process.exitCode = await runCheck(configPath(), o.json ?? false);
  });

const queue = program.command("queue").description("inspect and repair the queues");
queue
  .command("ls [queue]")
  .description("without a queue: every queue with its size; with one (router, <deployment>, dead-letter/<name>): its entries")
  .option("--json", "machine-readable output")
  .action((spec: string | undefined, o: { json?: boolean }) => queueLs(settings(), spec, o.json ?? false));
queue
  .command("show <entry>")
  .description("print an entry (by file name or delivery ID), wherever it is")
  .option("--json", "machine-readable output")
  .action((id: string, o: { json?: boolean }) => queueShow(settings(), id, o.json ?? false));
queue
  .command("requeue <queue>")
  .description("move dead-lettered entries of router or a deployment back into its queue, without their error")
  .option("--entry <id>", "only this entry (file name or delivery ID)")
  .option("--json", "machine-readable output")
  .action((name: string, o: { entry?: string; json?: boolean }) => queueRequeue(settings(), name, o.entry, o.json ?? false));
queue
  .command("flush <queue>")
  .description("delete every entry of a queue (router, <deployment>, dead-letter/<name>)")
  .option("--yes", "really delete")
  .option("--json", "machine-readable output")
  .action(async (spec: string, o: { yes?: boolean; json?: boolean }) => {
    process.exitCode = await queueFlush(settings(), spec, o.yes ?? false, o.json ?? false);
  });

program
  .command("deploy <deployment>")
  .description("deploy a branch or commit of the configured remote (default: the configured branch), through the deployment's queue")
  .option("--ref <branch|sha>", "what to deploy")
  .option("--no-wait", "queue it and return, without following its progress")
  .action(async (name: string, o: { ref?: string; wait: boolean }) => {
    process.exitCode = await deployCommand(settings(), name, o.ref, { wait: o.wait });
  });
program
  .command("rollback <deployment>")
  .description("switch current back to the previous good release (or --to one) and run restart")
  .option("--to <release>", "a release name from `deployq releases`")
  .option("--no-wait", "queue it and return, without following its progress")
  .action(async (name: string, o: { to?: string; wait: boolean }) => {
    process.exitCode = await rollbackCommand(settings(), name, o.to, { wait: o.wait });
  });
program
  .command("releases <deployment>")
  .description("list a deployment's releases (* marks current)")
  .option("--json", "machine-readable output")
  .action((name: string, o: { json?: boolean }) => releasesCommand(settings(), name, o.json ?? false));
program
  .command("status [deployment]")
  .description("current release and sha, last deploy with outcome and duration, queue depth, dead letters, nginx sites and their certificates")
  .option("--json", "machine-readable output")
  .action((name: string | undefined, o: { json?: boolean }) => statusCommand(settings(), name, o.json ?? false));

const sites = program.command("sites").description("the nginx site files deployments own (deployq status lists them)");
sites
  .command("remove <deployment>")
  .description(
    "take out the site files a deployment owns once its nginx key (or the deployment) is gone from the configuration: " +
      "under deployq:nginx, nginx -t, reload and verify; on failure the files go back",
  )
  .action(async (name: string) => {
    process.exitCode = await sitesRemove(settings(), name);
  });

program
  .command("send-test-delivery")
  .description("sign a real push payload with GITHUB_WEBHOOK_SECRET and POST it to the receiver")
  .option("--url <url>", "webhook URL (default: the configured server)")
  .option("--deployment <name>", "send a push that this deployment follows (default: the first one)")
  .option("--repository <owner/name>", "repository full name")
  .option("--branch <branch>", "branch name")
  .option("--sha <sha>", "the pushed commit (default: a random one)")
  .option("--event <event>", "X-GitHub-Event", "push")
  .action(async (o: { url?: string; deployment?: string; repository?: string; branch?: string; sha?: string; event: string }) => {
    process.exitCode = await sendTestDelivery(settings(), o);
  });
program
  .command("post-receive")
  .description('queue pushes from a bare repository\'s post-receive hook ("<old> <new> <ref>" lines on stdin)')
  .requiredOption("--repository <owner/name>", "the repository name deployments follow")
  .action(async (o: { repository: string }) => {
    const queued = await postReceive(settings(), o.repository);
    for (const name of queued) process.stdout.write(`deployq: queued ${name}\n`);
  });

program.parseAsync().catch((err: unknown) => {
  const known = err instanceof DeployqError;
  const debug = process.env.DEPLOYQ_LOG_LEVEL === "debug" || process.env.DEPLOYQ_LOG_LEVEL === "trace";
  process.stderr.write(`deployq: ${known || !debug ? errorMessage(err) : ((err as Error).stack ?? errorMessage(err))}\n`);
  process.exit(known ? 2 : 1);
});
