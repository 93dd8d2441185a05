import { randomBytes } from "node:crypto";
import { mkdir, readFile, rename, unlink, writeFile } from "node:fs/promises";
import path from "node:path";
import { z } from "zod";
import { fsyncDir } from "./fsync.ts";
import type { QueueLayout } from "./layout.ts";

/**
 * A deploy freeze: while `paused/<deployment>.json` exists (and has not expired), the
 * deployment's worker takes none of its entries. Pushes keep being queued, and the newest
 * still wins once it is resumed. A file, like the queues: `ls` and `cat` show who paused
 * what and why; `deployq pause` and `resume` (and the dashboard) write and remove it.
 */
export const PauseSchema = z.object({
  reason: z.string().max(1000),
  /** Who paused it: `cli:<user>@<host>`, `dashboard`, … */
  by: z.string().max(200),
  at: z.iso.datetime({ offset: true }),
  /** When it ends by itself; absent: until resumed. */
  until: z.iso.datetime({ offset: true }).optional(),
});
export type Pause = z.infer<typeof PauseSchema>;

/** The deployment's pause, if it is paused now. An expired pause counts as none (the worker removes it). A file that is not a pause is reported, so that it is not ignored. */
export async function readPause(layout: QueueLayout, deployment: string, now = Date.now()): Promise<{ pause: Pause; expired: boolean } | { invalid: string } | undefined> {
  let text: string;
  try {
    text = await readFile(layout.pause(deployment), "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw err;
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    return { invalid: `${layout.pause(deployment)} is not JSON: remove it (deployq resume ${deployment}) or write it again (deployq pause ${deployment})` };
  }
  const parsed = PauseSchema.safeParse(json);
  if (!parsed.success) return { invalid: `${layout.pause(deployment)} is not a pause: ${parsed.error.issues.map((i) => `${i.path.join(".") || "(root)"}: ${i.message}`).join("; ")}` };
  const expired = parsed.data.until !== undefined && Date.parse(parsed.data.until) <= now;
  return { pause: parsed.data, expired };
}

export async function writePause(layout: QueueLayout, deployment: string, pause: Pause): Promise<void> {
  const file = layout.pause(deployment);
  await mkdir(path.dirname(file), { recursive: true, mode: 0o750 });
  // Named as sweepTmp expects (.<pid>.<hex>.tmp): a starting daemon leaves it alone while this process lives.
  const tmp = path.join(layout.tmp, `${deployment}.pause.${process.pid}.${randomBytes(4).toString("hex")}.tmp`);
  await mkdir(layout.tmp, { recursive: true, mode: 0o750 });
  await writeFile(tmp, `${JSON.stringify(pause, null, 2)}\n`, { mode: 0o640 });
  await rename(tmp, file);
  await fsyncDir(path.dirname(file));
}

/** Removes the pause; says whether there was one. */
export async function removePause(layout: QueueLayout, deployment: string): Promise<boolean> {
  try {
    await unlink(layout.pause(deployment));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return false;
    throw err;
  }
  await fsyncDir(path.dirname(layout.pause(deployment)));
  return true;
}
