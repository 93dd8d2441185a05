import type { Settings } from "../config/load.ts";
import { deploymentPaths, listReleases } from "../steps/release.ts";
import { configuredDeployment } from "./names.ts";
import { printJson, table } from "./output.ts";

export async function releasesCommand(settings: Settings, name: string, json: boolean): Promise<void> {
  const d = configuredDeployment(settings, name);
  if (d.strategy === "in-place") {
    process.stdout.write(`${name} uses the in-place strategy: it keeps no releases (\`deployq status ${name}\` shows the deployed sha)\n`);
    return;
  }
  const releases = await listReleases(deploymentPaths(d.path));
  if (json) return printJson(releases.map((r) => ({ name: r.name, dir: r.dir, current: r.current, complete: r.meta !== undefined, ...r.meta })));
  if (releases.length === 0) {
    process.stdout.write(`${name} has no releases yet (${deploymentPaths(d.path).releases})\n`);
    return;
  }
  const rows = releases.map((r) => [
    r.current ? "*" : "",
    r.name,
    r.meta?.sha.slice(0, 7) ?? "-",
    r.meta?.ref?.replace(/^refs\/heads\//, "") ?? "-",
    r.meta ? "" : "incomplete",
    // The whole reason on one line: its first line alone is often just "<command> exited with code 1:".
    r.meta?.bad ? `bad: ${r.meta.bad.reason.replace(/\s+/g, " ").trim().slice(0, 200)}` : "",
  ]);
  process.stdout.write(`${table(["", "RELEASE", "SHA", "REF", "", "NOTE"], rows)}\n`);
}
