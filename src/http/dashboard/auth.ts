import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { and, desc, eq, gt, isNotNull, lte, notInArray } from "drizzle-orm";
import type { Db } from "../../db/client.ts";
import { dashboardSessions } from "../../db/schema.ts";

/**
 * The dashboard's login: one admin token (DEPLOYQ_ADMIN_TOKEN), exchanged once through a
 * form for a session. A session is a random id sent back as an HttpOnly, SameSite=Strict
 * cookie, with its own CSRF token that every state-changing request must carry in a hidden
 * field. Sessions live in the database (table dashboard_sessions, the id only as its
 * SHA-256), so that every receiver instance knows them and a restart logs nobody out.
 */

export const SESSION_COOKIE = "deployq_session";
/** A session lasts this long from its login, whatever is done with it. */
export const SESSION_TTL_MS = 8 * 60 * 60 * 1000;
/** At most this many live sessions; past that, the oldest are dropped (so logins cannot fill the table). */
export const MAX_SESSIONS = 1000;

/** Compares two secrets in time that depends on neither: both are hashed to the same length first. */
export function constantTimeEqual(a: string, b: string): boolean {
  const ha = createHash("sha256").update(a, "utf8").digest();
  const hb = createHash("sha256").update(b, "utf8").digest();
  // The lengths are compared too, after the comparison that takes the time.
  return timingSafeEqual(ha, hb) && a.length === b.length;
}

export type Flash = { kind: "ok" | "error"; text: string };

export interface Session {
  id: string;
  csrf: string;
  createdAt: number;
  expiresAt: number;
  /** Shown once on the next page (the result of an action), then cleared. */
  flash?: Flash;
}

/** What the table holds for an id: its SHA-256, never the id itself. */
const hashOf = (id: string) => createHash("sha256").update(id, "utf8").digest("hex");
/** A session id as this store makes them (32 random bytes, base64url): anything else is not looked up. */
const SESSION_ID = /^[A-Za-z0-9_-]{43}$/;

export class SessionStore {
  constructor(
    private readonly db: Db,
    private readonly ttlMs = SESSION_TTL_MS,
    private readonly now: () => number = Date.now,
  ) {}

  async create(): Promise<Session> {
    const at = this.now();
    const session: Session = { id: randomBytes(32).toString("base64url"), csrf: randomBytes(32).toString("base64url"), createdAt: at, expiresAt: at + this.ttlMs };
    await this.db.insert(dashboardSessions).values({ idHash: hashOf(session.id), csrf: session.csrf, createdAt: new Date(at), expiresAt: new Date(session.expiresAt) });
    await this.sweep(at);
    return session;
  }

  /** The live session with this id, if any, with its flash (which is not cleared: see takeFlash). */
  async get(id: string | undefined): Promise<Session | undefined> {
    if (!id || !SESSION_ID.test(id)) return undefined;
    const [row] = await this.db
      .select()
      .from(dashboardSessions)
      .where(and(eq(dashboardSessions.idHash, hashOf(id)), gt(dashboardSessions.expiresAt, new Date(this.now()))));
    if (!row) return undefined;
    return { id, csrf: row.csrf, createdAt: row.createdAt.getTime(), expiresAt: row.expiresAt.getTime(), ...(row.flash ? { flash: row.flash } : {}) };
  }

  /**
   * Clears the session's flash; true for the one request that cleared it (two pages loaded at
   * once do not both show it).
   */
  async takeFlash(id: string): Promise<boolean> {
    const rows = await this.db
      .update(dashboardSessions)
      .set({ flash: null })
      .where(and(eq(dashboardSessions.idHash, hashOf(id)), isNotNull(dashboardSessions.flash)))
      .returning({ idHash: dashboardSessions.idHash });
    return rows.length > 0;
  }

  async setFlash(id: string, flash: Flash): Promise<void> {
    await this.db.update(dashboardSessions).set({ flash }).where(eq(dashboardSessions.idHash, hashOf(id)));
  }

  async delete(id: string): Promise<void> {
    if (!SESSION_ID.test(id)) return;
    await this.db.delete(dashboardSessions).where(eq(dashboardSessions.idHash, hashOf(id)));
  }

  /** Expired sessions go, and the oldest past MAX_SESSIONS. */
  private async sweep(at: number): Promise<void> {
    await this.db.delete(dashboardSessions).where(lte(dashboardSessions.expiresAt, new Date(at)));
    const newest = this.db.select({ idHash: dashboardSessions.idHash }).from(dashboardSessions).orderBy(desc(dashboardSessions.createdAt)).limit(MAX_SESSIONS);
    await this.db.delete(dashboardSessions).where(notInArray(dashboardSessions.idHash, newest));
  }
}

/** The CSRF token a request carries matches its session's (in constant time). */
export function csrfMatches(session: Session, given: unknown): boolean {
  return typeof given === "string" && given.length > 0 && constantTimeEqual(session.csrf, given);
}

/**
 * Failed logins per client address: `limit` within `windowMs`, then every login attempt
 * from there is refused (429) until the oldest failure leaves the window. A good login does
 * not clear earlier failures: guessing must stay slow.
 */
export class LoginLimiter {
  private readonly failures = new Map<string, number[]>();

  constructor(
    readonly limit = 5,
    readonly windowMs = 60_000,
    private readonly now: () => number = Date.now,
  ) {}

  /** Milliseconds until this address may try again; 0 when it may now. */
  retryAfterMs(ip: string): number {
    const recent = this.recent(ip);
    if (recent.length < this.limit) return 0;
    return Math.max(1, recent[recent.length - this.limit]! + this.windowMs - this.now());
  }

  fail(ip: string): void {
    const recent = this.recent(ip);
    recent.push(this.now());
    this.failures.set(ip, recent);
    // Bounded: addresses whose failures all expired are forgotten.
    if (this.failures.size > 10_000) for (const key of this.failures.keys()) if (this.recent(key).length === 0) this.failures.delete(key);
  }

  private recent(ip: string): number[] {
    const since = this.now() - this.windowMs;
    const kept = (this.failures.get(ip) ?? []).filter((t) => t > since);
    if (kept.length === 0) this.failures.delete(ip);
    else this.failures.set(ip, kept);
    return kept;
  }
}

/** The value of one cookie in a Cookie header (no dependency for one name). */
export function readCookie(header: string | undefined, name: string): string | undefined {
  if (!header) return undefined;
  for (const part of header.split(";")) {
    const eq = part.indexOf("=");
    if (eq < 0) continue;
    if (part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return undefined;
}

export interface CookieOptions {
  path: string;
  maxAgeS: number;
  secure: boolean;
}

/** The session cookie: HttpOnly (no script reads it), SameSite=Strict (no other site sends it), scoped to the dashboard. */
export function sessionCookie(value: string, options: CookieOptions): string {
  return [`${SESSION_COOKIE}=${value}`, `Path=${options.path}`, `Max-Age=${options.maxAgeS}`, "HttpOnly", "SameSite=Strict", ...(options.secure ? ["Secure"] : [])].join("; ");
}
