import type { Logger } from "pino";
import type { Settings } from "../config/load.ts";
import type { Db } from "../db/client.ts";
import type { Events } from "../events/bus.ts";
import type { Metrics } from "../metrics/registry.ts";
import { type GithubClient, createGithubClient } from "./client.ts";
import { GithubSender } from "./sender.ts";
import { GithubReports } from "./reports.ts";

export interface GithubStatuses {
  /** Per deployment, what its router and worker write to the outbox (commit statuses, deployments). */
  statuses: ReadonlyMap<string, GithubReports>;
  sender: GithubSender;
  /** The API client, for what the workers read (the checks that require_checks waits for). */
  client: GithubClient;
  close(): Promise<void>;
}

/**
 * Commit statuses and deployments, for a process that runs the deployment workers with GITHUB_TOKEN set:
 * the texts the workers write to the outbox, and the sender, woken by the events that
 * follow each write (the outbox is also polled, for rows another process wrote).
 */
export function startGithubStatuses(deps: { settings: Settings; db: Db; logger: Logger; events: Events; metrics: Metrics | undefined }): GithubStatuses {
  const { settings, db, events, metrics } = deps;
  const logger = deps.logger.child({ component: "github" });
  const statuses = new Map([...settings.deployments.values()].map((d) => [d.name, new GithubReports(settings, d)]));
  const client = createGithubClient({ apiUrl: settings.github.apiUrl, token: settings.secrets.githubToken!, writeIntervalMs: settings.github.writeIntervalMs, timeoutMs: settings.github.timeoutMs, logger });
  const sender = new GithubSender({ db, client, logger, onSend: (result) => metrics?.countGithubSend(result) });
  const unsubscribe = events.on((e) => {
    if (e.kind === "deploy" && (e.name === "queued" || e.name === "started" || e.name === "finished")) sender.wake();
  });
  sender.start();
  return {
    statuses,
    sender,
    client,
    async close() {
      unsubscribe();
      await sender.close();
    },
  };
}
