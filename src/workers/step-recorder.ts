import type { Logger } from "pino";
import type { Db } from "../db/client.ts";
import { recordDeployStep } from "../db/queries/deploy-steps.ts";
import { errorMessage } from "../errors.ts";
import type { Events } from "../events/bus.ts";
import type { StepKind } from "../events/types.ts";

/**
 * Times a deploy's steps: a step ends when the next one starts, or when the deploy ends
 * (failed if the deploy failed in it, with the failing command's exit status). Each step
 * is emitted as it starts and ends, and recorded in deploy_steps as it ends, so that a
 * deploy killed with its process keeps the steps it finished.
 */
export class StepRecorder {
  #position = 0;
  #open: { kind: StepKind; title: string; startedAt: Date; position: number } | undefined;
  /** Step rows being written: the deploy's end waits for them, so its steps are complete once it is. */
  #writes: Array<Promise<void>> = [];
  readonly #kinds = new Set<StepKind>();

  constructor(
    private readonly deps: { db: Db; events: Events; logger: Logger; deployment: string; deployId: number; entry: string },
  ) {}

  start(kind: StepKind, title: string): void {
    this.#close(true, undefined);
    this.#open = { kind, title, startedAt: new Date(), position: this.#position++ };
    this.#kinds.add(kind);
    const { deployment, deployId, entry } = this.deps;
    this.deps.events.emit({ kind: "deploy", name: "step-started", deployment, deployId, entry, step: kind, title });
  }

  /** Whether a step of this kind has started in this deploy. */
  ran(kind: StepKind): boolean {
    return this.#kinds.has(kind);
  }

  /** Ends the last step; waits until every step row is written (a failed write is logged, not thrown). */
  async finish(ok: boolean, exitCode?: number): Promise<void> {
    this.#close(ok, exitCode);
    await Promise.all(this.#writes);
  }

  #close(ok: boolean, exitCode: number | undefined): void {
    const open = this.#open;
    if (!open) return;
    this.#open = undefined;
    const finishedAt = new Date();
    const durationMs = finishedAt.getTime() - open.startedAt.getTime();
    const { db, deployment, deployId, entry, logger } = this.deps;
    this.deps.events.emit({ kind: "deploy", name: "step-finished", deployment, deployId, entry, step: open.kind, title: open.title, durationMs, ok, exitCode });
    this.#writes.push(
      recordDeployStep(db, { deployId, position: open.position, kind: open.kind, title: open.title.slice(0, 1000), startedAt: open.startedAt, finishedAt, durationMs, ok, exitCode: exitCode ?? null }).catch(
        (err: unknown) => logger.warn({ err: errorMessage(err), step: open.kind }, "could not record a deploy step; the deploy goes on"),
      ),
    );
  }
}
