import { mkdirSync, readFileSync, unlinkSync, writeFileSync } from "node:fs";
import path from "node:path";
import { DeployqError } from "./errors.ts";

/**
 * PGlite has no locking between processes: two processes that open one data directory
 * corrupt it silently. The process that opens it holds this lock file (its pid inside)
 * for its whole life. A lock left by a process that no longer exists is taken over.
 */
export interface DataDirLock {
  path: string;
  release(): void;
}

export function lockOwner(lockPath: string): number | undefined {
  let pid: number;
  try {
    pid = Number.parseInt(readFileSync(lockPath, "utf8"), 10);
  } catch {
    return undefined;
  }
  if (!Number.isInteger(pid) || pid <= 0) return undefined;
  return isProcessAlive(pid) ? pid : undefined;
}

/** Whether a process with this pid exists (EPERM: it does, as another user). */
export function isProcessAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** The deployq command a process runs ("serve", "workers", …), from /proc; undefined when it cannot be told. */
export function deployqCommandOf(pid: number): string | undefined {
  try {
    const argv = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
    return argv.find((a) => ["serve", "receiver", "workers", "migrate", "status", "check"].includes(a));
  } catch {
    return undefined;
  }
}

export function acquireDataDirLock(dataDir: string): DataDirLock {
  return acquirePidLock(path.join(dataDir, "deployq.lock"), (owner) => {
    const command = deployqCommandOf(owner);
    const who = command ? `\`deployq ${command}\` (process ${owner})` : `deployq process ${owner}`;
    const base = `the embedded database in ${dataDir} is held by ${who}, and PGlite allows one process only, so this process cannot open it`;
    if (command === "serve") {
      // Already the one process that runs everything: telling its operator to run `serve` helps nobody.
      return (
        `${base}. That daemon already runs the receiver and the workers, and migrates at every start: ` +
        "`deployq status`, `check`, `deploy`, `rollback` and `queue` work beside it (they ask it, or use the queue files). " +
        `To run this command anyway, stop process ${owner} first; to run several deployq processes, set DATABASE_URL to a Postgres server`
      );
    }
    return (
      `${base}: stop process ${owner} first, or run the receiver and the workers as one process (\`deployq serve\`), ` +
      "or set DATABASE_URL to a Postgres server so that several processes can share it"
    );
  });
}

/**
 * A lock file holding this process's pid for its whole life; a file left by a process
 * that no longer exists is taken over. `conflict` says what to do when another live process holds it.
 */
export function acquirePidLock(lockPath: string, conflict: (owner: number) => string): DataDirLock {
  mkdirSync(path.dirname(lockPath), { recursive: true });
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      writeFileSync(lockPath, `${process.pid}\n`, { flag: "wx" });
      let released = false;
      return {
        path: lockPath,
        release() {
          if (released) return;
          released = true;
          try {
            if (readFileSync(lockPath, "utf8").trim() === String(process.pid)) unlinkSync(lockPath);
          } catch {
            // already gone
          }
        },
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      const owner = lockOwner(lockPath);
      if (owner !== undefined && owner !== process.pid) {
        throw new DeployqError("DATA_DIR_LOCKED", conflict(owner));
      }
      // Stale lock from a process that died: take it over.
      try {
        unlinkSync(lockPath);
      } catch {
        // someone else removed it; try again
      }
    }
  }
  throw new DeployqError("DATA_DIR_LOCKED", `could not take the lock ${lockPath}: remove it if no deployq process runs`);
}
