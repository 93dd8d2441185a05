import { appendFileSync } from "node:fs";
import type { Spawned } from "../test/helpers/processes.ts";

/**
 * What the senders were told, kept outside deployq (its files and database are what the
 * check reads; this is what they are checked against): one JSON line per answer, appended
 * synchronously as it arrives, so that it survives whatever happens to deployq.
 */
export class Ledger {
  /** Delivery ID → the entry name of its 202 (one delivery may be acknowledged once only). */
  readonly acked = new Map<string, string>();
  /** Delivery ID → how many 200 duplicate answers it got. */
  readonly duplicates = new Map<string, number>();
  /** Answers that acknowledged a delivery a second time with another 202 (must be 0). */
  ackedTwice = 0;
  errors = 0;
  unavailable = 0;
  other = 0;

  constructor(readonly file: string) {}

  record(deliveryId: string, answer: { status: number; queued?: string } | { error: string }): void {
    appendFileSync(this.file, `${JSON.stringify({ at: Date.now(), delivery: deliveryId, ...answer })}\n`);
    if ("error" in answer) {
      this.errors++;
      return;
    }
    if (answer.status === 202 && answer.queued) {
      if (this.acked.has(deliveryId)) this.ackedTwice++;
      else this.acked.set(deliveryId, answer.queued);
    } else if (answer.status === 200) this.duplicates.set(deliveryId, (this.duplicates.get(deliveryId) ?? 0) + 1);
    else if (answer.status === 503) this.unavailable++;
    else this.other++;
  }
}

/** A scenario's problems as reported: the first 20, how many more, and the answers that were neither 2xx nor 503. */
export function reportedProblems(problems: readonly string[], ledger: Ledger): string[] {
  return [...problems.slice(0, 20), ...(problems.length > 20 ? [`… and ${problems.length - 20} more`] : []), ...(ledger.other > 0 ? [`${ledger.other} answers were neither 2xx nor 503`] : [])];
}

/** Whatever a scenario that failed half-way left running: SIGKILLed and waited for. */
export async function killIfRunning(p: Spawned): Promise<void> {
  if (p.child.exitCode !== null || p.child.signalCode !== null) return;
  p.child.kill("SIGKILL");
  await p.exited;
}
