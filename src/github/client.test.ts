import { describe, expect, it } from "vitest";
import { classify } from "./client.ts";
import { MAX_DESCRIPTION, StatusTexts, clampDescription } from "./statuses.ts";

const error = (status: number, headers: Record<string, string> = {}, message = "nope") => Object.assign(new Error(message), { status, response: { headers, data: { message } } });

describe("classify", () => {
  const now = 1_000_000_000_000;
  it("waits for the rate-limit reset, a second after it", () => {
    const reset = now / 1000 + 2;
    expect(classify(error(403, { "x-ratelimit-remaining": "0", "x-ratelimit-reset": String(reset) }), undefined, now)).toMatchObject({ kind: "rate-limited", retryAt: reset * 1000 + 1000 });
  });
  it("obeys Retry-After (secondary limits, 429)", () => {
    expect(classify(error(403, { "retry-after": "7" }), undefined, now)).toMatchObject({ kind: "rate-limited", retryAt: now + 7000 });
    expect(classify(error(429, { "retry-after": "0" }), undefined, now)).toMatchObject({ kind: "rate-limited", retryAt: now });
  });
  it("gives up on 401, 404 and 422 only, saying what to fix", () => {
    expect(classify(error(401))).toMatchObject({ kind: "permanent", message: expect.stringMatching(/GITHUB_TOKEN/) });
    expect(classify(error(404))).toMatchObject({ kind: "permanent", message: expect.stringMatching(/Commit statuses: read and write/) });
    expect(classify(error(422))).toMatchObject({ kind: "permanent" });
    for (const status of [500, 502, 503, 403]) expect(classify(error(status))).toMatchObject({ kind: "transient" });
    expect(classify(new Error("fetch failed"))).toMatchObject({ kind: "transient", status: undefined });
  });
});

describe("status texts", () => {
  const texts = new StatusTexts({ publicUrl: undefined, dashboard: { path: "/dashboard" } }, { name: "a".repeat(64), repository: "o/r" });
  const sha = "a".repeat(40);
  it("stay within GitHub's 140 characters", () => {
    expect(clampDescription("x".repeat(500))).toHaveLength(MAX_DESCRIPTION);
    for (const row of [...texts.failed(sha, 1, "health-check", sha), ...texts.rolledBack(sha, "b".repeat(40), 1), ...texts.superseded(sha, "c".repeat(40), 1)]) {
      expect(row.description.length).toBeLessThanOrEqual(MAX_DESCRIPTION);
      expect(row.targetUrl).toBeNull();
    }
  });
  it("write nothing for what is not a full commit id", () => {
    expect(texts.queued("0".repeat(40))).toEqual([]);
    expect(texts.queued("abc")).toEqual([]);
    expect(texts.queued("../../x")).toEqual([]);
    expect(texts.queued(undefined)).toEqual([]);
  });
});
