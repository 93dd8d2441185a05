import { readdir } from "node:fs/promises";
import path from "node:path";
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { TerminalText } from "../../src/exec/terminal-text.ts";
import { DEPLOYQ_BIN, type Spawned, spawnDeployq, spawnTracked } from "../helpers/processes.ts";
import { until } from "../helpers/wait.ts";
import { type Workspace, createWorkspace } from "../helpers/workspace.ts";

/** Runs argv on a pseudo-terminal (Python's pty module): stdout is a TTY, as in an operator's shell. */
const ON_A_TTY = ["-c", "import pty, sys; sys.exit(pty.spawn(sys.argv[1:]) >> 8)"];

/**
 * deployq's own log: lines for people in a terminal, JSON lines otherwise (pm2, systemd),
 * `--log-format` / DEPLOYQ_LOG_FORMAT to choose; and the last lines before it exits (the
 * shutdown ladder's "draining") are there in both.
 */
describe("deployq's own log format", () => {
  let ws: Workspace;
  let env: NodeJS.ProcessEnv;
  let running: Spawned | undefined;

  beforeAll(async () => {
    ws = await createWorkspace({ deployments: "" });
    env = { ...ws.env, DEPLOYQ_LOG_LEVEL: "info", DEPLOYQ_CONFIG: ws.configPath, DATABASE_URL: "", DEPLOYQ_LOG_FORMAT: undefined, REDIS_URL: "" };
    return () => ws.dispose();
  });
  afterEach(async () => {
    running?.child.kill("SIGKILL");
    await running?.exited;
    running = undefined;
  });

  /** Starts `serve`, waits until it listens, stops it with SIGTERM (to deployq itself, found by its announcement), and returns all it printed. */
  async function serveAndStop(spawned: Spawned): Promise<string> {
    running = spawned;
    await spawned.waitFor("listening on");
    const runDir = path.join(ws.settings.dataDir, "run");
    const pid = await until("deployq's announcement", async () => (await readdir(runDir).catch(() => [] as string[])).map((f) => /^(\d+)\.json$/.exec(f)?.[1]).find(Boolean));
    process.kill(Number(pid), "SIGTERM");
    await spawned.exited;
    return spawned.output();
  }
  const plain = (text: string) => {
    const t = new TerminalText();
    return t.push(text) + t.end();
  };

  it("is pretty and coloured on a terminal, down to its last line", async () => {
    const out = await serveAndStop(spawnTracked("python3", [...ON_A_TTY, process.execPath, DEPLOYQ_BIN, "serve"], env));
    expect(out).toContain("\x1b["); // colours: only for a terminal
    const text = plain(out);
    expect(text).toMatch(/^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\] INFO \(deployq\/\d+\): /m);
    expect(text).not.toContain('{"level"');
    expect(text.trimEnd().split("\n").slice(-3).join("\n")).toMatch(/INFO \(deployq\/\d+\): draining: no new work is taken/);
  });

  it("is JSON lines when stdout is not a terminal", async () => {
    const out = await serveAndStop(spawnDeployq(["serve"], env));
    const lines = out.split("\n").filter((l) => l.startsWith("{"));
    expect(lines.length).toBeGreaterThan(1);
    const records = lines.map((l) => JSON.parse(l) as { level: number; name: string; msg: string });
    expect(records.every((r) => r.name === "deployq" && typeof r.level === "number")).toBe(true);
    expect(records.at(-1)?.msg).toMatch(/^draining: no new work is taken/);
  });

  it("follows --log-format, and DEPLOYQ_LOG_FORMAT, whatever stdout is", async () => {
    const pretty = await serveAndStop(spawnDeployq(["--log-format", "pretty", "serve"], env));
    expect(pretty).not.toContain("\x1b"); // no terminal, no colours
    expect(pretty).not.toContain('{"level"');
    expect(pretty).toMatch(/INFO \(deployq\/\d+\): draining: no new work is taken/);

    const json = plain(await serveAndStop(spawnTracked("python3", [...ON_A_TTY, process.execPath, DEPLOYQ_BIN, "serve"], { ...env, DEPLOYQ_LOG_FORMAT: "json" })));
    expect(json).toMatch(/^\{"level":30,.*"msg":"draining: no new work is taken/m);
  });
});
