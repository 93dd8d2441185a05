/** A seeded PRNG (mulberry32): the same seed replays the same run's choices. */
export interface Rng {
  seed: number;
  /** [0, 1) */
  next(): number;
  /** An integer in [min, max]. */
  int(min: number, max: number): number;
  /** One of `items`, each as likely. */
  pick<T>(items: readonly T[]): T;
}

export function createRng(seed: number): Rng {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (min: number, max: number) => min + Math.floor(next() * (max - min + 1));
  return { seed: seed >>> 0, next, int, pick: (items) => items[int(0, items.length - 1)]! };
}

/** A fresh seed, printed by every scenario so that a failure can be replayed with --seed. */
export function randomSeed(): number {
  return Math.floor(Math.random() * 2 ** 31);
}
