/**
 * Whether the receiver can take deliveries yet. It listens before the database is reached
 * (a receiver started during a Postgres outage answers 503 until it is up, instead of
 * exiting and being restarted in a loop), and takes deliveries once the schema is migrated
 * and the entry clock seeded. Entries a previous receiver left in router/ without their row
 * are recorded while it already serves: until each one is, a redelivery of it is known to be
 * a duplicate from its name alone.
 */
export class Readiness {
  #reason: string | undefined;
  readonly #unrecorded = new Set<string>();
  readonly #waiters = new Set<() => void>();

  /** `reason`: why it is not ready yet; undefined, ready at once. */
  constructor(reason: string | undefined) {
    this.#reason = reason;
  }

  /** Why deliveries get 503 now; undefined once they are taken. */
  notReady(): string | undefined {
    return this.#reason;
  }

  waiting(reason: string): void {
    this.#reason = reason;
  }

  accepting(): void {
    this.#reason = undefined;
    for (const wake of this.#waiters) wake();
    this.#waiters.clear();
  }

  /**
   * Resolves true once deliveries are taken, or false after `ms`. A request that arrives
   * while the receiver starts waits for it, rather than get a 503 it need not: during a
   * pm2 reload the new instance gets connections as soon as it listens, and reaching a
   * database that is up takes a moment.
   */
  whenAccepting(ms: number): Promise<boolean> {
    if (this.#reason === undefined) return Promise.resolve(true);
    return new Promise((resolve) => {
      const wake = () => {
        clearTimeout(timer);
        resolve(true);
      };
      const timer = setTimeout(() => {
        this.#waiters.delete(wake);
        resolve(false);
      }, ms);
      this.#waiters.add(wake);
    });
  }

  /** Deliveries whose entries are in router/ but whose rows may not be recorded yet. */
  expectUnrecorded(deliveryIds: Iterable<string>): void {
    for (const id of deliveryIds) this.#unrecorded.add(id);
  }

  recorded(deliveryIds: Iterable<string>): void {
    for (const id of deliveryIds) this.#unrecorded.delete(id);
  }

  isUnrecorded(deliveryId: string): boolean {
    return this.#unrecorded.has(deliveryId);
  }
}
