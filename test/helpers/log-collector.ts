import { Writable } from "node:stream";

/** Collects what a step writes to its deploy log, for assertions. */
export class LogCollector extends Writable {
  text = "";
  override _write(chunk: Buffer | string, _encoding: BufferEncoding, callback: () => void): void {
    this.text += chunk.toString();
    callback();
  }
}
