// Usage: node record-command.mjs <record file> <program> [args...]
//
// Runs <program> [args...] (stdio passed through, its exit code returned) and appends two
// JSON lines to <record file>: {"event":"start","pid","time","argv"} before and
// {"event":"end","pid","time","code","signal"} after. Tests use it (through
// recordingCommand() in pebble.ts) to see which certbot calls ran, with which arguments,
// and that two never overlapped. Times are Date.now() milliseconds.
import { appendFileSync } from "node:fs";
import { spawnSync } from "node:child_process";

const [file, program, ...args] = process.argv.slice(2);
if (!file || !program) {
  console.error("usage: record-command.mjs <record file> <program> [args...]");
  process.exit(64);
}
appendFileSync(file, `${JSON.stringify({ event: "start", pid: process.pid, time: Date.now(), argv: [program, ...args] })}\n`);
const result = spawnSync(program, args, { stdio: "inherit" });
appendFileSync(file, `${JSON.stringify({ event: "end", pid: process.pid, time: Date.now(), code: result.status, signal: result.signal })}\n`);
if (result.error) console.error(`record-command.mjs: ${program}: ${result.error.message}`);
process.exit(result.status ?? 1);
