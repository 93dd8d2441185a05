import { mkdtemp, readFile, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { eq } from "drizzle-orm";
import pino from "pino";
import { describe, expect, it } from "vitest";
import { startDaemon } from "../../src/daemon.ts";
import { deploys } from "../../src/db/schema.ts";
import { queueLayout } from "../../src/queue/layout.ts";
import { writeEntryDurably } from "../../src/queue/write.ts";
import { createTestDatabase } from "../helpers/db.ts";
import { createRepo } from "../helpers/git.ts";
import { pushEntry } from "../helpers/load.ts";
import { LogCollector } from "../helpers/log-collector.ts";
import { until } from "../helpers/wait.ts";
import { createWorkspace, followingDeployment, post, pushPayload, signedDelivery } from "../helpers/workspace.ts";

/**
 * The router records an entry's outcome, hard-links it into each deployment's queue, then
 * removes it from router/. Killed between the last two, it finds the entry in router/ at the
 * next start and hands it over again, after the deployment may have consumed the first copy.
 */
describe("an entry handed over twice", () => {
  it("has one turn in its deployment: the second copy is dropped, not deployed again", async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "deployq-handover-"));
    const repo = await createRepo(dir);
    const ws = await createWorkspace({ deployments: followingDeployment("app", repo.bare, `commands = [["sh", "-c", "echo x >> ${dir}/builds"]]`) });
    const tdb = await createTestDatabase("postgres");
    const logs = new LogCollector();
    const daemon = await startDaemon({ settings: ws.settings, role: "serve", logger: pino({ level: "info" }, logs), database: tdb.database });
    try {
      const sha = await repo.commit({ "index.html": "v1" });
      const res = await post(daemon.url!, await signedDelivery(pushPayload({ repository: "octo-org/app", branch: "main", after: sha })));
      const name = res.body.queued as string;
      const rows = () => tdb.database.db.select().from(deploys).where(eq(deploys.entry, name));
      await until("the deploy", async () => (await rows()).some((r) => r.status === "succeeded"));
      const text = await readFile(path.join(ws.dir, "apps", "app", "current", ".deployq-release.json"), "utf8");
      expect(JSON.parse(text).entry).toBe(name);

      // The state a router killed before its removal leaves: the same entry in router/ again.
      const copy = pushEntry(name, { repository: "octo-org/app" });
      // Through .tmp/ and a rename, as the router's own writes: a file written in place can be read half-written.
      await writeEntryDurably(queueLayout(ws.queuesDir), path.join(ws.queuesDir, "router"), name, { ...copy, payload: pushPayload({ repository: "octo-org/app", branch: "main", after: sha }) });
      await until("the second copy to be dropped", async () => logs.text.includes("dropped a second copy of an entry"));
      await until("both queues to be empty", async () => (await readdir(path.join(ws.queuesDir, "router"))).length + (await readdir(path.join(ws.queuesDir, "deployments", "app"))).length === 0);
      expect((await rows()).map((r) => r.status)).toEqual(["succeeded"]);
      expect(await readFile(path.join(dir, "builds"), "utf8")).toBe("x\n");
    } finally {
      await daemon.close();
      await tdb.dispose();
      await ws.dispose();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
