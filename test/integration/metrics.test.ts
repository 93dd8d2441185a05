import { randomUUID } from "node:crypto";
import { mkdtemp, readlink, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Daemon, startDaemon } from "../../src/daemon.ts";
import type { StampedEvent } from "../../src/events/types.ts";
import { silentLogger } from "../../src/log.ts";
import { entryName } from "../../src/queue/entry-name.ts";
import { queueLayout } from "../../src/queue/layout.ts";
import { ensureQueueDirs, writeEntryDurably } from "../../src/queue/write.ts";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import { type TestRepo, createRepo } from "../helpers/git.ts";
import { REPO_ROOT } from "../helpers/processes.ts";
import { type TestPrometheus, startPrometheus } from "../helpers/prometheus.ts";
import { until } from "../helpers/wait.ts";
import { type Workspace, createWorkspace, followingDeployment, post, pushPayload, signedDelivery } from "../helpers/workspace.ts";

const ALERTS = path.join(REPO_ROOT, "docs/prometheus/alerts.yml");
const SCRAPE_CONFIG = path.join(REPO_ROOT, "docs/prometheus/prometheus.yml");

type Labels = Record<string, string>;

/** The samples of the text exposition format, as [name, labels, value]. */
function parseExposition(text: string): Array<{ name: string; labels: Labels; value: number }> {
  const samples: Array<{ name: string; labels: Labels; value: number }> = [];
  for (const line of text.split("\n")) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) continue;
    const labels: Labels = {};
    for (const l of (m[2] ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!;
    samples.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return samples;
}

/** The samples named `name` whose labels include `labels`. */
function samples(text: string, name: string, labels: Labels = {}) {
  return parseExposition(text).filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
}

function value(text: string, name: string, labels: Labels = {}): number | undefined {
  const found = samples(text, name, labels);
  if (found.length > 1) throw new Error(`${name} ${JSON.stringify(labels)} matches ${found.length} series`);
  return found[0]?.value;
}

async function scrape(url: string): Promise<string> {
  const res = await fetch(url);
  expect(res.status).toBe(200);
  expect(res.headers.get("content-type")).toMatch(/^text\/plain; version=0\.0\.4/);
  return res.text();
}

/** promtool's own check of the exposition format and the naming conventions. */
async function promtoolCheckMetrics(text: string): Promise<void> {
  const checked = await execa("promtool", ["check", "metrics"], { input: text, reject: false, all: true });
  expect(checked.all, "promtool check metrics").toBe("");
  expect(checked.exitCode).toBe(0);
}

/** Plants an entry named as if it had arrived `ageMs` ago. */
async function plantEntry(queuesDir: string, dir: string, ageMs: number): Promise<string> {
  const layout = queueLayout(queuesDir);
  await ensureQueueDirs(layout, []);
  const id = randomUUID();
  const name = entryName(id, BigInt(Date.now() - ageMs) * 1_000_000n);
  await writeEntryDurably(layout, dir, name, {
    event: "push",
    delivery_id: id,
    hook_id: "",
    received_at: new Date().toISOString(),
    payload: pushPayload({ repository: "octo-org/nobody-follows-this", after: "b".repeat(40) }),
  });
  return name;
}

describe("GET /metrics of a daemon that deploys, scraped by a real Prometheus", () => {
  let ws: Workspace;
  let tdb: TestDatabase;
  let daemon: Daemon;
  let repo: TestRepo;
  let reposDir: string;
  let prometheus: TestPrometheus | undefined;
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
    prometheus = await startPrometheus({ targets: [new URL(daemon.url!).host], ruleFiles: [ALERTS] });
  });
  afterAll(async () => {
    await prometheus?.stop();
    await daemon?.close();
    await tdb?.dispose();
    await ws?.dispose();
    await rm(reposDir, { recursive: true, force: true });
  });

  const deploy = async (files: Record<string, string>) => {
    const sha = await repo.commit(files);
    const res = await post(daemon.url!, await signedDelivery(pushPayload({ repository: "octo-org/app", after: sha })));
    expect(res.status).toBe(202);
    const entry = res.body.queued as string;
    return until(`the deploy of ${entry} to finish`, async () => seen.find((e) => e.kind === "deploy" && e.name === "finished" && e.entry === entry));
  };

  /** Instant vector of `query`, as [labels, value]. */
  const query = async (q: string) => {
    const data = await prometheus!.api<{ result: Array<{ metric: Labels; value: [number, string] }> }>("query", { query: q });
    return data.result.map((r) => ({ labels: r.metric, value: Number(r.value[1]) }));
  };

  it("is served at the receiver's address before any deploy, with every deploy series at 0 and the process metrics", async () => {
    expect(daemon.metricsUrl).toBe(`${daemon.url}/metrics`);
    const text = await scrape(daemon.metricsUrl!);
    await promtoolCheckMetrics(text);
    for (const outcome of ["succeeded", "failed", "superseded", "rolled_back", "already_deployed", "interrupted"]) {
      expect(value(text, "deployq_deploys_total", { deployment: "app", outcome }), outcome).toBe(0);
    }
    expect(value(text, "deployq_deploys_in_progress", { deployment: "app" })).toBe(0);
    expect(value(text, "deployq_queue_entries", { queue: "router" })).toBe(0);
    expect(value(text, "deployq_queue_oldest_entry_age_seconds", { queue: "app" })).toBe(0);
    expect(value(text, "deployq_dead_letter_entries", { queue: "app" })).toBe(0);
    expect(samples(text, "deployq_release_info")).toEqual([]);
    expect(value(text, "process_cpu_user_seconds_total")).toBeGreaterThan(0);
    expect(value(text, "nodejs_heap_size_used_bytes")).toBeGreaterThan(0);
  });

  it("counts a deploy, its steps, its request and its release, and Prometheus gets deployq_deploys_total", async () => {
    const end = await deploy({ "index.html": "v1" });
    expect(end).toMatchObject({ outcome: "succeeded" });
    const text = await scrape(daemon.metricsUrl!);
    await promtoolCheckMetrics(text);

    expect(value(text, "deployq_deploys_total", { deployment: "app", outcome: "succeeded" })).toBe(1);
    expect(value(text, "deployq_deploys_total", { deployment: "app", outcome: "failed" })).toBe(0);
    expect(value(text, "deployq_deploy_duration_seconds_count", { deployment: "app", outcome: "succeeded" })).toBe(1);
    for (const step of ["fetch", "checkout", "build", "switch", "prune"]) {
      expect(value(text, "deployq_deploy_step_duration_seconds_count", { deployment: "app", step }), step).toBe(1);
    }
    // The long-work buckets, and nothing else.
    const buckets = samples(text, "deployq_deploy_step_duration_seconds_bucket", { deployment: "app", step: "build" }).map((s) => s.labels.le);
    expect(buckets).toEqual([
      ...["0.5", "1", "2", "4", "6", "8", "10", "12", "14", "16", "18", "20", "22", "24", "26", "28"],
      ...["30", "35", "40", "45", "50", "55", "60", "65", "70", "75", "90", "105", "120", "+Inf"],
    ]);
    expect(value(text, "deployq_deploys_in_progress", { deployment: "app" })).toBe(0);
    expect(value(text, "deployq_last_deploy_timestamp_seconds", { deployment: "app", outcome: "succeeded" })).toBeCloseTo(Date.parse(end.at) / 1000, 3);

    expect(value(text, "deployq_webhook_requests_total", { event: "push", status: "202" })).toBe(1);
    expect(value(text, "deployq_webhook_request_duration_seconds_count")).toBe(1);
    expect(value(text, "deployq_router_pickup_seconds_count")).toBe(1);
    // The deployment's lock, waited for (the worker takes it for each pass over its queue).
    expect(value(text, "deployq_lock_wait_seconds_count", { lock: "deployment:app" })).toBeGreaterThanOrEqual(1);

    const current = path.basename(await readlink(path.join(ws.dir, "apps/app/current")));
    expect(samples(text, "deployq_release_info").map((s) => [s.labels, s.value])).toEqual([[{ deployment: "app", release: current }, 1]]);
    // Nothing unbounded in a label: no sha, delivery ID or path.
    const sha = (end as { sha: string }).sha;
    expect(text).not.toContain(sha);
    expect(text).not.toContain((end as { entry: string }).entry.slice(20, 56));
    expect(text).not.toContain(ws.dir);

    // Prometheus scrapes it (every 200 ms): the succeeded deploy, and the 0 that the failed one will raise.
    await until(
      "Prometheus to have deployq_deploys_total",
      async () => {
        const result = await query('deployq_deploys_total{deployment="app"}');
        const of = (outcome: string) => result.find((r) => r.labels.outcome === outcome)?.value;
        return of("succeeded") === 1 && of("failed") === 0 && result;
      },
      60_000,
      100,
    );
  });

  it("counts a failed deploy and its dead-lettered entry; the README's alert rules fire on them in Prometheus", async () => {
    const end = await deploy({ FAIL: "1" });
    expect(end).toMatchObject({ outcome: "failed" });
    const text = await until("the failed entry in dead-letter/app/", async () => {
      const t = await scrape(daemon.metricsUrl!);
      return value(t, "deployq_dead_letter_entries", { queue: "app" }) === 1 && t;
    });
    await promtoolCheckMetrics(text);
    expect(value(text, "deployq_deploys_total", { deployment: "app", outcome: "succeeded" })).toBe(1);
    expect(value(text, "deployq_deploys_total", { deployment: "app", outcome: "failed" })).toBe(1);
    expect(value(text, "deployq_deploy_duration_seconds_count", { deployment: "app", outcome: "failed" })).toBe(1);
    expect(value(text, "deployq_deploy_step_duration_seconds_count", { deployment: "app", step: "fetch" })).toBe(2);
    expect(value(text, "deployq_deploy_step_duration_seconds_count", { deployment: "app", step: "checkout" })).toBe(2);
    expect(value(text, "deployq_deploy_step_duration_seconds_count", { deployment: "app", step: "build" })).toBe(2);
    // The failed build never switched: the release that serves is still the first one, alone.
    expect(value(text, "deployq_deploy_step_duration_seconds_count", { deployment: "app", step: "switch" })).toBe(1);
    const current = path.basename(await readlink(path.join(ws.dir, "apps/app/current")));
    expect(samples(text, "deployq_release_info").map((s) => s.labels)).toEqual([{ deployment: "app", release: current }]);
    expect(value(text, "deployq_webhook_requests_total", { event: "push", status: "202" })).toBe(2);

    let alerts: Array<{ labels: Labels; state: string }> = [];
    const firing = await until(
      "the alerts DeployqDeployFailed and DeployqDeadLetter to fire",
      async () => {
        ({ alerts } = await prometheus!.api<{ alerts: typeof alerts }>("alerts"));
        const on = alerts.filter((a) => a.state === "firing").map((a) => a.labels);
        return on.some((l) => l.alertname === "DeployqDeployFailed" && l.deployment === "app") && on.some((l) => l.alertname === "DeployqDeadLetter" && l.queue === "app") && on;
      },
      30_000,
      100,
    ).catch(async (err: Error) => {
      throw new Error(`${err.message}; alerts: ${JSON.stringify(alerts)}; rules: ${JSON.stringify(await prometheus!.api("rules"))}`);
    });
    expect(firing.map((l) => l.alertname)).not.toContain("DeployqQueueStuck");
  });

  it("labels a request by its status, and an event name GitHub does not send as other", async () => {
    const unsigned = await fetch(`${daemon.url}/github-webhook`, { method: "POST", headers: { "x-github-event": `made-up-${randomUUID()}`, "content-type": "application/json" }, body: "{}" });
    expect(unsigned.status).toBe(401);
    const text = await scrape(daemon.metricsUrl!);
    expect(value(text, "deployq_webhook_requests_total", { event: "other", status: "401" })).toBe(1);
    expect(text).not.toContain("made-up-");
    expect(value(text, "deployq_webhook_request_duration_seconds_count")).toBe(3);
  });
});

describe("queue gauges, read from the directories at each scrape", () => {
  let ws: Workspace;
  let tdb: TestDatabase;
  let daemon: Daemon;

  beforeAll(async () => {
    ws = await createWorkspace({ deployments: followingDeployment("app", "/nonexistent/app.git") });
    tdb = await createTestDatabase("postgres");
    // The receiver alone: nothing takes the entries out of router/.
    daemon = await startDaemon({ settings: ws.settings, role: "receiver", logger: silentLogger(), database: tdb.database });
  });
  afterAll(async () => {
    await daemon?.close();
    await tdb?.dispose();
    await ws?.dispose();
  });

  it("counts the entries of router/, a deployment's queue and a dead-letter folder, and the age of the oldest", async () => {
    const layout = queueLayout(ws.queuesDir);
    await ensureQueueDirs(layout, ["app"]);
    await plantEntry(ws.queuesDir, layout.router, 120_000);
    await plantEntry(ws.queuesDir, layout.router, 1_000);
    await plantEntry(ws.queuesDir, layout.deployment("app"), 30_000);
    await plantEntry(ws.queuesDir, layout.deadLetter("app"), 5_000);
    await plantEntry(ws.queuesDir, layout.deadLetter("router"), 5_000);
    const text = await scrape(daemon.metricsUrl!);
    await promtoolCheckMetrics(text);
    expect(value(text, "deployq_queue_entries", { queue: "router" })).toBe(2);
    expect(value(text, "deployq_queue_entries", { queue: "app" })).toBe(1);
    const routerAge = value(text, "deployq_queue_oldest_entry_age_seconds", { queue: "router" })!;
    expect(routerAge).toBeGreaterThanOrEqual(120);
    expect(routerAge).toBeLessThan(180);
    expect(value(text, "deployq_queue_oldest_entry_age_seconds", { queue: "app" })).toBeGreaterThanOrEqual(30);
    expect(value(text, "deployq_dead_letter_entries", { queue: "app" })).toBe(1);
    expect(value(text, "deployq_dead_letter_entries", { queue: "router" })).toBe(1);
    // A receiver runs no deploys: it has no deploy counters to start at 0.
    expect(samples(text, "deployq_deploys_total")).toEqual([]);
  });
});

describe("deployq workers, on its [metrics] address", () => {
  let ws: Workspace;
  let tdb: TestDatabase;
  let daemon: Daemon;

  beforeAll(async () => {
    ws = await createWorkspace({ deployments: `[metrics]\nhost = "127.0.0.1"\nport = 0\n${followingDeployment("app", "/nonexistent/app.git")}` });
    tdb = await createTestDatabase("postgres");
    daemon = await startDaemon({ settings: ws.settings, role: "workers", logger: silentLogger(), database: tdb.database });
  });
  afterAll(async () => {
    await daemon?.close();
    await tdb?.dispose();
    await ws?.dispose();
  });

  it("serves /metrics, and only that", async () => {
    expect(daemon.url).toBeUndefined();
    expect(daemon.metricsUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
    const text = await scrape(daemon.metricsUrl!);
    await promtoolCheckMetrics(text);
    expect(value(text, "deployq_deploys_total", { deployment: "app", outcome: "succeeded" })).toBe(0);
    expect(value(text, "deployq_deploy_retries_total", { deployment: "app" })).toBe(0);
    expect(samples(text, "deployq_webhook_requests_total")).toEqual([]);
    const base = daemon.metricsUrl!.replace(/\/metrics$/, "");
    expect((await fetch(`${base}/github-webhook`, { method: "POST", body: "{}" })).status).toBe(404);
    expect((await fetch(`${base}/status`)).status).toBe(404);
  });

  it("serves none without a [metrics] port", async () => {
    const plain = await createWorkspace({ deployments: followingDeployment("app", "/nonexistent/app.git") });
    const other = await createTestDatabase("postgres");
    try {
      const workers = await startDaemon({ settings: plain.settings, role: "workers", logger: silentLogger(), database: other.database });
      expect(workers.metricsUrl).toBeUndefined();
      await workers.close();
    } finally {
      await other.dispose();
      await plain.dispose();
    }
  });
});

describe("the README's Prometheus files", () => {
  it("pass promtool check rules and check config", async () => {
    const rules = await execa("promtool", ["check", "rules", ALERTS], { reject: false, all: true });
    expect(rules.exitCode, rules.all).toBe(0);
    expect(rules.all).toContain("SUCCESS: 3 rules found");
    const config = await execa("promtool", ["check", "config", SCRAPE_CONFIG], { reject: false, all: true });
    expect(config.exitCode, config.all).toBe(0);
  });
});
