import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { PassThrough } from "node:stream";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { spawnTracked } from "../../test/helpers/processes.ts";
import { isRunning, until } from "../../test/helpers/wait.ts";
import { ExecError } from "./exec-error.ts";
import { formatArgv, killLeftoverCommands, runCommand } from "./run-command.ts";

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), "deployq-exec-"));
});
afterAll(() => rm(dir, { recursive: true, force: true }));

/** Processes a test left running on purpose (a restart script's server): killed after each test. */
const leftRunning = new Set<number>();
afterEach(async () => {
  for (const pid of leftRunning) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // gone already
    }
  }
  for (const pid of leftRunning) await until(`process ${pid} gone`, async () => !(await isRunning(pid)));
  leftRunning.clear();
});

/** For a script that started `sleep` in the background: wait until it runs sleep (the fork has exec'd), so that its command line is sleep's. */
const UNTIL_SLEEPING = "until grep -qa '^sleep' /proc/$!/cmdline; do sleep 0.01; done";

/** The pid a command wrote into `file` (its background process). */
async function pidIn(file: string): Promise<number> {
  const pid = Number(await until(`${file} written`, async () => (await readFile(file, "utf8").catch(() => "")).trim()));
  leftRunning.add(pid);
  return pid;
}

function collect() {
  const log = new PassThrough();
  let text = "";
  log.on("data", (c: Buffer) => (text += c.toString()));
  return { log, text: () => text };
}


async function failure(p: Promise<unknown>): Promise<ExecError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ExecError);
  return err as ExecError;
}

describe("runCommand", () => {
  it("runs an argv array without a shell, in cwd, with a clean environment plus the given one", async () => {
    process.env.DEPLOYQ_SHOULD_NOT_LEAK = "leak";
    const { log, text } = collect();
    const result = await runCommand(["sh", "-c", 'echo "$0|$PWD|$FOO|${DEPLOYQ_SHOULD_NOT_LEAK:-clean}"', "$(id)"], { cwd: dir, env: { FOO: "bar" }, log });
    delete process.env.DEPLOYQ_SHOULD_NOT_LEAK;
    expect(result.stdout).toBe(`$(id)|${dir}|bar|clean\n`);
    expect(text()).toContain(`$ sh -c 'echo "$0|$PWD|$FOO|\${DEPLOYQ_SHOULD_NOT_LEAK:-clean}"' '$(id)'`);
    expect(text()).toMatch(/→ exit 0 \(\d+ ms\)/);
  });

  it("keeps the exit code and the tail of stderr of a failing command", async () => {
    const { log, text } = collect();
    const err = await failure(runCommand(["sh", "-c", "echo building; echo 'error: missing module' >&2; exit 3"], { cwd: dir, log }));
    expect(err).toMatchObject({ exitCode: 3, reason: "exit", stderrTail: "error: missing module" });
    expect(err.message).toMatch(/exited with code 3:\nerror: missing module/);
    expect(text()).toContain("building\n");
    expect(text()).toContain("→ exited with code 3");
  });

  it("kills the whole process group on timeout", async () => {
    const pidFile = path.join(dir, "grandchild.pid");
    const err = await failure(
      runCommand(["sh", "-c", `sleep 30 & echo $! > ${pidFile}; wait`], { cwd: dir, timeoutMs: 300, killAfterMs: 200 }),
    );
    expect(err.reason).toBe("timeout");
    expect(err.message).toMatch(/timed out after 300 ms/);
    const grandchild = Number(await readFile(pidFile, "utf8"));
    expect(await isRunning(grandchild)).toBe(false);
  });

  it("stops on abort, and refuses to start once aborted", async () => {
    const controller = new AbortController();
    const running = runCommand(["sleep", "30"], { cwd: dir, signal: controller.signal, killAfterMs: 200 });
    setImmediate(() => controller.abort());
    expect((await failure(running)).reason).toBe("aborted");
    expect((await failure(runCommand(["true"], { cwd: dir, signal: controller.signal }))).message).toMatch(/was not started/);
  });

  it("reports a program that does not exist", async () => {
    const err = await failure(runCommand(["./no-such-program"], { cwd: dir }));
    expect(err.reason).toBe("spawn");
    expect(err.message).toMatch(/could not be started/);
  });

  it("gives commands no stdin unless asked", async () => {
    expect((await runCommand(["cat"], { cwd: dir })).stdout).toBe("");
    expect((await runCommand(["cat"], { cwd: dir, input: "hello" })).stdout).toBe("hello");
  });

  it("logs text for people: no terminal escapes, a progress bar's final state only; and asks commands for no colour", async () => {
    const { log, text } = collect();
    const script = String.raw`printf '\033[32mgreen\033[0m \033]0;title\007plain\n'; printf '10%%\r50%%\r100%%\n' >&2; echo "NO_COLOR=$NO_COLOR FORCE_COLOR=$FORCE_COLOR"`;
    const result = await runCommand(["sh", "-c", script], { cwd: dir, log });
    const output = text().slice(text().indexOf("\n") + 1); // after the command line
    expect(output).toContain("green plain\n");
    expect(output).toContain("\n100%\n");
    expect(output).toContain("NO_COLOR=1 FORCE_COLOR=0\n");
    for (const raw of ["\x1b", "\r", "10%"]) expect(output).not.toContain(raw);
    // What a caller parses stays as the program wrote it.
    expect(result.stdout).toContain("\x1b[32mgreen");
    // A deployment's env may ask for colours all the same.
    expect((await runCommand(["sh", "-c", "echo $FORCE_COLOR"], { cwd: dir, env: { FORCE_COLOR: "1" } })).stdout).toBe("1\n");
  });

  it("keeps stdout out of the log when asked, and stderr in it", async () => {
    const { log, text } = collect();
    const result = await runCommand(["sh", "-c", "echo '@@internal@@[1,2]'; echo 'a real error' >&2"], { cwd: dir, log, logStdout: false });
    expect(result.stdout).toBe("@@internal@@[1,2]\n");
    expect(text().slice(text().indexOf("\n") + 1)).toBe("a real error\n" + text().slice(text().indexOf("→")));
  });

  it("stops what a build command left running, naming it in the log, even when it holds the command's output open", async () => {
    const { log, text } = collect();
    const pidFile = path.join(dir, "build-leftover.pid");
    // The background sleep inherits stdout and stderr: without the stop, the pipe would stay open for 30 s.
    await runCommand(["sh", "-c", `sleep 30 & echo $! > ${pidFile}; ${UNTIL_SLEEPING}; echo built`], { cwd: dir, log, killAfterMs: 500 });
    const pid = await pidIn(pidFile);
    expect(await isRunning(pid)).toBe(false);
    expect(text()).toMatch(new RegExp(`warning: sh -c .* left (a process|\\d processes) running: (.*; )?${pid} sleep 30(; .*)?; stopping (it|them) \\(SIGTERM`));
    expect(text()).toMatch(/built\n(.|\n)*→ exit 0/);
  });

  it("kills a leftover that ignores SIGTERM after the grace", async () => {
    const { log, text } = collect();
    const pidFile = path.join(dir, "stubborn.pid");
    await runCommand(["sh", "-c", `(trap '' TERM; exec sleep 30) >/dev/null 2>&1 & echo $! > ${pidFile}; ${UNTIL_SLEEPING}`], { cwd: dir, log, killAfterMs: 200 });
    const pid = await pidIn(pidFile);
    expect(await isRunning(pid)).toBe(false);
    expect(text()).toContain(`left a process running: ${pid} sleep 30`);
  });

  for (const redirected of [true, false]) {
    it(`leaves what a restart script started running after it exits 0 (server output ${redirected ? "redirected to a file" : "on the inherited pipe"})`, async () => {
      const { log, text } = collect();
      const pidFile = path.join(dir, `server-${redirected}.pid`);
      const commandPid = path.join(dir, `t.${process.pid}.command.pid`);
      const out = redirected ? `> ${path.join(dir, "server.out")} 2>&1` : "";
      // As a deploy.sh would, it waits until the server runs (here: until its redirection is done) before it exits.
      const ready = path.join(dir, `ready-${redirected}`);
      // Each tick writes to its output, then counts in a file: a write to a closed pipe would kill it (SIGPIPE) before it counts.
      const ticks = path.join(dir, `ticks-${redirected}`);
      const script = `nohup sh -c 'touch ${ready}; echo serving; while :; do sleep 0.1; echo tick; echo >> ${ticks}; done' ${out} & echo $! > ${pidFile}; until [ -e ${ready} ]; do sleep 0.02; done; echo restarted`;
      await runCommand(["sh", "-c", script], { cwd: dir, log, leaveRunning: true, pidFile: commandPid });
      const pid = await pidIn(pidFile);
      expect(await isRunning(pid)).toBe(true);
      expect(text()).toContain("restarted\n");
      expect(text()).toMatch(new RegExp(`left running by sh -c .*: ${pid} sh -c`));
      expect(text()).toMatch(/→ exit 0/);
      // (Named, unless the script exited before its output could be looked at.)
      if (!redirected) expect(text()).toMatch(/left running.*, holds? this command's output open/);
      else expect(text()).not.toContain("output open");
      // The command's pid file is gone: the next start of deployq does not take the server for a leftover of a crash.
      await expect(readFile(commandPid, "utf8")).rejects.toMatchObject({ code: "ENOENT" });
      expect((await killLeftoverCommands(dir, "t")).killed).toEqual([]);
      // It goes on writing, long after the command is done.
      await until("three ticks", async () => (await readFile(ticks, "utf8").catch(() => "")).length >= 3);
      expect(await isRunning(pid)).toBe(true);
    });
  }

  it("hands the pipe a server left running writes to over to a reader of its own, so it goes on after deployq exits", async () => {
    // The restart script runs in a process that then exits, as deployq does when it is stopped or restarted.
    const pidFile = path.join(dir, "orphan-server.pid");
    const ticks = path.join(dir, "orphan-ticks");
    const runner = path.join(dir, "runner.mts");
    const script = `nohup sh -c 'while :; do echo tick; echo >> ${ticks}; sleep 0.1; done' & echo $! > ${pidFile}; until [ -s ${ticks} ]; do sleep 0.02; done`;
    await writeFile(
      runner,
      `import { runCommand } from ${JSON.stringify(path.resolve("src/exec/run-command.ts"))};
` +
        `await runCommand(["sh", "-c", ${JSON.stringify(script)}], { cwd: ${JSON.stringify(dir)}, leaveRunning: true, log: process.stdout });
` +
        `process.exit(0);
`,
    );
    const deployq = spawnTracked(process.execPath, ["--import", "tsx", runner]);
    expect((await deployq.exited).code, deployq.output()).toBe(0);
    const pid = await pidIn(pidFile);
    expect(deployq.output()).toMatch(/holds? this command's output open/);
    // Its writes still find a reader: a closed pipe would have killed it (SIGPIPE) at the next tick.
    const counted = (await readFile(ticks, "utf8")).length;
    await until("three more ticks", async () => (await readFile(ticks, "utf8")).length >= counted + 3);
    expect(await isRunning(pid)).toBe(true);
  });

  it("stops what a failing restart script left, and kills a timed-out restart script's whole group", async () => {
    const { log, text } = collect();
    const failedPid = path.join(dir, "failed-restart.pid");
    const err = await failure(runCommand(["sh", "-c", `sleep 30 >/dev/null 2>&1 & echo $! > ${failedPid}; ${UNTIL_SLEEPING}; exit 1`], { cwd: dir, log, leaveRunning: true, killAfterMs: 500 }));
    expect(err.exitCode).toBe(1);
    const stopped = await pidIn(failedPid);
    expect(await isRunning(stopped)).toBe(false);
    expect(text()).toContain(`left a process running: ${stopped} sleep 30`);

    const timedOutPid = path.join(dir, "timed-out-restart.pid");
    const timedOut = await failure(
      runCommand(["sh", "-c", `nohup sleep 30 >/dev/null 2>&1 & echo $! > ${timedOutPid}; sleep 30`], { cwd: dir, leaveRunning: true, timeoutMs: 300, killAfterMs: 200 }),
    );
    expect(timedOut.reason).toBe("timeout");
    expect(await isRunning(await pidIn(timedOutPid))).toBe(false);
  });

  it("after a crash, kills the command a dead deployq left running: by the pid it recorded, or by its token when it died before the spawn returned", async () => {
    // An owner that no longer runs: a process that has exited.
    const gone = spawnTracked("true", []);
    await gone.exited;
    const owner = gone.child.pid!;
    const { spawn } = await import("node:child_process");
    const orphans = ["recorded", "token"].map((kind) => {
      const token = `token-${kind}-${process.pid}`;
      const child = spawn("sleep", ["30"], { detached: true, stdio: "ignore", env: { PATH: process.env.PATH, DEPLOYQ_COMMAND_ID: token } });
      child.unref();
      leftRunning.add(child.pid!);
      return { kind, token, pid: child.pid! };
    });
    for (const o of orphans) {
      const runDir = path.join(dir, `crash-${o.kind}`);
      await mkdir(runDir);
      await writeFile(path.join(runDir, `t.${owner}.command.pid`), o.kind === "recorded" ? `${o.token}\n${o.pid}\n` : `${o.token}\n`);
      // Another deployment's file is not this one's.
      await writeFile(path.join(runDir, `other.${owner}.command.pid`), `${o.token}\n`);
      expect(await killLeftoverCommands(runDir, "t")).toEqual({ killed: [o.pid], alive: [] });
      expect(await isRunning(o.pid)).toBe(false);
      expect(await readdir(runDir)).toEqual([`other.${owner}.command.pid`]);
    }
  });

  it("gives the command its token, and records the token and then the pid while it runs", async () => {
    const pidFile = path.join(dir, `t.${process.pid}.command.pid`);
    const seen = path.join(dir, "seen-pid-file");
    const { stdout } = await runCommand(["sh", "-c", `cat ${pidFile} > ${seen}; echo "$DEPLOYQ_COMMAND_ID"`], { cwd: dir, pidFile, logStdout: false });
    const [token, pid] = (await readFile(seen, "utf8")).split("\n");
    expect(token).toMatch(/^[0-9a-f-]{36}$/);
    expect(stdout.trim()).toBe(token);
    expect(Number(pid)).toBeGreaterThan(1);
    await expect(readFile(pidFile, "utf8")).rejects.toMatchObject({ code: "ENOENT" });
  });

  it("quotes argv for logs the way a shell would read it", () => {
    expect(formatArgv(["git", "--end-of-options", "a b", "it's", "$(id)"])).toBe(`git --end-of-options 'a b' 'it'\\''s' '$(id)'`);
  });
});
