/** One scenario of `npm run torture`, as each scenario's module exports it (torture/run.ts lists them). */
export interface Scenario {
  name: string;
  title: string;
  /** What `--count` counts for this scenario (kills, outages, rounds), and its default. */
  unit: string;
  count: number;
  run(seed: number, count: number): Promise<Outcome>;
}

/** One table row of RELIABILITY.md and what did not hold. */
export interface Outcome {
  header: string[];
  row: Array<string | number>;
  problems: string[];
}

/** A figure that must be 0, bold in the table. */
export const must = (n: number) => `**${n}**`;
