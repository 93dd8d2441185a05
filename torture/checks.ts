import { readFile, readdir, readlink, stat } from "node:fs/promises";
import path from "node:path";
import { and, inArray } from "drizzle-orm";
import type { Database } from "../src/db/client.ts";
import { FINAL_STATUSES } from "../src/db/queries/deploys.ts";
import { deliveries, deploys } from "../src/db/schema.ts";
import type { Ledger } from "./ledger.ts";

/** The checks the scenarios that deploy share, each adding what did not hold to `problems`. */

/** What every scenario that deploys reports, beside its own figures. */
export interface DeployInvariants {
  seed: number;
  /** Acknowledged entries not routed, or routed without a final deploy row. */
  lost: number;
  /** Acknowledged twice, or an entry with two final deploy rows (deployed, or recorded, twice). */
  duplicated: number;
  /** `current` not a whole release (its metadata written, its build finished) of the newest commit. */
  badCurrent: number;
  /** Entries left in router/, a deployment's queue or dead-letter/ (and temporaries in .tmp/) once settled. */
  leftInQueues: number;
  seconds: number;
  problems: string[];
}

/** Where a deployment's release lives and whether it is whole, read from its `current` link. */
export async function checkCurrent(appDir: string, newest: string, problems: string[]): Promise<number> {
  const current = path.join(appDir, "current");
  const target = await readlink(current).catch(() => undefined);
  const releaseDir = target ? path.resolve(appDir, target) : undefined;
  if (!releaseDir || !(await stat(releaseDir).catch(() => undefined))?.isDirectory()) {
    problems.push(`current does not point at a release directory (${target ?? "no link"})`);
    return 1;
  }
  const meta = await readFile(path.join(releaseDir, ".deployq-release.json"), "utf8").catch(() => undefined);
  const live = meta ? (JSON.parse(meta) as { sha: string }).sha : undefined;
  if (live !== newest) {
    problems.push(`current is ${live ?? "a release without its metadata"}, not the newest commit pushed, ${newest}`);
    return 1;
  }
  if ((await readFile(path.join(releaseDir, "built.txt"), "utf8").catch(() => "")).trim() !== "built") {
    problems.push(`current (${target}) was switched to before its build finished`);
    return 1;
  }
  return 0;
}

/** The sha `current`'s release metadata names, if any. */
export async function liveSha(appDir: string): Promise<string | undefined> {
  const meta = await readFile(path.join(appDir, "current", ".deployq-release.json"), "utf8").catch(() => undefined);
  return meta ? (JSON.parse(meta) as { sha: string }).sha : undefined;
}

export const entryFiles = async (dir: string) => (await readdir(dir).catch(() => [] as string[])).filter((n) => n.endsWith(".json"));

/**
 * The ledger against the database: every acknowledged delivery (202, or 200 duplicate) has
 * its one "routed" row, and every entry routed to `deployment` has exactly one final deploy row.
 */
export async function checkRoutedOnce(database: Database, ledger: Ledger, deployment: string | string[], problems: string[]) {
  const followers = typeof deployment === "string" ? [deployment] : deployment;
  const db = database.db;
  const rows = await db.select().from(deliveries);
  const rowOf = new Map(rows.map((r) => [r.deliveryId, r]));
  let lost = 0;
  for (const id of new Set([...ledger.acked.keys(), ...ledger.duplicates.keys()])) {
    const row = rowOf.get(id);
    if (!row || row.outcome !== "routed") {
      lost++;
      problems.push(`lost: ${id} was acknowledged but its row is ${row ? row.outcome : "missing"}`);
    }
  }
  const finals = await db
    .select({ deployment: deploys.deployment, entry: deploys.entry, status: deploys.status })
    .from(deploys)
    .where(and(inArray(deploys.deployment, followers), inArray(deploys.status, [...FINAL_STATUSES])));
  const finalsOf = new Map<string, string[]>();
  for (const f of finals) finalsOf.set(`${f.deployment}/${f.entry}`, [...(finalsOf.get(`${f.deployment}/${f.entry}`) ?? []), f.status]);
  let duplicated = ledger.ackedTwice;
  if (ledger.ackedTwice > 0) problems.push(`${ledger.ackedTwice} deliveries were answered 202 twice`);
  for (const row of rows) {
    if (row.outcome !== "routed" || !row.entry) continue;
    for (const d of followers) {
      const got = finalsOf.get(`${d}/${row.entry}`) ?? [];
      if (got.length === 0) {
        lost++;
        problems.push(`never finished: ${row.entry} has no final deploy row in ${d}`);
      } else if (got.length > 1) {
        duplicated++;
        problems.push(`twice: ${row.entry} has final rows ${got.join(", ")} in ${d}`);
      }
    }
  }
  const failed = finals.filter((f) => f.status === "failed" || f.status === "cancelled");
  if (failed.length > 0) problems.push(`${failed.length} deploys failed or were cancelled (${failed.map((f) => f.entry).join(", ")})`);
  return { lost, duplicated, succeeded: finals.filter((f) => f.status === "succeeded").length };
}

/** Entries left in router/, deployments/<name>/, dead-letter/, and anything in .tmp/. */
export async function leftovers(queuesDir: string, deployment: string | string[], problems: string[]): Promise<number> {
  const followers = typeof deployment === "string" ? [deployment] : deployment;
  const deadLetters = (await readdir(path.join(queuesDir, "dead-letter"), { recursive: true }).catch(() => [] as string[])).filter((n) => n.endsWith(".json"));
  const tmp = await readdir(path.join(queuesDir, ".tmp")).catch(() => [] as string[]);
  let left = (await entryFiles(path.join(queuesDir, "router"))).length + deadLetters.length;
  for (const d of followers) left += (await entryFiles(path.join(queuesDir, "deployments", d))).length;
  if (left > 0) problems.push(`${left} entries left in router/, deployments/${followers.join("|")}/ or dead-letter/`);
  if (tmp.length > 0) problems.push(`${tmp.length} temporaries left in .tmp/ (${tmp.slice(0, 5).join(", ")})`);
  return left + tmp.length;
}

