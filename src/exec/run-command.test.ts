import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { PassThrough } from "node:stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { isRunning } from "../../test/helpers/wait.ts";
import { ExecError } from "./exec-error.ts";
import { formatArgv, runCommand } from "./run-command.ts";

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), "deployq-exec-"));
});
afterAll(() => rm(dir, { recursive: true, force: true }));

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

  it("quotes argv for logs the way a shell would read it", () => {
    expect(formatArgv(["git", "--end-of-options", "a b", "it's", "$(id)"])).toBe(`git --end-of-options 'a b' 'it'\\''s' '$(id)'`);
  });
});
