import { rm } from "node:fs/promises";
import type { Db } from "../db/client.ts";
import { deleteDeploysBeyond } from "../db/queries/prune-deploys.ts";

export interface PruneDeploys {
  db: Db;
  deployment: string;
  host: string;
  /** keep_deploys of the deployment. */
  keep: number;
  /** The log file of a deploy: data_dir/logs/<deployment>/<id>.log (deployLogPath), never a path read from the row. */
  logFile: (id: number) => string;
}

/**
 * After a deploy's row is final: keep the newest `keep` deploys of this deployment on this
 * host, rows and log files. One query, then one unlink per row it deleted (usually one): no
 * scan of the logs directory. Returns the ids removed.
 */
export async function pruneDeploys(options: PruneDeploys): Promise<number[]> {
  const ids = await deleteDeploysBeyond(options.db, options.deployment, options.host, options.keep);
  // A superseded entry never had a log: force ignores the missing file.
  await Promise.all(ids.map((id) => rm(options.logFile(id), { force: true })));
  return ids;
}
