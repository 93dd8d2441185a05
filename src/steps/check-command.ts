import { constants } from "node:fs";
import { access, stat } from "node:fs/promises";
import path from "node:path";
import { errorMessage } from "../errors.ts";
import { ExecError } from "../exec/exec-error.ts";
import { baseEnv, formatArgv, runCommand } from "../exec/run-command.ts";

/** One line of `deployq check`. */
export interface CheckResult {
  name: string;
  ok: boolean;
  detail: string;
}

/** What to tell the operator when the command cannot run. */
export interface HowToFix {
  /** The program is not installed (e.g. "install it or change [nginx] test_command"). */
  missing: string;
  /** sudo does not allow it (e.g. which sudoers file to install). */
  sudo: string;
}

/** Options sudo takes an argument with (sudo(8)). */
const SUDO_OPTIONS_WITH_ARGUMENT = new Set(["-C", "-D", "-g", "-h", "-p", "-R", "-r", "-T", "-t", "-U", "-u"]);

/**
 * For `deployq check`, running nothing: a command through sudo is checked with
 * `sudo -n -l <command>` (the policy says whether it may run); any other must be an
 * executable file (on the base PATH commands get).
 */
export async function checkCommand(name: string, argv: readonly string[], fix: HowToFix): Promise<CheckResult> {
  const [program, ...rest] = argv;
  if (!program) return { name, ok: false, detail: "empty command" };
  if (path.basename(program) === "sudo") {
    const options: string[] = [];
    let i = 0;
    while (i < rest.length && rest[i]!.startsWith("-") && rest[i] !== "--") {
      const option = rest[i]!;
      if (option !== "-n" && option !== "--non-interactive") options.push(option);
      if (SUDO_OPTIONS_WITH_ARGUMENT.has(option) && i + 1 < rest.length) options.push(rest[++i]!);
      i++;
    }
    if (rest[i] === "--") i++;
    const command = rest.slice(i);
    if (command.length === 0) return { name, ok: false, detail: `${formatArgv(argv)} names no command after sudo` };
    const check = [program, "-n", ...options, "-l", ...command];
    try {
      const { stdout } = await runCommand(check, { cwd: "/", timeoutMs: 10_000 });
      return { name, ok: true, detail: `sudo allows it: ${stdout.trim() || formatArgv(command)}` };
    } catch (err) {
      if (err instanceof ExecError && err.reason === "spawn") return { name, ok: false, detail: `${program} is not installed: install sudo, or ${fix.missing}` };
      // `sudo -l <command>` exits 1 without a word when the rules do not list the command for this user.
      const why =
        err instanceof ExecError && err.stderrTail.trim()
          ? `not allowed without a password (${err.stderrTail.trim()})`
          : err instanceof ExecError && err.reason === "exit" && err.exitCode === 1
            ? "sudo's rules do not allow this command for this user"
            : errorMessage(err);
      return { name, ok: false, detail: `${formatArgv(check)} failed: ${why}; ${fix.sudo}` };
    }
  }
  const found = await findExecutable(program);
  return found
    ? { name, ok: true, detail: `${formatArgv(argv)} (${found})` }
    : { name, ok: false, detail: `${program} is not an executable file${program.includes("/") ? "" : " on PATH"}; ${fix.missing}` };
}

async function findExecutable(program: string): Promise<string | undefined> {
  const candidates = program.includes("/") ? [program] : (baseEnv().PATH ?? "").split(":").filter(Boolean).map((d) => path.join(d, program));
  for (const candidate of candidates) {
    try {
      await access(candidate, constants.X_OK);
      if ((await stat(candidate)).isFile()) return candidate;
    } catch {
      // next
    }
  }
  return undefined;
}
