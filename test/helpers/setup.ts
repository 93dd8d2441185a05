import { afterAll } from "vitest";
import { assertNoChildrenRunning } from "./processes.ts";

/**
 * A test file that leaves a server, a file watcher or a child process running fails:
 * every file is checked once its tests (and their afterAll hooks) are done.
 */
afterAll(async () => {
  await assertNoChildrenRunning();
  // Handles closed in the last hook may take a few turns of the event loop to go away.
  const running = () => process.getActiveResourcesInfo().filter((r) => r === "TCPServerWrap" || r === "FSEventWrap" || r === "ProcessWrap");
  for (let turn = 0; turn < 100 && running().length > 0; turn++) await new Promise((resolve) => setTimeout(resolve, 20));
  const leaked = running();
  if (leaked.length > 0) throw new Error(`test file left running: ${leaked.join(", ")} (close every server, watcher and child process)`);
});
