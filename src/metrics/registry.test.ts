import { mkdir, mkdtemp, rm, symlink, rename } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { execa } from "execa";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { openDatabase } from "../db/client.ts";
import { rolloutHosts, rollouts } from "../db/schema.ts";
import type { Deployment } from "../config/load.ts";
import type { DeployqEvent } from "../events/types.ts";
import { Events } from "../events/bus.ts";
import { queueLayout } from "../queue/layout.ts";
import { entryName } from "../queue/entry-name.ts";
import { LONG_WORK_BUCKETS } from "./buckets.ts";
import { type Metrics, createMetrics, eventLabel, outcomeLabel } from "./registry.ts";

let dir: string;
let metrics: Metrics;
let events: Events;
const deployment = () => ({ name: "app", path: path.join(dir, "app"), strategy: "releases" }) as Deployment;

beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), "deployq-metrics-"));
  metrics = createMetrics({ layout: queueLayout(path.join(dir, "queues")), deployments: [deployment()], deploys: true });
  events = new Events();
  events.on(metrics.listener);
});
afterEach(() => rm(dir, { recursive: true, force: true }));

const emit = (...list: DeployqEvent[]) => list.forEach((e) => events.emit(e));
const line = (text: string, series: string) => text.split("\n").find((l) => l.startsWith(`${series} `));

describe("createMetrics", () => {
  it("uses the validator's buckets for long work", () => {
    expect(LONG_WORK_BUCKETS).toEqual([0.5, 1, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 35, 40, 45, 50, 55, 60, 65, 70, 75, 90, 105, 120]);
  });

  it("maps outcomes to label values, and counts a retrying attempt apart", async () => {
    expect(outcomeLabel("rolled-back")).toBe("rolled_back");
    expect(outcomeLabel("already-deployed")).toBe("already_deployed");
    expect(outcomeLabel("retrying")).toBeUndefined();
    emit(
      { kind: "deploy", name: "started", deployment: "app", deployId: 1, attempt: 1, logPath: "/x" },
      { kind: "deploy", name: "finished", deployment: "app", deployId: 1, outcome: "retrying", durationMs: 1500 },
    );
    const text = await metrics.scrape();
    expect(line(text, 'deployq_deploy_retries_total{deployment="app"}')).toMatch(/ 1$/);
    expect(line(text, 'deployq_deploys_total{deployment="app",outcome="failed"}')).toMatch(/ 0$/);
    expect(text).not.toContain('outcome="retrying"');
    expect(line(text, 'deployq_deploys_in_progress{deployment="app"}')).toMatch(/ 0$/);
  });

  it("tracks deploys in progress, and gives no duration to an entry superseded before it started", async () => {
    emit({ kind: "deploy", name: "started", deployment: "app", deployId: 7, attempt: 1, logPath: "/x" });
    expect(line(await metrics.scrape(), 'deployq_deploys_in_progress{deployment="app"}')).toMatch(/ 1$/);
    emit(
      { kind: "deploy", name: "finished", deployment: "app", entry: "e", outcome: "superseded", durationMs: 0 },
      { kind: "deploy", name: "finished", deployment: "app", deployId: 7, outcome: "succeeded", durationMs: 3000 },
    );
    const text = await metrics.scrape();
    expect(line(text, 'deployq_deploys_in_progress{deployment="app"}')).toMatch(/ 0$/);
    expect(line(text, 'deployq_deploys_total{deployment="app",outcome="superseded"}')).toMatch(/ 1$/);
    expect(line(text, 'deployq_deploy_duration_seconds_count{deployment="app",outcome="superseded"}')).toBeUndefined();
    expect(line(text, 'deployq_deploy_duration_seconds_bucket{le="4",deployment="app",outcome="succeeded"}')).toMatch(/ 1$/);
    expect(line(text, 'deployq_deploy_duration_seconds_bucket{le="2",deployment="app",outcome="succeeded"}')).toMatch(/ 0$/);
  });

  it("times the router's pickup from the epoch in the entry's name", async () => {
    const name = entryName("0b9c1f5e-1111-4222-8333-444455556666", BigInt(Date.now() - 2_000) * 1_000_000n);
    emit({ kind: "delivery", name: "routed", deliveryId: "d", entry: name, deployments: ["app"] });
    // The receiver's own voided delivery never entered router/: no pickup.
    emit({ kind: "delivery", name: "voided", deliveryId: "d2", reason: "nobody follows it" });
    const text = await metrics.scrape();
    expect(line(text, "deployq_router_pickup_seconds_count")).toMatch(/ 1$/);
    expect(line(text, 'deployq_router_pickup_seconds_bucket{le="1"}')).toMatch(/ 0$/);
    expect(line(text, 'deployq_router_pickup_seconds_bucket{le="2.5"}')).toMatch(/ 1$/);
  });

  it("shows only the release `current` points at now", async () => {
    const releases = path.join(dir, "app", "releases");
    await mkdir(path.join(releases, "r1"), { recursive: true });
    await mkdir(path.join(releases, "r2"), { recursive: true });
    await symlink("releases/r1", path.join(dir, "app", "current"));
    expect(await metrics.scrape()).toContain('deployq_release_info{deployment="app",release="r1"} 1');
    await symlink("releases/r2", path.join(dir, "app", "current.tmp"));
    await rename(path.join(dir, "app", "current.tmp"), path.join(dir, "app", "current"));
    const text = await metrics.scrape();
    expect(text).toContain('deployq_release_info{deployment="app",release="r2"} 1');
    expect(text).not.toContain('release="r1"');
  });

  it("lets only GitHub's event names label a request", () => {
    expect(eventLabel("push")).toBe("push");
    expect(eventLabel("ping")).toBe("ping");
    expect(eventLabel("push.created")).toBe("other");
    expect(eventLabel("x".repeat(100))).toBe("other");
    expect(eventLabel(undefined)).toBe("none");
  });

  it("keeps one registry per daemon: two in one process do not collide", async () => {
    const other = createMetrics({ layout: queueLayout(path.join(dir, "q2")), deployments: [], deploys: false });
    emit({ kind: "deploy", name: "finished", deployment: "app", deployId: 1, outcome: "failed", durationMs: 1 });
    expect(await other.scrape()).not.toContain("deployq_deploys_total{");
    expect(line(await metrics.scrape(), 'deployq_deploys_total{deployment="app",outcome="failed"}')).toMatch(/ 1$/);
  });

  it("counts the hosts of each fleet deployment's newest rollout by state (pending: not handed over), read from the database at each scrape", async () => {
    const fleet = (name: string, hosts: string[]) => ({ name, path: path.join(dir, name), strategy: "releases", hosts }) as Deployment;
    const withFleet = createMetrics({ layout: queueLayout(path.join(dir, "q3")), deployments: [deployment(), fleet("web", ["web1", "web2", "web3"]), fleet("shop", ["s1"])], deploys: true });
    const database = await openDatabase({ databaseUrl: undefined, dataDir: "memory://" });
    try {
      await database.migrate();
      const db = database.db;
      const values = { deployment: "web", parallel: 1, onFailure: "rollback", body: "{}", hosts: ["web1", "web2", "web3"] };
      const [older] = await db.insert(rollouts).values({ ...values, entry: "e1.json", state: "superseded" }).returning({ id: rollouts.id });
      await db.insert(rolloutHosts).values(["web1", "web2", "web3"].map((host) => ({ rolloutId: older!.id, host, state: "succeeded" })));
      // Before the database is reached, the gauge has no series.
      expect(await withFleet.scrape()).not.toContain("deployq_rollout_hosts{");
      withFleet.readRolloutsFrom(db);
      expect(line(await withFleet.scrape(), 'deployq_rollout_hosts{deployment="web",state="succeeded"}')).toMatch(/ 3$/);

      const [newest] = await db.insert(rollouts).values({ ...values, entry: "e2.json", state: "rolled-back" }).returning({ id: rollouts.id });
      await db.insert(rolloutHosts).values([
        { rolloutId: newest!.id, host: "web1", state: "rolling-back" },
        { rolloutId: newest!.id, host: "web2", state: "failed" },
      ]);
      const text = await withFleet.scrape();
      const web = (state: string) => line(text, `deployq_rollout_hosts{deployment="web",state="${state}"}`);
      expect(web("rolling_back")).toMatch(/ 1$/);
      expect(web("failed")).toMatch(/ 1$/);
      expect(web("pending")).toMatch(/ 1$/);
      expect(web("succeeded")).toMatch(/ 0$/);
      // Every state of every fleet deployment is a series, 0 before its first rollout; none for a deployment without hosts.
      const series = text.split("\n").filter((l) => l.startsWith("deployq_rollout_hosts{"));
      expect(series).toHaveLength(18);
      expect(series.filter((l) => l.includes('deployment="shop"')).every((l) => l.endsWith(" 0"))).toBe(true);
      expect(text).not.toMatch(/deployq_rollout_hosts\{deployment="app"/);
      expect(text).not.toContain('state="rolling-back"');
      const checked = await execa("promtool", ["check", "metrics"], { input: text, reject: false, all: true });
      expect(checked.all, "promtool check metrics").toBe("");
      expect(checked.exitCode).toBe(0);
    } finally {
      await database.close();
    }
    // A database that fails: the series are left out, and the scrape still answers.
    const after = await withFleet.scrape();
    expect(after).not.toContain("deployq_rollout_hosts{");
    expect(after).toContain("deployq_queue_entries{");
  });
});
