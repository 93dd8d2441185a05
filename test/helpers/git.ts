import { execFile } from "node:child_process";
import { chmod, mkdir, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

const GIT_ENV = {
  GIT_AUTHOR_NAME: "Test",
  GIT_AUTHOR_EMAIL: "test@example.com",
  GIT_COMMITTER_NAME: "Test",
  GIT_COMMITTER_EMAIL: "test@example.com",
  GIT_CONFIG_NOSYSTEM: "1",
  HOME: "/nonexistent",
};

export async function git(cwd: string, ...args: string[]): Promise<string> {
  const { stdout } = await run("git", args, { cwd, env: { ...process.env, ...GIT_ENV } });
  return stdout.trim();
}

/** A bare repository standing in for GitHub, and a clone to commit from. */
export interface TestRepo {
  bare: string;
  work: string;
  /** Writes the files (null deletes), commits, pushes to `branch`; returns the sha. */
  commit(files: Record<string, string | null>, options?: { branch?: string; message?: string; executable?: string[] }): Promise<string>;
}

export async function createRepo(dir: string, name = "app"): Promise<TestRepo> {
  const bare = path.join(dir, `${name}.git`);
  const work = path.join(dir, `${name}-work`);
  await mkdir(bare, { recursive: true });
  await git(bare, "init", "--bare", "--quiet", "--initial-branch=main");
  await mkdir(work, { recursive: true });
  await git(work, "init", "--quiet", "--initial-branch=main");
  await git(work, "remote", "add", "origin", bare);
  let counter = 0;
  return {
    bare,
    work,
    async commit(files, options = {}) {
      const branch = options.branch ?? "main";
      const existing = await git(work, "branch", "--list", branch);
      const hasHead = await git(work, "rev-parse", "--verify", "--quiet", "HEAD").catch(() => "");
      if (hasHead) await git(work, "checkout", "--quiet", ...(existing ? [branch] : ["-b", branch]));
      else if (branch !== "main") await git(work, "checkout", "--quiet", "-b", branch);
      for (const [file, content] of Object.entries(files)) {
        const full = path.join(work, file);
        if (content === null) await rm(full, { force: true });
        else {
          await mkdir(path.dirname(full), { recursive: true });
          await writeFile(full, content);
          if (options.executable?.includes(file)) await chmod(full, 0o755);
        }
      }
      await git(work, "add", "--all");
      await git(work, "commit", "--quiet", "--allow-empty", "-m", options.message ?? `commit ${++counter}`);
      await git(work, "push", "--quiet", "--force", "origin", `HEAD:refs/heads/${branch}`);
      return git(work, "rev-parse", "HEAD");
    },
  };
}
