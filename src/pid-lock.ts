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

export function acquireDataDirLock(dataDir: string): DataDirLock {
  return acquirePidLock(
    path.join(dataDir, "deployq.lock"),
    (owner) =>
      `the embedded database in ${dataDir} is in use by deployq process ${owner}, and PGlite allows one process only: ` +
      "stop that process first, or use `deployq serve` (one process), or set DATABASE_URL to a Postgres " +
      "server so that several processes can share it",
  );
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
