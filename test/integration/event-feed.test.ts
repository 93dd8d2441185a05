import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Daemon, startDaemon } from "../../src/daemon.ts";
import type { SequencedEvent } from "../../src/events/store.ts";
import { silentLogger } from "../../src/log.ts";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import { type TestRepo, createRepo } from "../helpers/git.ts";
import { type Spawned, spawnDeployq } from "../helpers/processes.ts";
import { until } from "../helpers/wait.ts";
import { type Workspace, createWorkspace, followingDeployment, post, pushPayload, signedDelivery } from "../helpers/workspace.ts";

/**
 * The pm2 model: the receiver and the workers are two processes. The workers' events reach
 * the receiver's feed through the events table and a NOTIFY, in sequence; a subscriber that
 * comes back with the last sequence number it saw gets exactly what it missed.
 */
describe("the event feed across processes", () => {
  let ws: Workspace;
  let tdb: TestDatabase;
  let receiver: Daemon;
  let workers: Spawned;
  let repo: TestRepo;
  let reposDir: string;
  const seen: SequencedEvent[] = [];

  beforeAll(async () => {
    reposDir = await mkdtemp(path.join(tmpdir(), "deployq-repos-"));
    repo = await createRepo(reposDir);
    ws = await createWorkspace({ deployments: followingDeployment("app", repo.bare, `commands = [["sh", "-c", "echo built"]]`) });
    tdb = await createTestDatabase("postgres");
    receiver = await startDaemon({ settings: ws.settings, role: "receiver", logger: silentLogger(), database: tdb.database });
    await receiver.feed!.subscribe({ deliver: (e) => seen.push(e) });
    workers = spawnDeployq(["workers"], { ...ws.env, DATABASE_URL: tdb.url, DEPLOYQ_CONFIG: ws.configPath, DEPLOYQ_LOG_LEVEL: "info" });
    await workers.waitFor("deployq started");
  });
  afterAll(async () => {
    if (workers && workers.child.exitCode === null && workers.child.signalCode === null) workers.child.kill("SIGINT");
    await workers?.exited;
    await receiver?.close();
    await tdb?.dispose();
    await ws?.dispose();
    await rm(reposDir, { recursive: true, force: true });
  });

  it("delivers the workers' deploy events to the receiver's subscribers, in sequence, and catches a returning one up without a gap or a repeat", async () => {
    const sha = await repo.commit({ "index.html": "v1" });
    const res = await post(receiver.url!, await signedDelivery(pushPayload({ repository: "octo-org/app", after: sha })));
    expect(res.status).toBe(202);
    const entry = res.body.queued as string;
    const end = await until("the workers' finished event in the receiver's feed", async () =>
      seen.find((e) => e.kind === "deploy" && e.name === "finished" && e.entry === entry),
    );
    expect(end).toMatchObject({ outcome: "succeeded", deployment: "app", sha, pid: workers.child.pid });

    const seqs = seen.map((e) => e.seq);
    expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
    expect(new Set(seqs).size).toBe(seqs.length);
    const mine = seen.filter((e) => "entry" in e && e.entry === entry);
    // Each process's events keep their order; across the two, the sequence is the order of the
    // writers' batched inserts (up to 100 ms apart), so the receiver's one event is only counted.
    const labels = mine.map((e) => `${e.kind}:${e.name}:${e.pid === process.pid ? "receiver" : "workers"}`);
    expect(labels.filter((l) => l === "delivery:received:receiver")).toHaveLength(1);
    expect(labels.filter((l) => l !== "delivery:received:receiver")).toEqual([
      "delivery:routed:workers",
      "deploy:queued:workers",
      "deploy:started:workers",
      ...["fetch", "checkout", "build", "switch", "prune"].flatMap(() => ["deploy:step-started:workers", "deploy:step-finished:workers"]),
      "deploy:finished:workers",
    ]);

    // A subscriber back with the sequence number of "started" gets exactly the rest.
    const started = mine.find((e) => e.kind === "deploy" && e.name === "started")!;
    const caughtUp: SequencedEvent[] = [];
    const end2 = await receiver.feed!.subscribe({ deliver: (e) => caughtUp.push(e) }, started.seq);
    end2();
    expect(caughtUp.map((e) => e.seq)).toEqual(seen.filter((e) => e.seq > started.seq).map((e) => e.seq));

    // Narrowed to a deployment no event is about: only deliveries.
    const narrowed: SequencedEvent[] = [];
    const end3 = await receiver.feed!.subscribe({ deployments: new Set(["web"]), deliver: (e) => narrowed.push(e) }, 0);
    end3();
    expect(narrowed.length).toBeGreaterThan(0);
    expect(narrowed.every((e) => e.kind === "delivery" || (e.kind === "lock" && e.deployment === undefined))).toBe(true);
  });
});
