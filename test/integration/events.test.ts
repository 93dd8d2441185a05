import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Daemon, startDaemon } from "../../src/daemon.ts";
import { deployStepsOf } from "../../src/db/queries/deploy-steps.ts";
import type { StampedEvent } from "../../src/events/types.ts";
import { silentLogger } from "../../src/log.ts";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import { type TestRepo, createRepo } from "../helpers/git.ts";
import { until } from "../helpers/wait.ts";
import { type Workspace, createWorkspace, followingDeployment, post, pushPayload, signedDelivery } from "../helpers/workspace.ts";

/** The events of one process, and its deploy_steps: what metrics, the dashboard and /ws/v0 are built on. */
describe("the event stream and the recorded steps of a deploy", () => {
  let ws: Workspace;
  let tdb: TestDatabase;
  let daemon: Daemon;
  let repo: TestRepo;
  let reposDir: string;
  const seen: StampedEvent[] = [];

  beforeAll(async () => {
    reposDir = await mkdtemp(path.join(tmpdir(), "deployq-repos-"));
    repo = await createRepo(reposDir);
    ws = await createWorkspace({
      deployments: followingDeployment("app", repo.bare, `
commands = [["sh", "-c", "if [ -e FAIL ]; then echo failing >&2; exit 3; fi; echo built"]]
`),
    });
    tdb = await createTestDatabase("postgres");
    daemon = await startDaemon({ settings: ws.settings, role: "serve", logger: silentLogger(), database: tdb.database });
    daemon.events.on((e) => seen.push(e));
  });
  afterAll(async () => {
    await daemon?.close();
    await tdb?.dispose();
    await ws?.dispose();
    await rm(reposDir, { recursive: true, force: true });
  });

  const finished = (entry: string) =>
    until(`the deploy of ${entry} to finish`, async () => seen.find((e) => e.kind === "deploy" && e.name === "finished" && e.entry === entry));

  it("tells a delivery's whole way, from its receipt to its deploy's last step, in order, and records the steps", async () => {
    const sha = await repo.commit({ "index.html": "v1" });
    const res = await post(daemon.url!, await signedDelivery(pushPayload({ repository: "octo-org/app", after: sha })));
    expect(res.status).toBe(202);
    const entry = res.body.queued as string;
    const end = await finished(entry);
    expect(end).toMatchObject({ outcome: "succeeded", deployment: "app", sha, durationMs: expect.any(Number) });
    // The lock is given back after the deploy's end is told (its row pruned first): wait for that too, not read at once.
    await until("the deployment lock to be released", async () => seen.some((e) => e.kind === "lock" && e.lock === "deployment:app" && e.name === "released" && seen.indexOf(e) > seen.indexOf(end)));
    const mine = seen.filter((e) => ("entry" in e && e.entry === entry) || (e.kind === "lock" && e.lock === "deployment:app"));
    const names = mine.map((e) => (e.kind === "deploy" && (e.name === "step-started" || e.name === "step-finished") ? `${e.name}:${e.step}` : `${e.kind}:${e.name}`));
    expect(names.filter((n) => !n.startsWith("lock:"))).toEqual([
      "delivery:received",
      "delivery:routed",
      "deploy:queued",
      "deploy:started",
      "step-started:fetch",
      "step-finished:fetch",
      "step-started:checkout",
      "step-finished:checkout",
      "step-started:build",
      "step-finished:build",
      "step-started:switch",
      "step-finished:switch",
      "step-started:prune",
      "step-finished:prune",
      "deploy:finished",
    ]);
    // The deployment lock is taken before the deploy starts and given back after it ends.
    const at = (n: string) => names.indexOf(n);
    const acquired = names.lastIndexOf("lock:acquired", at("deploy:started"));
    expect(acquired).toBeGreaterThanOrEqual(0);
    expect(names.indexOf("lock:released", acquired)).toBeGreaterThan(at("deploy:finished"));
    for (const e of mine) expect(Date.parse(e.at)).not.toBeNaN();

    const started = mine.find((e) => e.kind === "deploy" && e.name === "started")!;
    const deployId = (started as { deployId: number }).deployId;
    const steps = await deployStepsOf(tdb.database.db, deployId);
    expect(steps.map((s) => [s.position, s.kind, s.ok])).toEqual([
      [0, "fetch", true],
      [1, "checkout", true],
      [2, "build", true],
      [3, "switch", true],
      [4, "prune", true],
    ]);
    expect(steps[1]!.title).toBe(`check out ${sha}`);
    for (const s of steps) {
      expect(s.durationMs).toBeGreaterThanOrEqual(0);
      expect(s.finishedAt.getTime() - s.startedAt.getTime()).toBe(s.durationMs);
    }
  });

  it("records the step a deploy failed in, with its command's exit status, and tells the failure", async () => {
    const sha = await repo.commit({ FAIL: "1" });
    const res = await post(daemon.url!, await signedDelivery(pushPayload({ repository: "octo-org/app", after: sha })));
    const entry = res.body.queued as string;
    const end = await finished(entry);
    expect(end).toMatchObject({ outcome: "failed", error: expect.stringMatching(/exit.* 3|status 3|code 3/) });
    const failedStep = seen.find((e) => e.kind === "deploy" && e.name === "step-finished" && e.entry === entry && !e.ok);
    expect(failedStep).toMatchObject({ step: "build", exitCode: 3 });
    const steps = await deployStepsOf(tdb.database.db, (end as { deployId: number }).deployId);
    expect(steps.map((s) => [s.kind, s.ok, s.exitCode])).toEqual([
      ["fetch", true, null],
      ["checkout", true, null],
      ["build", false, 3],
    ]);
  });

  it("tells a duplicate and a voided delivery", async () => {
    const delivery = await signedDelivery(pushPayload({ repository: "octo-org/app", branch: "feature", after: "a".repeat(40) }));
    expect((await post(daemon.url!, delivery)).status).toBe(200);
    expect((await post(daemon.url!, delivery)).status).toBe(200);
    const id = delivery.headers["x-github-delivery"];
    const about = seen.filter((e) => e.kind === "delivery" && e.deliveryId === id).map((e) => e.name);
    expect(about).toEqual(["voided", "duplicate"]);
    expect(seen.find((e) => e.kind === "delivery" && e.deliveryId === id && e.name === "voided")).toMatchObject({ reason: expect.stringMatching(/feature/) });
  });
});
