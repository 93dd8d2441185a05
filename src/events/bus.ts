import { hostname } from "node:os";
import type { DeployqEvent, StampedEvent } from "./types.ts";

export type EventListener = (event: StampedEvent) => void;

/**
 * The events of one process. emit() stamps an event and hands it to every listener at
 * once, synchronously: a listener must not block or throw (one that throws is logged by
 * its owner, never by the emitter, and does not stop the others). Nothing on the deploy
 * path waits for a listener: those that do slow work (the database writer, /ws/v0 clients)
 * queue what they get, bounded, and drop when full.
 */
/** Read once: the host name names the process (with its pid) in every event. */
const HOST = hostname();

export class Events {
  readonly #listeners = new Set<EventListener>();

  emit(event: DeployqEvent): void {
    if (this.#listeners.size === 0) return;
    const stamped = { ...event, at: new Date().toISOString(), pid: process.pid, host: HOST } as StampedEvent;
    for (const listener of this.#listeners) {
      try {
        listener(stamped);
      } catch {
        // A listener's own failure is its own; the deploy goes on.
      }
    }
  }

  /** Returns the function that removes the listener. */
  on(listener: EventListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }
}

/** For code run without a daemon (the CLI's own deploys, tests): events go nowhere. */
export const noEvents = new Events();
