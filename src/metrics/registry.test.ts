import { mkdir, mkdtemp, rm, symlink, rename } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
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
});
