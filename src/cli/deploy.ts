import { randomUUID } from "node:crypto";
import { type FileHandle, access, open, readdir } from "node:fs/promises";
import { userInfo } from "node:os";
import path from "node:path";
import { StringDecoder } from "node:string_decoder";
import type { Deployment, Settings } from "../config/load.ts";
import { DeployqError, errorMessage, redactUrl } from "../errors.ts";
import { ExecError } from "../exec/exec-error.ts";
import { entryName } from "../queue/entry-name.ts";
import { seedEntryClock } from "../queue/entry-clock.ts";
import { queueLayout } from "../queue/layout.ts";
import { ensureQueueDirs, writeEntryDurably } from "../queue/write.ts";
import { lockOwner } from "../pid-lock.ts";
import { type GitContext, SHA, commitsWithPrefix, hasCommit, lsRemote } from "../steps/git.ts";
import { deploymentPaths, listReleases } from "../steps/release.ts";
import { deploymentMirror } from "../workers/deploy.ts";
import { branchMatches, isValidBranchName } from "../config/branch.ts";
import { configuredDeployment } from "./names.ts";

/**
 * `deployq deploy` and `deployq rollback` put an instruction into the deployment's own
 * queue, where the worker takes it in turn, under the same lock as every push: the newest
 * entry wins, so a later push supersedes a manual deploy, and a manual deploy supersedes
 * older pushes still waiting.
 */
async function enqueueInstruction(settings: Settings, d: Deployment, event: "deploy" | "rollback", payload: Record<string, unknown>, source: string): Promise<string> {
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
    source,
    payload: { ...payload, repository: { full_name: d.repository } },
  });
  return name;
}

export interface FollowOptions {
  wait: boolean;
  out?: NodeJS.WritableStream;
  pollMs?: number;
}


const exists = (file: string) =>
  access(file).then(
    () => true,
    () => false,
  );

/** `git ls-remote` and reads of the mirror only: the CLI never writes into the mirror, which belongs to the daemon's user. */
const GIT_CHECK: GitContext = { timeoutMs: 30_000 };
const SHORT_SHA = /^[0-9a-f]{4,39}$/;

const URL_WITH_CREDENTIALS = /^[a-z][a-z0-9+.-]*:\/\/[^/]*@/i;

/** A remote as the CLI shows it: a URL's password (a token) replaced. */
export const shownRemote = (remote: string) => (URL_WITH_CREDENTIALS.test(remote) ? redactUrl(remote) : remote);

/**
 * git's own reason for a failure in one line ("fatal: …"), not its advice ("Please make sure
 * you have the correct access rights"), with the remote's password (if any) replaced.
 */
export function gitReason(err: unknown, remote: string): string {
  let reason = errorMessage(err).split("\n")[0]!;
  if (err instanceof ExecError && err.reason === "exit") {
    const lines = err.stderrTail.split("\n").map((l) => l.trim()).filter(Boolean);
    reason = lines.find((l) => /^(fatal|error):/.test(l)) ?? lines[0] ?? `git exited with code ${err.exitCode}`;
  }
  let password: string | undefined;
  try {
    password = URL_WITH_CREDENTIALS.test(remote) ? new URL(remote).password : undefined;
  } catch {
    // not a URL after all: nothing to hide
  }
  return password ? reason.replaceAll(password, "***").replaceAll(decodeURIComponent(password), "***") : reason;
}

interface Wanted {
  /** What the entry carries: a branch name, or a full commit sha. */
  ref: string;
  /** Said before queueing, when it deploys something other than a branch head, or cannot know yet. */
  note: string | undefined;
}

/**
 * What `--ref` stands for on the remote, before anything is queued: a branch must exist there
 * (ls-remote); a short sha is expanded with the deployment's mirror (unique, or refused); a
 * full sha is accepted (the worker fetches it and fails if the remote lacks it).
 */
async function resolveWanted(settings: Settings, d: Deployment, ref: string | undefined): Promise<Wanted> {
  const glob = /[*?]/.test(d.branch);
  if (ref === undefined && glob) {
    throw new DeployqError("BAD_REQUEST", `${d.name} follows the pattern "${d.branch}": say which branch or sha with --ref`);
  }
  const raw = ref ?? d.branch;
  const branch = raw.replace(/^refs\/heads\//, "");
  const hex = SHA.test(raw) || SHORT_SHA.test(raw);
  if (!hex && !isValidBranchName(branch)) {
    throw new DeployqError(
      "BAD_REQUEST",
      `--ref ${JSON.stringify(raw)} is neither a branch name nor a commit sha: give a branch of ${shownRemote(d.remote)}, or a commit sha (at least 4 hex digits)`,
    );
  }
  let heads: Map<string, string>;
  try {
    heads = await lsRemote(d.remote, GIT_CHECK);
  } catch (err) {
    throw new DeployqError("UNAVAILABLE", `cannot list the branches of ${shownRemote(d.remote)} (${gitReason(err, d.remote)}): check the remote and the network (\`deployq check\` tests it); nothing was queued`, { cause: err });
  }
  if (!hex || heads.has(raw)) {
    const tip = heads.get(branch);
    if (tip === undefined) {
      const known = [...heads.keys()].sort();
      const list = known.length === 0 ? "it has no branches" : `its branches: ${known.slice(0, 10).join(", ")}${known.length > 10 ? `, … (${known.length})` : ""}`;
      throw new DeployqError("BAD_REQUEST", `${shownRemote(d.remote)} has no branch ${JSON.stringify(branch)} (${list}): push it first, or give another --ref; nothing was queued`);
    }
    return { ref: branch, note: undefined };
  }

  const mirror = deploymentMirror(d, settings.dataDir);
  const mirrored = await exists(path.join(mirror, "HEAD"));
  let sha = raw;
  if (!SHA.test(raw)) {
    if (!mirrored) {
      throw new DeployqError("BAD_REQUEST", `${d.name} has no mirror yet (${mirror}) to expand the short sha ${raw} with: give the full 40-digit sha or a branch; nothing was queued`);
    }
    const commits = await commitsWithPrefix(mirror, raw, GIT_CHECK);
    if (commits.length > 1) {
      throw new DeployqError("BAD_REQUEST", `the short sha ${raw} is ambiguous: ${commits.length} commits start with it (${commits.map((c) => c.slice(0, 12)).join(", ")}): give more digits; nothing was queued`);
    }
    if (commits.length === 0) {
      throw new DeployqError(
        "BAD_REQUEST",
        `no commit of ${d.name}'s mirror (${mirror}, as of its last fetch) starts with ${raw}: give the full 40-digit sha, or a branch; nothing was queued`,
      );
    }
    sha = commits[0]!;
  }
  const headOf = [...heads].filter(([, tip]) => tip === sha).map(([b]) => b);
  const followed = [...heads].filter(([b]) => branchMatches(d.branch, b));
  const followedHead = headOf.find((b) => branchMatches(d.branch, b));
  if (followedHead !== undefined) return { ref: sha, note: `${sha} is the head of ${followedHead}` };
  const where =
    !glob && heads.has(d.branch)
      ? `${d.branch} is at ${heads.get(d.branch)!}`
      : followed.length > 0
        ? `branches matching ${d.branch}: ${followed.map(([b]) => b).join(", ")}`
        : `${shownRemote(d.remote)} has no branch matching ${d.branch}`;
  const known = headOf.length > 0 || (mirrored && (await hasCommit(mirror, sha, GIT_CHECK)));
  return {
    ref: sha,
    note:
      `${sha} is not the head of ${glob ? `any branch matching ${d.branch}` : d.branch} (${where}${headOf.length > 0 ? `; it is the head of ${headOf.join(", ")}` : ""}): ` +
      `this deploys something other than the branch head, until the next push to it${known ? "" : `; it is not fetched yet: the worker asks ${shownRemote(d.remote)} for it, and fails if the remote does not have it`}`,
  };
}

/** Who asked for a manual deploy or rollback: written into the entry as its `source`. */
const cliSource = () => `cli:${userInfo().username}`;

/** What a manual deploy or rollback queued: the entry, what it does (for people), and a note said before it. */
export interface QueuedInstruction {
  deployment: string;
  entry: string;
  what: string;
  note: string | undefined;
}

/**
 * Checks `ref` against the remote and queues a deploy of it: what `deployq deploy` and the
 * dashboard both do. Throws a DeployqError (nothing queued) when the ref cannot be deployed.
 */
export async function queueDeploy(settings: Settings, name: string, ref: string | undefined, options: { force?: boolean; source: string }): Promise<QueuedInstruction> {
  const d = configuredDeployment(settings, name);
  const wanted = await resolveWanted(settings, d, ref);
  const entry = await enqueueInstruction(settings, d, "deploy", { ref: wanted.ref, ...(options.force ? { force: true } : {}) }, options.source);
  return { deployment: d.name, entry, what: `${options.force ? "forced " : ""}deploy ${wanted.ref}`, note: wanted.note };
}

/**
 * Queues a rollback (to the release `to`, or the previous good one): what `deployq rollback`
 * and the dashboard both do. Refuses an in-place deployment, or a release that is missing,
 * incomplete or bad, before anything is queued.
 */
export async function queueRollback(settings: Settings, name: string, to: string | undefined, source: string): Promise<QueuedInstruction> {
  const d = configuredDeployment(settings, name);
  if (d.strategy === "in-place") {
    throw new DeployqError("BAD_REQUEST", `${name} uses the in-place strategy, which keeps no releases: deploy an older commit with \`deployq deploy ${name} --ref <sha>\``);
  }
  if (to !== undefined) {
    // The worker checks again under the lock; this refuses a wrong name before anything is queued.
    const release = (await listReleases(deploymentPaths(d.path))).find((r) => r.name === to);
    const problem = !release
      ? "there is no such release"
      : !release.meta
        ? "it is incomplete (its build never finished)"
        : release.meta.bad
          ? `it is marked bad (${release.meta.bad.reason.replace(/\s+/g, " ").slice(0, 200)})`
          : undefined;
    if (problem) throw new DeployqError("BAD_REQUEST", `cannot roll ${name} back to ${JSON.stringify(to)}: ${problem}; \`deployq releases ${name}\` lists the releases; nothing was queued`);
  }
  const entry = await enqueueInstruction(settings, d, "rollback", to ? { to } : {}, source);
  return { deployment: d.name, entry, what: to ? `rollback to ${to}` : "rollback to the previous good release", note: undefined };
}

export async function deployCommand(settings: Settings, name: string, ref: string | undefined, options: FollowOptions & { force?: boolean }): Promise<number> {
  const d = configuredDeployment(settings, name);
  // Taken before anything is queued: none of these logs can be the new entry's.
  const earlier = await existingLogs(settings, d);
  const queued = await queueDeploy(settings, name, ref, { force: options.force, source: cliSource() });
  if (queued.note) (options.out ?? process.stdout).write(`note: ${queued.note}\n`);
  return follow(settings, d, queued.entry, earlier, queued.what, options);
}

export async function rollbackCommand(settings: Settings, name: string, to: string | undefined, options: FollowOptions): Promise<number> {
  const d = configuredDeployment(settings, name);
  const earlier = await existingLogs(settings, d);
  const queued = await queueRollback(settings, name, to, cliSource());
  return follow(settings, d, queued.entry, earlier, queued.what, options);
}

/** One deploy log being read incrementally: from where the last read stopped, never from the start again. */
interface OpenLog {
  handle: FileHandle;
  offset: number;
  decoder: StringDecoder;
}

async function readMore(log: OpenLog): Promise<string> {
  const chunks: string[] = [];
  const buffer = Buffer.alloc(64 * 1024);
  for (;;) {
    const { bytesRead } = await log.handle.read(buffer, 0, buffer.length, log.offset);
    if (bytesRead === 0) return chunks.join("");
    log.offset += bytesRead;
    chunks.push(log.decoder.write(buffer.subarray(0, bytesRead)));
  }
}

/** The first line of a log file (which names its deploy's entry), reading only its start. */
async function firstLine(file: string): Promise<string | undefined> {
  let handle: FileHandle | undefined;
  try {
    handle = await open(file, "r");
    const buffer = Buffer.alloc(1024);
    const { bytesRead } = await handle.read(buffer, 0, buffer.length, 0);
    const text = buffer.subarray(0, bytesRead).toString();
    return text.includes("\n") ? text.slice(0, text.indexOf("\n")) : undefined;
  } catch {
    return undefined;
  } finally {
    await handle?.close();
  }
}

const logsDirOf = (settings: Settings, d: Deployment) => path.join(settings.dataDir, "logs", d.name);

/** The deploy logs there are before an entry is queued: none of them can be its own, so none is ever opened (there may be thousands). */
async function existingLogs(settings: Settings, d: Deployment): Promise<Set<number>> {
  return new Set(await logIds(logsDirOf(settings, d)));
}

const logIds = async (dir: string): Promise<number[]> =>
  (await readdir(dir).catch(() => [] as string[]))
    .map((n) => /^(\d+)\.log$/.exec(n)?.[1])
    .filter((id): id is string => id !== undefined)
    .map(Number);

/**
 * Shows the deploy's progress from its own log files (one per attempt, named by deploy id,
 * whose first line names the entry) until the entry has left the queue. Logs that existed
 * before the entry was queued are never opened; each new one is looked at once (its first
 * line), and the entry's own are then read from where the last read stopped.
 */
async function follow(settings: Settings, d: Deployment, entry: string, earlier: Set<number>, what: string, options: FollowOptions): Promise<number> {
  const out = options.out ?? process.stdout;
  const layout = queueLayout(settings.queuesDir);
  const queued = path.join(layout.deployment(d.name), entry);
  out.write(`queued ${what} for ${d.name}: ${queued}\n`);
  if (!options.wait) return 0;
  if (lockOwner(path.join(layout.root, ".workers.lock")) === undefined && settings.secrets.redisUrls.length === 0) {
    out.write("no workers process is running: it is deployed when `deployq serve` or `deployq workers` starts\n");
    return 0;
  }
  const logsDir = logsDirOf(settings, d);
  const looked = earlier;
  const ours: OpenLog[] = [];
  const header = `of ${d.name}: entry ${entry},`;
  let lastStep: string | undefined;
  let partial = "";
  const consider = (lines: string[]) => {
    lastStep = lines.filter((l) => l.startsWith("== ")).at(-1) ?? lastStep;
  };
  try {
    for (;;) {
      const stillQueued = await exists(queued);
      for (const id of (await logIds(logsDir)).filter((i) => !looked.has(i)).sort((a, b) => a - b)) {
        const file = path.join(logsDir, `${id}.log`);
        const line = await firstLine(file);
        if (line === undefined) continue; // its first line is being written: look again at the next turn
        looked.add(id);
        if (line.startsWith(`deploy ${id} `) && line.includes(header)) ours.push({ handle: await open(file, "r"), offset: 0, decoder: new StringDecoder("utf8") });
      }
      for (const log of ours) {
        const text = await readMore(log);
        if (text.length === 0) continue;
        out.write(text);
        const lines = (partial + text).split("\n");
        partial = lines.pop()!;
        consider(lines);
      }
      if (!stillQueued) break;
      await new Promise((r) => setTimeout(r, options.pollMs ?? 200));
    }
  } finally {
    for (const log of ours) await log.handle.close();
  }
  consider([partial]);
  if (await exists(path.join(layout.deadLetter(d.name), entry))) {
    out.write(`\nfailed: the entry is in dead-letter/${d.name}/ (\`deployq queue show ${entry}\`)\n`);
    return 1;
  }
  if (!lastStep) {
    out.write(`\n${what} was superseded by a newer entry before it ran (see \`deployq status ${d.name}\`)\n`);
    return 1;
  }
  return /^== (succeeded|already-deployed): /.test(lastStep) ? 0 : 1;
}
