/**
 * Named locks. `using` holds the lock for as long as `fn` runs; `signal` aborts if the
 * lock is lost (a distributed lock that could not be extended), and every step checks it
 * before a side effect.
 */
export interface LockService {
  kind: string;
  using<T>(name: string, fn: (signal: AbortSignal) => Promise<T>): Promise<T>;
  close(): Promise<void>;
}

export const deploymentLockName = (deployment: string) => `deployq:deployment:${deployment}`;
export const NGINX_LOCK = "deployq:nginx";
