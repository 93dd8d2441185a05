/**
 * Summarizes a V8 CPU profile written by `npm run bench -- --only receiver --cpu-prof`
 * (bench/profiles/CPU.*.cpuprofile; the main thread's is the one ending in .0.001):
 * self and inclusive time per function, over the last seconds of the profile (the
 * measured load, not the start-up), per served request when their number is given.
 *
 *   npx tsx bench/cpuprofile-summary.ts <file.cpuprofile> [window seconds] [requests]
 */
import { readFileSync } from "node:fs";

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

const [file, windowArg, requestsArg] = process.argv.slice(2);
if (!file) {
  console.error("usage: npx tsx bench/cpuprofile-summary.ts <file.cpuprofile> [window seconds] [requests]");
  process.exit(2);
}
const profile = JSON.parse(readFileSync(file, "utf8")) as Profile;
const windowUs = Number(windowArg ?? 10) * 1e6;
const requests = Number(requestsArg ?? 0);

const byId = new Map(profile.nodes.map((n) => [n.id, n]));
const parent = new Map<number, number>();
for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
const key = (n: ProfileNode) => {
  const { url, functionName, lineNumber } = n.callFrame;
  const where = url.replace(/.*node_modules\//, "").replace(/^file:\/\/.*?\/(src|bench)\//, "$1/");
  return `${functionName || "(anonymous)"}${where ? ` ${where}:${lineNumber + 1}` : ""}`;
};

// Each sample lasts until the next one; keep those of the last `window` seconds (the shutdown is short).
let t = profile.startTime;
const stamps = profile.timeDeltas.map((d) => (t += d));
const from = profile.endTime - windowUs;
const self = new Map<string, number>();
const inclusive = new Map<string, number>();
let busy = 0;
let idle = 0;
for (let i = 0; i < profile.samples.length; i++) {
  if (stamps[i]! < from) continue;
  const duration = profile.timeDeltas[i + 1] ?? 0;
  const node = byId.get(profile.samples[i]!)!;
  if (node.callFrame.functionName === "(idle)") {
    idle += duration;
    continue;
  }
  busy += duration;
  self.set(key(node), (self.get(key(node)) ?? 0) + duration);
  const seen = new Set<string>();
  for (let id: number | undefined = node.id; id !== undefined; id = parent.get(id)) {
    const k = key(byId.get(id)!);
    if (seen.has(k)) continue;
    seen.add(k);
    inclusive.set(k, (inclusive.get(k) ?? 0) + duration);
  }
}

const show = (us: number) =>
  requests > 0 ? `${(us / requests).toFixed(0).padStart(6)} µs/req` : `${(us / 1000).toFixed(0).padStart(7)} ms`;
const pct = (us: number) => `${((us / busy) * 100).toFixed(1).padStart(5)} %`;
console.log(`window ${(windowUs / 1e6).toFixed(0)} s: busy ${(busy / 1000).toFixed(0)} ms, idle ${(idle / 1000).toFixed(0)} ms` + (requests ? `, ${show(busy)} busy` : ""));
console.log("(V8 samples wall time: on a loaded machine, time the thread waited for a CPU counts too)");
console.log("\nself time");
for (const [k, v] of [...self].sort((a, b) => b[1] - a[1]).slice(0, 25)) console.log(`${pct(v)} ${show(v)}  ${k}`);
console.log("\ninclusive time");
for (const [k, v] of [...inclusive].sort((a, b) => b[1] - a[1]).slice(0, 50)) console.log(`${pct(v)} ${show(v)}  ${k}`);
