import { randomUUID } from "node:crypto";
import { readFile, readdir } from "node:fs/promises";
import { userInfo } from "node:os";
import path from "node:path";
import type { Deployment, Settings } from "../config/load.ts";
import { DeployqError } from "../errors.ts";
import { entryName } from "../queue/entry-name.ts";
import { seedEntryClock } from "../queue/entry-clock.ts";
import { queueLayout } from "../queue/layout.ts";
import { ensureQueueDirs, writeEntryDurably } from "../queue/write.ts";
import { lockOwner } from "../pid-lock.ts";

function deploymentOf(settings: Settings, name: string): Deployment {
  const d = settings.deployments.get(name);
  if (!d) throw new DeployqError("CONFIG", `no deployment "${name}" in ${settings.configPath}; configured: ${[...settings.deployments.keys()].join(", ") || "none"}`);
  return d;
}

/**
 * `deployq deploy` and `deployq rollback` put an instruction into the deployment's own
 * queue, where the worker takes it in turn, under the same lock as every push: the newest
 * entry wins, so a later push supersedes a manual deploy, and a manual deploy supersedes
 * older pushes still waiting.
 */
async function enqueueInstruction(settings: Settings, d: Deployment, event: "deploy" | "rollback", payload: Record<string, unknown>): Promise<string> {
  const layout = queueLayout(settings.queuesDir);
  await ensureQueueDirs(layout, [d.name]);
  await seedEntryClock(layout);
  const id = randomUUID();
  const name = entryName(id);
  await writeEntryDurably(layout, layout.deployment(d.name), name, {
    event,
    delivery_id: id,
    hook_id: "",
    received_at: new Date().toISOString(),
    source: `cli:${userInfo().username}`,
    payload: { ...payload, repository: { full_name: d.repository } },
  });
  return name;
}

export interface FollowOptions {
  wait: boolean;
  out?: NodeJS.WritableStream;
  pollMs?: number;
}

export async function deployCommand(settings: Settings, name: string, ref: string | undefined, options: FollowOptions): Promise<number> {
  const d = deploymentOf(settings, name);
  const wanted = ref ?? (/[*?]/.test(d.branch) ? undefined : d.branch);
  if (!wanted) throw new DeployqError("CONFIG", `${name} follows the pattern "${d.branch}": say which branch or sha with --ref`);
  const entry = await enqueueInstruction(settings, d, "deploy", { ref: wanted });
  return follow(settings, d, entry, `deploy ${wanted}`, options);
}

export async function rollbackCommand(settings: Settings, name: string, to: string | undefined, options: FollowOptions): Promise<number> {
  const d = deploymentOf(settings, name);
  if (d.strategy === "in-place") {
    throw new DeployqError("CONFIG", `${name} uses the in-place strategy, which keeps no releases: deploy an older commit with \`deployq deploy ${name} --ref <sha>\``);
  }
  const entry = await enqueueInstruction(settings, d, "rollback", to ? { to } : {});
  return follow(settings, d, entry, to ? `rollback to ${to}` : "rollback to the previous good release", options);
}

/**
 * Shows the deploy's progress from its log files (one per attempt, named by deploy id,
 * whose first line names the entry) until the entry has left the queue.
 */
async function follow(settings: Settings, d: Deployment, entry: string, what: string, options: FollowOptions): Promise<number> {
  const out = options.out ?? process.stdout;
  const layout = queueLayout(settings.queuesDir);
  out.write(`queued ${what} for ${d.name}: ${path.join(layout.deployment(d.name), entry)}\n`);
  if (!options.wait) return 0;
  if (lockOwner(path.join(layout.root, ".workers.lock")) === undefined && settings.secrets.redisUrls.length === 0) {
    out.write("no workers process is running: it is deployed when `deployq serve` or `deployq workers` starts\n");
    return 0;
  }
  const logsDir = path.join(settings.dataDir, "logs", d.name);
  const shown = new Map<string, number>();
  let lastText = "";
  for (;;) {
    const queued = (await readdir(layout.deployment(d.name)).catch(() => [] as string[])).includes(entry);
    for (const log of (await readdir(logsDir).catch(() => [] as string[])).filter((n) => n.endsWith(".log")).sort((a, b) => parseInt(a) - parseInt(b))) {
      const file = path.join(logsDir, log);
      const text = await readFile(file, "utf8").catch(() => "");
      if (!shown.has(log)) {
        if (!text.startsWith(`deploy ${parseInt(log)} of ${d.name}: entry ${entry},`)) continue;
        shown.set(log, 0);
      }
      const from = shown.get(log)!;
      if (text.length > from) {
        out.write(text.slice(from));
        shown.set(log, text.length);
        lastText = text;
      }
    }
    if (!queued) break;
    await new Promise((r) => setTimeout(r, options.pollMs ?? 200));
  }
  const dead = (await readdir(layout.deadLetter(d.name)).catch(() => [] as string[])).includes(entry);
  if (dead) {
    out.write(`\nfailed: the entry is in dead-letter/${d.name}/ (\`deployq queue show ${entry}\`)\n`);
    return 1;
  }
  const lastStep = lastText.trimEnd().split("\n").reverse().find((l) => l.startsWith("== "));
  if (!lastStep) {
    out.write(`\n${what} was superseded by a newer entry before it ran (see \`deployq status ${d.name}\`)\n`);
    return 1;
  }
  return /^== (succeeded|already-deployed): /.test(lastStep) ? 0 : 1;
}
