import { sign } from "@octokit/webhooks-methods";
import { describe, expect, it } from "vitest";
import { verifySignature } from "./signature.ts";

describe("verifySignature", () => {
  // https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries#testing-the-webhook-payload-validation
  const secret = "It's a Secret to Everybody";
  const body = Buffer.from("Hello, World!");
  const expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

  it("passes GitHub's documented test vector", () => {
    expect(verifySignature([secret], body, expected)).toBe(true);
  });

  it("agrees with @octokit/webhooks-methods' sign()", async () => {
    expect(await sign(secret, "Hello, World!")).toBe(expected);
    const payload = JSON.stringify({ ref: "refs/heads/main", emoji: "🚀" });
    expect(verifySignature([secret], Buffer.from(payload), await sign(secret, payload))).toBe(true);
  });

  it("accepts any of several secrets (rotation)", () => {
    expect(verifySignature(["new secret", secret], body, expected)).toBe(true);
    expect(verifySignature(["new secret", "older"], body, expected)).toBe(false);
  });

  it.each([
    ["a flipped byte in the body", Buffer.from("Hello, World?"), expected],
    ["a flipped hex digit", body, expected.replace("7571", "7572")],
    ["a missing header", body, undefined],
    ["a SHA-1 signature", body, "sha1=01dc10d0c83e72ed246219cdd91669667fe2ca59"],
    ["a wrong-length signature", body, expected.slice(0, -2)],
    ["a longer signature", body, `${expected}00`],
    ["no algorithm prefix", body, expected.slice("sha256=".length)],
    ["non-hex characters", body, `sha256=${"z".repeat(64)}`],
  ])("rejects %s", (_what, b, header) => {
    expect(verifySignature([secret], b, header)).toBe(false);
  });
});
