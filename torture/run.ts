import { execFileSync } from "node:child_process";
import { readFile, writeFile } from "node:fs/promises";
import os from "node:os";
import { clockBackScenario } from "./clock-back.ts";
import { floodScenario } from "./flood.ts";
import { hostileFilesScenario } from "./hostile-files.ts";
import { receiverKillScenario } from "./receiver-kill.ts";
import { randomSeed } from "./rng.ts";
import type { Scenario } from "./scenario.ts";
import { serveKillScenario } from "./serve-kill.ts";
import { workersKillScenario } from "./workers-kill.ts";
import { postgresOutageScenario } from "./postgres-outage.ts";
import { redisOutageScenario } from "./redis-outage.ts";
import { diskFullScenario } from "./disk-full.ts";

/**
 * npm run torture [-- --only <scenario,...>] [--seed N] [--count N] [--write]: the scenarios
 * of RELIABILITY.md against real deployq processes and a real Postgres (DATABASE_URL, as the
 * tests). Each prints its seed: `--seed` replays a run's choices. `--count` overrides each
 * scenario's own count (of kills, outages or rounds). `--write` puts the figures into RELIABILITY.md. Exits 1 when an
 * invariant did not hold.
 */
const args = process.argv.slice(2);
const flag = (name: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : undefined;
};

const SCENARIOS: Record<string, Scenario> = Object.fromEntries(
  [receiverKillScenario, serveKillScenario, workersKillScenario, postgresOutageScenario, redisOutageScenario, diskFullScenario, floodScenario, clockBackScenario, hostileFilesScenario].map((s) => [s.name, s]),
);

const KNOWN = new Set(["--only", "--seed", "--count"]);
const stray = args.filter((a, i) => a.startsWith("--") && a !== "--write" && !KNOWN.has(a) && !KNOWN.has(args[i - 1] ?? ""));
const only = flag("only")?.split(",") ?? Object.keys(SCENARIOS);
const unknown = only.filter((n) => !(n in SCENARIOS));
const seed = flag("seed") !== undefined ? Number(flag("seed")) : randomSeed();
const countFlag = flag("count") !== undefined ? Number(flag("count")) : undefined;
if (stray.length > 0 || unknown.length > 0 || !Number.isInteger(seed) || (countFlag !== undefined && (!Number.isInteger(countFlag) || countFlag < 1))) {
  console.error(`usage: npm run torture -- [--only ${Object.keys(SCENARIOS).join(",")}] [--seed <integer>] [--count <kills, outages or rounds, at least 1>] [--write]`);
  process.exit(2);
}

const machine = () => {
  const cpu = os.cpus()[0]?.model ?? "unknown CPU";
  let pg = "psql not found";
  try {
    pg = execFileSync("psql", ["--version"], { encoding: "utf8" }).trim();
  } catch {
    // not installed: said so
  }
  return `${os.cpus().length} × ${cpu}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, Linux ${os.release()}, Node ${process.version}, ${pg}`;
};

let failed = false;
for (const name of only) {
  const scenario = SCENARIOS[name]!;
  const count = countFlag ?? scenario.count;
  const command = `npm run torture -- --only ${name} --seed ${seed} --count ${count}`;
  console.log(`${name}: seed ${seed}, ${count} ${scenario.unit} (replay: ${command})`);
  const outcome = await scenario.run(seed, count);
  const table = [`| ${outcome.header.join(" | ")} |`, `| ${outcome.header.map(() => "---").join(" | ")} |`, `| ${outcome.row.join(" | ")} |`].join("\n");
  console.log(table);
  for (const p of outcome.problems) console.log(`  PROBLEM ${p}`);
  failed ||= outcome.problems.length > 0;
  if (args.includes("--write")) {
    const section = [
      `<!-- ${name} -->`,
      `### ${scenario.title} (${new Date().toISOString().slice(0, 10)})`,
      "",
      `\`${command}\` on ${machine()}.`,
      "",
      table,
      "",
      outcome.problems.length === 0 ? "Every invariant held." : `Problems:\n\n${outcome.problems.map((p) => `- ${p}`).join("\n")}`,
      `<!-- /${name} -->`,
    ].join("\n");
    const file = new URL("../RELIABILITY.md", import.meta.url);
    const text = await readFile(file, "utf8");
    const marked = new RegExp(`<!-- ${name} -->[\\s\\S]*<!-- /${name} -->`);
    await writeFile(file, marked.test(text) ? text.replace(marked, () => section) : `${text.trimEnd()}\n\n${section}\n`);
    console.log(`RELIABILITY.md: ${name} updated`);
  }
}
process.exit(failed ? 1 : 0);
