// redlock 5.0.0-beta.2 ships its types (dist/index.d.ts) but its package.json "exports"
// has no "types" entry, so TypeScript under NodeNext cannot find them. This declares the
// part deployq uses, after that file. (tsconfig "paths" would break tsx.)
declare module "redlock" {
  import type { EventEmitter } from "node:events";
  import type { Redis } from "ioredis";

  export interface Settings {
    readonly driftFactor: number;
    readonly retryCount: number;
    readonly retryDelay: number;
    readonly retryJitter: number;
    readonly automaticExtensionThreshold: number;
  }
  export interface ExecutionStats {
    readonly membershipSize: number;
    readonly quorumSize: number;
    readonly votesFor: Set<Redis>;
    readonly votesAgainst: Map<Redis, Error>;
  }
  export class ResourceLockedError extends Error {}
  export class ExecutionError extends Error {
    readonly attempts: ReadonlyArray<Promise<ExecutionStats>>;
  }
  export type RedlockAbortSignal = AbortSignal & { error?: Error };
  export class Lock {
    readonly resources: string[];
    readonly value: string;
    /** Epoch milliseconds at which the lock expires (drift already taken off). */
    readonly expiration: number;
    release(): Promise<ExecutionStats>;
  }
  export default class Redlock extends EventEmitter {
    constructor(clients: Iterable<Redis>, settings?: Partial<Settings>);
    acquire(resources: string[], duration: number, settings?: Partial<Settings>): Promise<Lock>;
    extend(existing: Lock, duration: number, settings?: Partial<Settings>): Promise<Lock>;
    quit(): Promise<void>;
  }
}
