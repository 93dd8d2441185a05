import { sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type TestDatabase, createTestDatabase } from "../../../test/helpers/db.ts";
import { dashboardSessions } from "../../db/schema.ts";
import { LoginLimiter, MAX_SESSIONS, SESSION_COOKIE, SessionStore, constantTimeEqual, csrfMatches, readCookie, sessionCookie } from "./auth.ts";

describe("dashboard sessions", () => {
  let t: TestDatabase;
  beforeAll(async () => {
    t = await createTestDatabase("pglite");
  });
  afterAll(async () => {
    await t?.dispose();
  });
  const db = () => t.database.db;

  it("gives each login a random id and CSRF token, and forgets a session once it expires", async () => {
    let now = 1_000_000;
    const store = new SessionStore(db(), 60_000, () => now);
    const a = await store.create();
    const b = await store.create();
    expect(a.id).not.toBe(b.id);
    expect(a.csrf).not.toBe(b.csrf);
    expect(a.id).toMatch(/^[A-Za-z0-9_-]{43}$/); // 32 random bytes
    expect(await store.get(a.id)).toEqual(a);
    now += 59_999;
    expect((await store.get(a.id))?.csrf).toBe(a.csrf);
    now += 1;
    expect(await store.get(a.id)).toBeUndefined();
    expect(await store.get(undefined)).toBeUndefined();
    expect(await store.get("made-up")).toBeUndefined();
    expect(await store.get(`${a.id.slice(0, 42)}'`)).toBeUndefined();
  });

  it("keeps only the id's SHA-256 in the table: what it holds does not log anyone in", async () => {
    const store = new SessionStore(db());
    const s = await store.create();
    const rows = await db().select().from(dashboardSessions);
    expect(rows.length).toBeGreaterThan(0);
    for (const row of rows) {
      expect(row.idHash).toMatch(/^[0-9a-f]{64}$/);
      expect(row.idHash).not.toContain(s.id);
      expect(await store.get(row.idHash)).toBeUndefined();
    }
  });

  it("is shared by every instance on the database (pm2's two receivers), and a logout ends it for all", async () => {
    const one = new SessionStore(db());
    const two = new SessionStore(db());
    const s = await one.create();
    expect((await two.get(s.id))?.csrf).toBe(s.csrf);
    await two.delete(s.id);
    expect(await one.get(s.id)).toBeUndefined();
  });

  it("shows a flash once: only one of two requests takes it", async () => {
    const store = new SessionStore(db());
    const s = await store.create();
    await store.setFlash(s.id, { kind: "ok", text: "queued <b>x</b>" });
    expect((await store.get(s.id))?.flash).toEqual({ kind: "ok", text: "queued <b>x</b>" });
    const taken = await Promise.all([store.takeFlash(s.id), store.takeFlash(s.id)]);
    expect(taken.filter(Boolean)).toHaveLength(1);
    expect((await store.get(s.id))?.flash).toBeUndefined();
  });

  it("holds at most MAX_SESSIONS, dropping the oldest", async () => {
    const store = new SessionStore(db());
    await db().delete(dashboardSessions);
    const first = await store.create();
    // The others, older than any new one but younger than the first, in one statement.
    await db().execute(sql`insert into dashboard_sessions (id_hash, csrf, created_at, expires_at)
      select md5(i::text) || md5((i + 1)::text), 'x', now() - interval '1 second', now() + interval '1 hour' from generate_series(1, ${MAX_SESSIONS}) as i`);
    await db().update(dashboardSessions).set({ createdAt: sql`now() - interval '1 minute'` }).where(sql`csrf = ${first.csrf}`);
    const last = await store.create();
    const [{ n }] = (await db().select({ n: sql<number>`count(*)::int` }).from(dashboardSessions)) as [{ n: number }];
    expect(n).toBe(MAX_SESSIONS);
    expect(await store.get(first.id)).toBeUndefined();
    expect((await store.get(last.id))?.csrf).toBe(last.csrf);
  });

  it("checks the CSRF token exactly", async () => {
    const session = await new SessionStore(db()).create();
    expect(csrfMatches(session, session.csrf)).toBe(true);
    expect(csrfMatches(session, `${session.csrf}x`)).toBe(false);
    expect(csrfMatches(session, session.csrf.slice(1))).toBe(false);
    expect(csrfMatches(session, "")).toBe(false);
    expect(csrfMatches(session, undefined)).toBe(false);
    expect(csrfMatches(session, [session.csrf])).toBe(false);
  });
});

describe("constantTimeEqual", () => {
  it("is true only for the same string, whatever the lengths", () => {
    expect(constantTimeEqual("token", "token")).toBe(true);
    expect(constantTimeEqual("token", "tokem")).toBe(false);
    expect(constantTimeEqual("token", "token2")).toBe(false);
    expect(constantTimeEqual("", "")).toBe(true);
    expect(constantTimeEqual("é", "e\u0301")).toBe(false);
  });
});

describe("LoginLimiter", () => {
  it("refuses an address after 5 failures within a minute, until the oldest leaves the window", () => {
    let now = 0;
    const limiter = new LoginLimiter(5, 60_000, () => now);
    for (let i = 0; i < 5; i++) {
      expect(limiter.retryAfterMs("1.2.3.4")).toBe(0);
      limiter.fail("1.2.3.4");
      now += 1000;
    }
    expect(limiter.retryAfterMs("1.2.3.4")).toBe(55_000);
    expect(limiter.retryAfterMs("5.6.7.8")).toBe(0);
    now = 60_000;
    expect(limiter.retryAfterMs("1.2.3.4")).toBe(0);
  });
});

describe("cookies", () => {
  it("reads one cookie among several", () => {
    expect(readCookie(`a=1; ${SESSION_COOKIE}=abc; b=2`, SESSION_COOKIE)).toBe("abc");
    expect(readCookie("a=1", SESSION_COOKIE)).toBeUndefined();
    expect(readCookie(undefined, SESSION_COOKIE)).toBeUndefined();
  });

  it("makes the session cookie HttpOnly, SameSite=Strict, scoped to the dashboard, Secure over https", () => {
    expect(sessionCookie("v", { path: "/dashboard", maxAgeS: 60, secure: false })).toBe(`${SESSION_COOKIE}=v; Path=/dashboard; Max-Age=60; HttpOnly; SameSite=Strict`);
    expect(sessionCookie("v", { path: "/d", maxAgeS: 60, secure: true })).toMatch(/; Secure$/);
  });
});
