import { execFileSync } from "node:child_process";
import { readFile, writeFile } from "node:fs/promises";
import os from "node:os";
import { receiverKill } from "./receiver-kill.ts";
import { randomSeed } from "./rng.ts";
import { serveKill } from "./serve-kill.ts";

/**
 * npm run torture [-- --only <scenario,...>] [--seed N] [--kills N] [--write]: the scenarios
 * of RELIABILITY.md against real deployq processes and a real Postgres (DATABASE_URL, as the
 * tests). Each prints its seed: `--seed` replays a run's choices. `--kills` overrides each
 * scenario's own count. `--write` puts the figures into RELIABILITY.md. Exits 1 when an
 * invariant did not hold.
 */
const args = process.argv.slice(2);
const flag = (name: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : undefined;
};

interface Outcome {
  header: string[];
  row: Array<string | number>;
  problems: string[];
}

const SCENARIOS: Record<string, { kills: number; title: string; run(seed: number, kills: number): Promise<Outcome> }> = {
  "receiver-kill": {
    kills: 200,
    title: "kill -9 the receiver under load",
    async run(seed, kills) {
      const r = await receiverKill({ seed, kills, senders: 8, acksBetweenKills: [1, 60], log: (l) => console.log(l) });
      return {
        header: ["kills", "deliveries", "acknowledged (202)", "connection errors", "503", "duplicate answers (200)", "lost", "duplicated", "corrupt", "unrecorded", "left in .tmp/", "seconds"],
        row: [r.kills, r.deliveries, r.acknowledged, r.connectionErrors, r.answered503, r.duplicateAnswers, `**${r.lost}**`, `**${r.duplicated}**`, `**${r.corrupt}**`, `**${r.unrecorded}**`, r.leftovers, r.seconds],
        problems: r.problems,
      };
    },
  },
  "serve-kill": {
    kills: 40,
    title: "kill -9 `deployq serve` while pushes arrive and deploys run",
    async run(seed, kills) {
      const r = await serveKill({ seed, kills, log: (l) => console.log(l) });
      return {
        header: ["kills", "of them mid-deploy", "pushes", "acknowledged (202)", "connection errors", "deploys succeeded", "lost", "deployed or recorded twice", "bad current", "left in queues", "seconds"],
        row: [r.kills, r.killsMidDeploy, r.pushes, r.acknowledged, r.connectionErrors, r.deploysSucceeded, `**${r.lost}**`, `**${r.duplicated}**`, `**${r.badCurrent}**`, `**${r.leftInQueues}**`, r.seconds],
        problems: r.problems,
      };
    },
  },
};

const only = flag("only")?.split(",") ?? Object.keys(SCENARIOS);
const unknown = only.filter((n) => !(n in SCENARIOS));
const seed = flag("seed") !== undefined ? Number(flag("seed")) : randomSeed();
const killsFlag = flag("kills") !== undefined ? Number(flag("kills")) : undefined;
if (unknown.length > 0 || !Number.isInteger(seed) || (killsFlag !== undefined && (!Number.isInteger(killsFlag) || killsFlag < 1))) {
  console.error(`usage: npm run torture -- [--only ${Object.keys(SCENARIOS).join(",")}] [--seed <integer>] [--kills <count, at least 1>] [--write]`);
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
  const kills = killsFlag ?? scenario.kills;
  const command = `npm run torture -- --only ${name} --seed ${seed} --kills ${kills}`;
  console.log(`${name}: seed ${seed}, ${kills} kills (replay: ${command})`);
  const outcome = await scenario.run(seed, kills);
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
