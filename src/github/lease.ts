import { hostname } from "node:os";
import { eq, sql } from "drizzle-orm";
import type { Db } from "../db/client.ts";
import { githubLeases } from "../db/schema.ts";
import { isProcessAlive } from "../pid-lock.ts";

/**
 * Named leases in github_leases: one process at a time does a named job across every
 * process sharing the database (the outbox sender's github_sender lease, generalised to a
 * name). The holder renews it; one that dies loses it when it expires, or at once to a
 * process on its own host that sees it is gone.
 */

const HOST = hostname();

/** An owner name: host, pid and a random part (one process may hold several leases). */
export function leaseOwner(): string {
  return `${HOST}:${process.pid}:${Math.random().toString(36).slice(2, 8)}`;
}

/**
 * What a released lease runs until: expired however coarse the database's clock is. PGlite's
 * now() can be the same in two statements a moment apart, so a lease released at now() was
 * still not "< now()" for the next claim (168 of 300 claims right after a release failed).
 */
export const RELEASED = sql`'-infinity'::timestamptz`;

/** Takes or renews lease `name` for `ms`: true when `owner` holds it now. */
export async function claimLease(db: Db, name: string, owner: string, ms: number, takeOverFrom?: string): Promise<boolean> {
  const until = sql`now() + ${`${ms} milliseconds`}::interval`;
  const rows = await db
    .insert(githubLeases)
    .values({ name, owner, leaseUntil: until })
    .onConflictDoUpdate({
      target: githubLeases.name,
      set: { owner, leaseUntil: until },
      setWhere: sql`${githubLeases.owner} = ${owner} or ${githubLeases.leaseUntil} < now() or ${githubLeases.owner} = ${takeOverFrom ?? owner}`,
    })
    .returning({ owner: githubLeases.owner });
  return rows[0]?.owner === owner;
}

export async function leaseHolder(db: Db, name: string): Promise<string | undefined> {
  const [row] = await db.select({ owner: githubLeases.owner }).from(githubLeases).where(sql`${githubLeases.name} = ${name} and ${githubLeases.leaseUntil} >= now()`);
  return row?.owner;
}

export async function releaseLease(db: Db, name: string, owner: string): Promise<void> {
  await db.update(githubLeases).set({ leaseUntil: RELEASED }).where(sql`${eq(githubLeases.name, name)} and ${eq(githubLeases.owner, owner)}`);
}

/** A holder on this host whose process is gone (killed): its lease need not run out. */
export function heldByDeadProcessHere(holder: string | undefined): boolean {
  const m = holder ? /^(.*):(\d+):[a-z0-9]+$/.exec(holder) : null;
  return m !== null && m[1] === HOST && Number(m[2]) !== process.pid && !isProcessAlive(Number(m[2]));
}

/** claimLease, taking over from a dead holder on this host. */
export async function claimLeaseOrTakeOver(db: Db, name: string, owner: string, ms: number): Promise<boolean> {
  if (await claimLease(db, name, owner, ms)) return true;
  const holder = await leaseHolder(db, name);
  return heldByDeadProcessHere(holder) && (await claimLease(db, name, owner, ms, holder));
}
