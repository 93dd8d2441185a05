import { mkdir, readFile, rename, unlink, writeFile } from "node:fs/promises";
import path from "node:path";
import { z } from "zod";

/**
 * `deployq cancel` and the deployment worker meet in data_dir/run/: the worker keeps
 * `<deployment>.running.json` (the deploy running now, and whether it may still be
 * cancelled) while a deploy runs, and `deployq cancel` asks it to stop by writing
 * `<deployment>.cancel.json` naming that deploy. A cancel is honoured until the step that
 * changes what is live (the switch of `current`, or an in-place checkout): up to there,
 * stopping leaves the previous release serving; after it, the deploy finishes, or rolls
 * back by itself.
 */
const RunningSchema = z.object({ deployId: z.number().int(), entry: z.string(), pid: z.number().int(), cancellable: z.boolean(), step: z.string().optional() });
export type Running = z.infer<typeof RunningSchema>;
const CancelSchema = z.object({ deployId: z.number().int(), by: z.string().max(200), at: z.string() });
export type CancelRequest = z.infer<typeof CancelSchema>;

const runningFile = (dataDir: string, deployment: string) => path.join(dataDir, "run", `${deployment}.running.json`);
const cancelFile = (dataDir: string, deployment: string) => path.join(dataDir, "run", `${deployment}.cancel.json`);

async function writeJson(file: string, value: unknown): Promise<void> {
  await mkdir(path.dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  await writeFile(tmp, `${JSON.stringify(value)}\n`);
  await rename(tmp, file);
}

async function readJson<T>(file: string, schema: z.ZodType<T>): Promise<T | undefined> {
  try {
    const parsed = schema.safeParse(JSON.parse(await readFile(file, "utf8")));
    return parsed.success ? parsed.data : undefined;
  } catch {
    return undefined;
  }
}

const remove = (file: string) => unlink(file).catch(() => {});

export const writeRunning = (dataDir: string, deployment: string, running: Running) => writeJson(runningFile(dataDir, deployment), running);
export const readRunning = (dataDir: string, deployment: string) => readJson(runningFile(dataDir, deployment), RunningSchema);
export const removeRunning = (dataDir: string, deployment: string) => remove(runningFile(dataDir, deployment));
export const writeCancel = (dataDir: string, deployment: string, request: CancelRequest) => writeJson(cancelFile(dataDir, deployment), request);
export const readCancel = (dataDir: string, deployment: string) => readJson(cancelFile(dataDir, deployment), CancelSchema);
export const removeCancel = (dataDir: string, deployment: string) => remove(cancelFile(dataDir, deployment));
