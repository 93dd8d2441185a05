import { describe, expect, it } from "vitest";
import { LoginLimiter, MAX_SESSIONS, SESSION_COOKIE, SessionStore, constantTimeEqual, csrfMatches, readCookie, sessionCookie } from "./auth.ts";

describe("dashboard sessions", () => {
  it("gives each login a random id and CSRF token, and forgets a session once it expires", () => {
    let now = 1_000;
    const store = new SessionStore(60_000, () => now);
    const a = store.create();
    const b = store.create();
    expect(a.id).not.toBe(b.id);
    expect(a.csrf).not.toBe(b.csrf);
    expect(a.id).toMatch(/^[A-Za-z0-9_-]{43}$/); // 32 random bytes
    expect(store.get(a.id)).toBe(a);
    now += 59_999;
    expect(store.get(a.id)).toBe(a);
    now += 1;
    expect(store.get(a.id)).toBeUndefined();
    expect(store.get(undefined)).toBeUndefined();
    expect(store.get("made-up")).toBeUndefined();
  });

  it("holds at most MAX_SESSIONS, dropping the oldest", () => {
    const store = new SessionStore();
    const first = store.create();
    for (let i = 0; i < MAX_SESSIONS; i++) store.create();
    expect(store.size).toBe(MAX_SESSIONS);
    expect(store.get(first.id)).toBeUndefined();
  });

  it("checks the CSRF token exactly", () => {
    const session = new SessionStore().create();
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
