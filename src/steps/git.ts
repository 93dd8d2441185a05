import { access, rm } from "node:fs/promises";
import path from "node:path";
import type { Writable } from "node:stream";
import { isValidBranchName } from "../config/branch.ts";
import { DeployqError, TransientError } from "../errors.ts";
import { ExecError } from "../exec/exec-error.ts";
import { runCommand } from "../exec/run-command.ts";

export interface GitContext {
  log?: Writable;
  signal?: AbortSignal;
  timeoutMs: number;
  pidFile?: string;
}

export const SHA = /^(?:[0-9a-f]{40}|[0-9a-f]{64})$/;
/** Fetched branches live here, where they cannot collide with anything else in the mirror. */
const FETCHED = "refs/deployq/heads";

/**
 * git never prompts (a deploy has no terminal), never runs the `ext::` transport, and
 * ignores the user's and system's configuration hooks where they could change what runs.
 */
function git(gitDir: string | undefined, args: string[], ctx: GitContext, extra: { workTree?: string; env?: Record<string, string>; cwd?: string } = {}) {
  const argv = ["git", "-c", "protocol.ext.allow=never", "-c", "core.hooksPath=/dev/null"];
  if (gitDir) argv.push(`--git-dir=${gitDir}`);
  if (extra.workTree) argv.push(`--work-tree=${extra.workTree}`);
  argv.push(...args);
  return runCommand(argv, {
    // Outside any repository (ls-remote): "/" so that a remote is never read as a remote name of the cwd's repository.
    cwd: extra.cwd ?? (gitDir ? path.dirname(gitDir) : "/"),
    env: { GIT_TERMINAL_PROMPT: "0", GIT_ASKPASS: "/bin/false", ...extra.env },
    timeoutMs: ctx.timeoutMs,
    ...(ctx.log ? { log: ctx.log } : {}),
    ...(ctx.signal ? { signal: ctx.signal } : {}),
    ...(ctx.pidFile ? { pidFile: ctx.pidFile } : {}),
  });
}

export async function ensureMirror(gitDir: string, ctx: GitContext): Promise<void> {
  try {
    await access(path.join(gitDir, "HEAD"));
    return;
  } catch {
    // not there yet
  }
  await runCommand(["git", "init", "--bare", "--quiet", "--", gitDir], { cwd: path.dirname(gitDir), timeoutMs: ctx.timeoutMs, ...(ctx.log ? { log: ctx.log } : {}) });
}

/**
 * What git says when the remote itself is wrong rather than out of reach: no repository at
 * that path or URL (local, GitHub over HTTPS or SSH), or credentials it refuses. Retrying
 * cannot help; the configuration (or the deploy key) must change.
 */
const REMOTE_IS_WRONG = [
  /does not appear to be a git repository/,
  /^(?:remote: |ERROR: )?Repository not found\.?$/im,
  /^fatal: repository '.*' not found$/m,
  /^fatal: Authentication failed for /m,
  /Permission denied \(publickey[^)]*\)/,
];

/**
 * Fetches every branch of the configured remote into refs/deployq/heads/*, pruning
 * deleted ones. `--end-of-options` keeps a remote that starts with "-" from being read as a flag.
 * A remote that does not exist, or refuses the credentials, is a permanent failure; any
 * other failure is transient (the network, the remote's host) and the deploy is retried.
 */
export async function fetchMirror(gitDir: string, remote: string, ctx: GitContext): Promise<void> {
  try {
    await git(gitDir, ["fetch", "--prune", "--no-tags", "--quiet", "--end-of-options", remote, `+refs/heads/*:${FETCHED}/*`], ctx);
  } catch (err) {
    if (err instanceof ExecError && err.reason === "aborted") throw err;
    const said = err instanceof ExecError ? err.stderrTail : "";
    if (err instanceof ExecError && err.reason === "exit" && REMOTE_IS_WRONG.some((re) => re.test(said))) {
      throw new DeployqError(
        "DEPLOY",
        `git fetch from ${remote} failed, and retrying will not help: ${said.trim().split("\n")[0]} ` +
          "(check the deployment's `remote` in the configuration, and that deployq's user can read it)",
        { cause: err },
      );
    }
    throw new TransientError(`git fetch from ${remote} failed: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
}

export async function hasCommit(gitDir: string, sha: string, ctx: GitContext): Promise<boolean> {
  if (!SHA.test(sha)) return false;
  try {
    await git(gitDir, ["cat-file", "-e", `${sha}^{commit}`], { ...ctx, log: undefined });
    return true;
  } catch (err) {
    if (err instanceof ExecError && err.reason === "exit") return false;
    throw err;
  }
}

/**
 * Makes sure `sha` is in the mirror: after the branch fetch it normally is; a commit that
 * is no longer on any branch (force-pushed away) is asked for by id, and when the remote
 * does not have it either, that is a permanent failure.
 */
export async function ensureCommit(gitDir: string, remote: string, sha: string, ctx: GitContext): Promise<void> {
  if (!SHA.test(sha)) throw new DeployqError("DEPLOY", `not a commit sha: ${JSON.stringify(sha)}`);
  if (await hasCommit(gitDir, sha, ctx)) return;
  try {
    await git(gitDir, ["fetch", "--no-tags", "--quiet", "--end-of-options", remote, sha], ctx);
  } catch {
    // reported below
  }
  if (!(await hasCommit(gitDir, sha, ctx))) {
    throw new DeployqError("DEPLOY", `commit ${sha} is not on ${remote} (force-pushed away?): push it again, or deploy another ref`);
  }
}

/** The commit a branch name or sha stands for, after a fetch. */
export async function resolveRef(gitDir: string, remote: string, ref: string, ctx: GitContext): Promise<string> {
  if (SHA.test(ref)) {
    await ensureCommit(gitDir, remote, ref, ctx);
    return ref;
  }
  const branch = ref.replace(/^refs\/heads\//, "");
  const head = await fetchedBranchHead(gitDir, branch, ctx);
  if (head === undefined) throw new DeployqError("DEPLOY", `${remote} has no branch ${JSON.stringify(branch)}`);
  return head;
}

/** The head of `branch` as the last fetch saw it; undefined when the remote has no such branch. */
export async function fetchedBranchHead(gitDir: string, branch: string, ctx: GitContext): Promise<string | undefined> {
  if (!isValidBranchName(branch)) throw new DeployqError("DEPLOY", `not a branch name or commit sha: ${JSON.stringify(branch)}`);
  try {
    const { stdout } = await git(gitDir, ["rev-parse", "--verify", "--quiet", "--end-of-options", `${FETCHED}/${branch}^{commit}`], { ...ctx, log: undefined });
    return stdout.trim();
  } catch (err) {
    if (err instanceof ExecError && err.reason === "exit") return undefined;
    throw err;
  }
}

/**
 * The branches of a remote, as `git ls-remote --heads` lists them (refs/heads/<name> → sha),
 * without fetching anything. `only`: just these branch names. Used by `deployq check` and
 * `deployq deploy --ref`, which must not write into the mirror (it belongs to the daemon's user).
 */
export async function lsRemote(remote: string, ctx: GitContext, only: readonly string[] = []): Promise<Map<string, string>> {
  const patterns = only.map((b) => {
    if (!isValidBranchName(b)) throw new DeployqError("DEPLOY", `not a branch name: ${JSON.stringify(b)}`);
    return `refs/heads/${b}`;
  });
  const { stdout } = await git(undefined, ["ls-remote", "--heads", "--end-of-options", remote, ...patterns], { ...ctx, log: undefined });
  const heads = new Map<string, string>();
  for (const line of stdout.split("\n")) {
    const [sha, ref] = line.split("\t");
    if (sha && ref?.startsWith("refs/heads/")) heads.set(ref.slice("refs/heads/".length), sha);
  }
  return heads;
}

/**
 * The commits of `gitDir` whose id starts with `prefix` (4 to 39 hex digits): one means
 * the prefix stands for it, several that it is ambiguous, none that the mirror lacks it.
 * Reads the mirror only.
 */
export async function commitsWithPrefix(gitDir: string, prefix: string, ctx: GitContext): Promise<string[]> {
  if (!/^[0-9a-f]{4,39}$/.test(prefix)) throw new DeployqError("DEPLOY", `not a short commit sha: ${JSON.stringify(prefix)}`);
  let candidates: string[];
  try {
    // Every object with the prefix (commits, trees, blobs); exits non-zero when there is none.
    const { stdout } = await git(gitDir, ["rev-parse", `--disambiguate=${prefix}`], { ...ctx, log: undefined });
    candidates = stdout.split("\n").filter((l) => SHA.test(l));
  } catch (err) {
    if (err instanceof ExecError && err.reason === "exit") return [];
    throw err;
  }
  const commits: string[] = [];
  for (const sha of candidates) if (await hasCommit(gitDir, sha, ctx)) commits.push(sha);
  return commits;
}

/**
 * Writes the files of exactly `sha` into an empty work tree (releases strategy). A fresh
 * index of its own means every file is written and the mirror's HEAD is never moved.
 */
export async function checkoutRelease(gitDir: string, workTree: string, sha: string, ctx: GitContext): Promise<void> {
  const index = path.join(path.dirname(gitDir), `.index-${path.basename(workTree)}`);
  try {
    await git(gitDir, ["checkout", "-f", sha, "--", "."], ctx, { workTree, env: { GIT_INDEX_FILE: index }, cwd: workTree });
  } finally {
    await rm(index, { force: true });
  }
}

/**
 * The classic post-receive checkout (in-place strategy): one work tree, updated to `sha`
 * with the mirror's own index, so files deleted in the new commit are deleted here too.
 */
export async function checkoutInPlace(gitDir: string, workTree: string, sha: string, ctx: GitContext): Promise<void> {
  await git(gitDir, ["checkout", "-f", "--detach", sha], ctx, { workTree, cwd: workTree });
}
