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

  constructor(reason = "deployq is starting") {
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
