import { createHash, randomBytes, timingSafeEqual } from "node:crypto";

/**
 * The dashboard's login: one admin token (DEPLOYQ_ADMIN_TOKEN), exchanged once through a
 * form for a session. A session is a random id kept in this process's memory (a restart
 * logs everyone out), sent back as an HttpOnly, SameSite=Strict cookie, with its own CSRF
 * token that every state-changing request must carry in a hidden field.
 */

export const SESSION_COOKIE = "deployq_session";
/** A session lasts this long from its login, whatever is done with it. */
export const SESSION_TTL_MS = 8 * 60 * 60 * 1000;
/** At most this many live sessions; past that, the oldest is dropped (so logins cannot fill the memory). */
export const MAX_SESSIONS = 1000;

/** Compares two secrets in time that depends on neither: both are hashed to the same length first. */
export function constantTimeEqual(a: string, b: string): boolean {
  const ha = createHash("sha256").update(a, "utf8").digest();
  const hb = createHash("sha256").update(b, "utf8").digest();
  // The lengths are compared too, after the comparison that takes the time.
  return timingSafeEqual(ha, hb) && a.length === b.length;
}

export interface Session {
  id: string;
  csrf: string;
  createdAt: number;
  expiresAt: number;
  /** Shown once on the next page (the result of an action), then cleared. */
  flash?: { kind: "ok" | "error"; text: string };
}

export class SessionStore {
  private readonly sessions = new Map<string, Session>();

  constructor(
    private readonly ttlMs = SESSION_TTL_MS,
    private readonly now: () => number = Date.now,
  ) {}

  create(): Session {
    this.sweep();
    while (this.sessions.size >= MAX_SESSIONS) {
      const oldest = this.sessions.keys().next().value;
      if (oldest === undefined) break;
      this.sessions.delete(oldest);
    }
    const at = this.now();
    const session: Session = { id: randomBytes(32).toString("base64url"), csrf: randomBytes(32).toString("base64url"), createdAt: at, expiresAt: at + this.ttlMs };
    this.sessions.set(session.id, session);
    return session;
  }

  /** The live session with this id, if any (an expired one is removed). */
  get(id: string | undefined): Session | undefined {
    if (!id) return undefined;
    const session = this.sessions.get(id);
    if (!session) return undefined;
    if (session.expiresAt <= this.now()) {
      this.sessions.delete(id);
      return undefined;
    }
    return session;
  }

  delete(id: string): void {
    this.sessions.delete(id);
  }

  get size(): number {
    return this.sessions.size;
  }

  private sweep(): void {
    const at = this.now();
    for (const [id, s] of this.sessions) if (s.expiresAt <= at) this.sessions.delete(id);
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
