import { writeFile, readFile } from "node:fs/promises";
import os from "node:os";
import { execFileSync } from "node:child_process";
import { receiverKill, type ReceiverKillResult } from "./receiver-kill.ts";
import { randomSeed } from "./rng.ts";

/**
 * npm run torture [-- --seed N] [--kills N] [--write]: the scenarios of RELIABILITY.md against
 * real deployq processes and a real Postgres (DATABASE_URL, as the tests). Each prints its
 * seed: `--seed` replays a run's choices. `--write` puts the figures into RELIABILITY.md.
 * Exits 1 when an invariant did not hold.
 */
const args = process.argv.slice(2);
const flag = (name: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : undefined;
};
const seed = flag("seed") !== undefined ? Number(flag("seed")) : randomSeed();
const kills = flag("kills") !== undefined ? Number(flag("kills")) : 200;
if (!Number.isInteger(seed) || !Number.isInteger(kills) || kills < 1) {
  console.error("usage: npm run torture -- [--seed <integer>] [--kills <count, at least 1>] [--write]");
  process.exit(2);
}

const command = `npm run torture -- --seed ${seed} --kills ${kills}`;
console.log(`receiver-kill: seed ${seed}, ${kills} kills (replay: ${command})`);
const result: ReceiverKillResult = await receiverKill({ seed, kills, senders: 8, acksBetweenKills: [1, 60], log: (l) => console.log(l) });
const table = [
  "| kills | deliveries | acknowledged (202) | connection errors | 503 | duplicate answers (200) | lost | duplicated | corrupt | unrecorded | left in .tmp/ | seconds |",
  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  `| ${result.kills} | ${result.deliveries} | ${result.acknowledged} | ${result.connectionErrors} | ${result.answered503} | ${result.duplicateAnswers} | **${result.lost}** | **${result.duplicated}** | **${result.corrupt}** | **${result.unrecorded}** | ${result.leftovers} | ${result.seconds} |`,
].join("\n");
console.log(table);
for (const p of result.problems) console.log(`  PROBLEM ${p}`);

if (args.includes("--write")) {
  const cpu = os.cpus()[0]?.model ?? "unknown CPU";
  const node = process.version;
  const pg = (() => {
    try {
      return execFileSync("psql", ["--version"], { encoding: "utf8" }).trim();
    } catch {
      return "psql not found";
    }
  })();
  const section = [
    `<!-- receiver-kill -->`,
    `### kill -9 the receiver under load (${new Date().toISOString().slice(0, 10)})`,
    "",
    `\`${command}\` on ${os.cpus().length} × ${cpu}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, Linux ${os.release()}, Node ${node}, ${pg}.`,
    "",
    table,
    "",
    result.problems.length === 0 ? "Every invariant held." : `Problems:\n\n${result.problems.map((p) => `- ${p}`).join("\n")}`,
    `<!-- /receiver-kill -->`,
  ].join("\n");
  const file = new URL("../RELIABILITY.md", import.meta.url);
  const text = await readFile(file, "utf8");
  const updated = text.replace(/<!-- receiver-kill -->[\s\S]*<!-- \/receiver-kill -->/, section);
  await writeFile(file, updated === text && !text.includes("<!-- receiver-kill -->") ? `${text.trimEnd()}\n\n${section}\n` : updated);
  console.log("RELIABILITY.md updated");
}
process.exit(result.problems.length === 0 ? 0 : 1);
