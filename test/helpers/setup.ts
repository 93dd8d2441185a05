import { afterAll } from "vitest";
import { assertNoChildrenRunning } from "./processes.ts";

/**
 * A test file that leaves a server, a file watcher or a child process running fails:
 * every file is checked once its tests (and their afterAll hooks) are done.
 */
afterAll(async () => {
  await assertNoChildrenRunning();
  // Give handles closed in the last hook a turn of the event loop to go away.
  await new Promise((resolve) => setImmediate(resolve));
  const leaked = process.getActiveResourcesInfo().filter((r) => r === "TCPServerWrap" || r === "FSEventWrap" || r === "ProcessWrap");
  if (leaked.length > 0) throw new Error(`test file left running: ${leaked.join(", ")} (close every server, watcher and child process)`);
});
