import { createHmac, timingSafeEqual } from "node:crypto";

const HEADER = /^sha256=([0-9a-f]{64})$/;

/**
 * Verifies X-Hub-Signature-256 against the raw body bytes, in constant time, for each
 * configured secret (several during a rotation).
 *
 * Why not @octokit/webhooks-methods' verify(): it takes the payload as a string and
 * re-encodes it as UTF-8, so a body with bytes that are not valid UTF-8 would be checked
 * against different bytes than GitHub signed. We use its sign() in tests and in
 * `deployq send-test-delivery`, which cross-checks this implementation.
 */
export function verifySignature(secrets: readonly string[], body: Buffer, header: string | undefined): boolean {
  const match = header ? HEADER.exec(header.trim().toLowerCase()) : null;
  if (!match) return false;
  const given = Buffer.from(match[1]!, "hex");
  let ok = false;
  for (const secret of secrets) {
    const expected = createHmac("sha256", secret).update(body).digest();
    // Check every secret, so timing does not tell which one matched.
    if (timingSafeEqual(expected, given)) ok = true;
  }
  return ok;
}
