import { readFile, readdir } from "node:fs/promises";

/** The fields of /proc/<pid>/stat that deployq reads (Linux). */
export interface ProcStat {
  /** R, S, D, Z (zombie: dead, waiting to be reaped), ... */
  state: string;
  ppid: number;
  /** Process group id. */
  pgrp: number;
  /** Clock ticks after boot: a pid with another start time is another process. */
  starttime: string;
}

/** A process's stat, or null when it does not exist (or cannot be read). */
export async function readProcStat(pid: number | string): Promise<ProcStat | null> {
  try {
    const text = await readFile(`/proc/${pid}/stat`, "utf8");
    // The command name, in parentheses, may hold spaces and parentheses: fields start after the last ")".
    const fields = text.slice(text.lastIndexOf(")") + 2).split(" ");
    return { state: fields[0] ?? "", ppid: Number(fields[1]), pgrp: Number(fields[2]), starttime: fields[19] ?? "" };
  } catch {
    return null;
  }
}

/** The pids of the live (not zombie) processes in process group `pgrp`. */
export async function liveGroupMembers(pgrp: number): Promise<number[]> {
  const pids: number[] = [];
  for (const name of await readdir("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    const st = await readProcStat(name);
    if (st && st.pgrp === pgrp && st.state !== "Z") pids.push(Number(name));
  }
  return pids;
}

/** A process's command line (its argv, NUL-separated in /proc), or [] when it is gone or has none (a zombie, a kernel thread). */
export async function readCmdline(pid: number): Promise<string[]> {
  try {
    const text = await readFile(`/proc/${pid}/cmdline`, "utf8");
    return text.split("\0").filter((arg, i, all) => arg !== "" || i < all.length - 1);
  } catch {
    return [];
  }
}
