import type { Writable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import type { HealthConfig } from "../config/schema.ts";
import { DeployqError } from "../errors.ts";

const ANSWER_BYTES = 500;
const REQUEST_TIMEOUT_MS = 5_000;

/** The probe's last answer, for the log and the deploy's error. */
function describe(status: number, body: string): string {
  const text = body.replace(/\s+/g, " ").trim().slice(0, ANSWER_BYTES);
  return `HTTP ${status}${text ? `: ${text}` : ""}`;
}

/**
 * Polls the health URL until it answers 2xx; throws a DeployqError with the last answer (a
 * status and the start of its body, or the connection error) when `timeout_s` runs out.
 * Redirects are not followed: a health endpoint answers itself.
 */
export async function waitHealthy(health: HealthConfig, log: Writable, signal?: AbortSignal): Promise<void> {
  const deadline = performance.now() + health.timeout_s * 1000;
  let last = "no answer yet";
  let delay = 100;
  log.write(`GET ${health.url} until it answers 2xx (at most ${health.timeout_s} s)\n`);
  for (let attempt = 1; ; attempt++) {
    if (signal?.aborted) throw new DeployqError("DEPLOY", "the health check was cancelled (shutdown or lost lock)");
    const remaining = deadline - performance.now();
    try {
      const timeout = AbortSignal.timeout(Math.round(Math.max(50, Math.min(REQUEST_TIMEOUT_MS, remaining))));
      const res = await fetch(health.url, { redirect: "manual", signal: signal ? AbortSignal.any([signal, timeout]) : timeout, headers: { "user-agent": "deployq-health" } });
      const body = await res.text().catch(() => "");
      last = describe(res.status, body);
      if (res.status >= 200 && res.status < 300) {
        log.write(`healthy after ${attempt} attempt(s): ${last}\n`);
        return;
      }
    } catch (err) {
      const cause = (err as { cause?: { code?: string; message?: string } }).cause;
      last = cause?.code ?? cause?.message ?? (err as Error).message;
    }
    if (performance.now() + delay > deadline) break;
    await sleep(delay, undefined, signal ? { signal } : {}).catch(() => {});
    delay = Math.min(delay * 2, 2_000);
  }
  log.write(`not healthy within ${health.timeout_s} s; last answer: ${last}\n`);
  throw new DeployqError("DEPLOY", `health check ${health.url} failed within ${health.timeout_s} s; last answer: ${last}`);
}
