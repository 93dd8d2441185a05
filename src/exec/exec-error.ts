import { DeployqError } from "../errors.ts";

/** A command that did not exit 0: what ran, how it ended, and the end of what it said. */
export class ExecError extends DeployqError {
  constructor(
    readonly argv: readonly string[],
    readonly exitCode: number | undefined,
    readonly signal: string | undefined,
    readonly stderrTail: string,
    readonly reason: "exit" | "timeout" | "aborted" | "spawn",
    message: string,
  ) {
    super("EXEC", message);
    this.name = "ExecError";
  }
}
