/**
 * Entry file names: `<epoch-ns, 19 digits>-<delivery id>.json`, so that `ls` order is
 * arrival order. The delivery ID is a GUID (GitHub's X-GitHub-Delivery): anything else
 * is rejected before it can reach a file name.
 */
export const DELIVERY_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
export const ENTRY_NAME = /^(\d{19})-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.json$/i;

export function isDeliveryId(value: unknown): value is string {
  return typeof value === "string" && DELIVERY_ID.test(value);
}

export function isEntryName(name: string): boolean {
  return ENTRY_NAME.test(name);
}

let last = 0n;

/**
 * Wall-clock nanoseconds that never repeat and never go back within this process:
 * when the clock steps back (NTP), names keep increasing from the last one issued.
 * Across processes, each one that names entries first calls `advanceEntryClock` with the
 * newest name already issued (on disk, in the database: see seedEntryClock), so that a
 * process started with a clock behind the last one's still names its entries after them.
 */
export function monotonicEpochNs(now: bigint = clock()): bigint {
  last = now > last ? now : last + 1n;
  return last;
}

/** Names issued from now on sort after `name` (an entry name already issued, by any process). */
export function advanceEntryClock(name: string | null | undefined): void {
  const m = name ? ENTRY_NAME.exec(name) : null;
  if (!m) return;
  const epoch = BigInt(m[1]!);
  if (epoch > last) last = epoch;
}

function wallClockNs(): bigint {
  // performance.timeOrigin + now() gives sub-millisecond resolution on the wall clock.
  const ms = performance.timeOrigin + performance.now();
  return BigInt(Math.floor(ms * 1000)) * 1000n;
}

let clock: () => bigint = wallClockNs;

/**
 * For the torture suite: names are made from `source` (a wall clock that steps back at will;
 * the machine's own is left alone) instead of the wall clock, and what this process issued
 * so far is forgotten, as a process started anew would have forgotten it. No argument: the
 * wall clock again.
 */
export function replaceEntryClock(source: () => bigint = wallClockNs): void {
  clock = source;
  last = 0n;
}

export function entryName(deliveryId: string, epochNs: bigint = monotonicEpochNs()): string {
  if (!isDeliveryId(deliveryId)) throw new TypeError(`not a delivery ID (GUID): ${JSON.stringify(deliveryId)}`);
  return `${epochNs.toString().padStart(19, "0")}-${deliveryId.toLowerCase()}.json`;
}

/** The epoch (ms) and delivery ID encoded in an entry name, or undefined for other names. */
export function parseEntryName(name: string): { epochMs: number; deliveryId: string } | undefined {
  const m = ENTRY_NAME.exec(name);
  if (!m) return undefined;
  return { epochMs: Number(BigInt(m[1]!) / 1_000_000n), deliveryId: m[2]!.toLowerCase() };
}
