/**
 * Histogram buckets, in seconds. Long work (deploys, their steps) uses the buckets of the
 * ComputeHorde validator: 0.5, 1, then every 2 s to 28, 30, every 5 s to 70, 75, 90, 105, 120.
 */
export const LONG_WORK_BUCKETS: readonly number[] = [
  0.5,
  1,
  ...Array.from({ length: 14 }, (_, i) => 2 + 2 * i), // 2 … 28
  30,
  ...Array.from({ length: 8 }, (_, i) => 35 + 5 * i), // 35 … 70
  75,
  90,
  105,
  120,
];

/** A webhook request: answered in milliseconds, within GitHub's 10 s limit. */
export const REQUEST_BUCKETS: readonly number[] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** From the receiver's rename into router/ to the router's handling: milliseconds, or the length of a backlog. */
export const PICKUP_BUCKETS: readonly number[] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];

/** Waiting for a lock: nothing usually, or as long as another host's deploy. */
export const LOCK_WAIT_BUCKETS: readonly number[] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, ...LONG_WORK_BUCKETS, 300, 600];
