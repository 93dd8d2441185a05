import { execFile } from "node:child_process";
import { request as httpRequest } from "node:http";
import { createConnection } from "node:net";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { eq } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { deliveries, deploys } from "../../src/db/schema.ts";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import { type TestRepo, createRepo } from "../helpers/git.ts";
import { type Outcome, allNames, entryNames, freePort, tryPost, waitForHttp, waitUntil } from "../helpers/load.ts";
import { PM2_BIN, killPm2 } from "../helpers/pm2.ts";
import { REPO_ROOT } from "../helpers/processes.ts";
import { SECRET, type Workspace, createWorkspace, pushPayload, signedDelivery, followingDeployment } from "../helpers/workspace.ts";

const run = promisify(execFile);

const PM2 = PM2_BIN;
const ECOSYSTEM = path.join(REPO_ROOT, "ecosystem.config.cjs");
const APPS = ["deployq-receiver", "deployq-workers"] as const;
/** Processes pm2 runs per app: the receiver in cluster mode, the workers in fork mode. */
const INSTANCES: Record<(typeof APPS)[number], number> = { "deployq-receiver": 2, "deployq-workers": 1 };
/** Reloads while the deliveries arrive (each replaces every process once). */
const RELOADS = 2;
/** Commits in the repository; delivery i pushes commit i mod COMMITS. */
const COMMITS = 12;
/** One delivery is sent every SEND_EVERY_MS, whether or not earlier ones were answered. */
const SEND_EVERY_MS = 40;
/** Acknowledged deliveries before the first reload starts, and again after each has finished. */
const ACKS_BEFORE = 30;
const ACKS_AFTER = 30;
/**
 * Bounds the sender if the test's own waits and `finally` never stop it. It is a time, not a
 * count: a count ran out during a slow reload on a loaded machine, and the wait for the
 * acknowledgements after it then failed for want of deliveries, not of answers.
 */
const SENDER_DEADLINE_MS = 240_000;
/** Final outcomes of a push entry in the deploys table. */
const FINAL = ["succeeded", "superseded", "already-deployed"];

interface Pm2Process {
  name: string;
  pid: number;
  pm2_env: { status: string; restart_time: number; exec_mode: string };
}

/**
 * POSTs a signed delivery on a connection of its own (no keep-alive agent), closed after the
 * answer: what a sender that does not reuse connections sees. A connection error is an outcome.
 */
function tryPostFresh(url: string, request: { headers: Record<string, string>; body: string | Buffer }, timeoutMs = 30_000): Promise<Outcome> {
  return new Promise((resolve) => {
    const req = httpRequest(`${url}/github-webhook`, { method: "POST", headers: { ...request.headers, connection: "close" }, agent: false, timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("error", (err: NodeJS.ErrnoException) => resolve({ kind: "error", error: err.code ?? err.message }));
      res.on("end", () => {
        const text = Buffer.concat(chunks).toString("utf8");
        let body: Record<string, unknown>;
        try {
          body = JSON.parse(text) as Record<string, unknown>;
        } catch {
          body = { raw: text };
        }
        resolve({ kind: "status", status: res.statusCode ?? 0, body });
      });
    });
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.on("error", (err: NodeJS.ErrnoException) => resolve({ kind: "error", error: err.code ?? err.message }));
    req.end(request.body);
  });
}

describe("pm2: ecosystem.config.cjs in a private PM2_HOME", () => {
  let dir: string;
  let pm2Home: string;
  let logDir: string;
  let repo: TestRepo;
  let shas: string[];
  let ws: Workspace;
  let tdb: TestDatabase;
  let port: number;
  let env: NodeJS.ProcessEnv;
  let daemonStarted = false;

  /** Runs the pm2 CLI against the private PM2_HOME; throws with its output when it fails. */
  async function pm2(args: string[], extraEnv: NodeJS.ProcessEnv = {}): Promise<string> {
    daemonStarted = true; // any pm2 command may spawn the daemon
    try {
      const { stdout } = await run(PM2, args, { cwd: REPO_ROOT, env: { ...env, ...extraEnv }, timeout: 120_000, maxBuffer: 16 * 1024 * 1024 });
      return stdout;
    } catch (err) {
      const e = err as Error & { stdout?: string; stderr?: string };
      throw new Error(`pm2 ${args.join(" ")} failed: ${e.message}\n${e.stdout ?? ""}\n${e.stderr ?? ""}\n${await logs()}`);
    }
  }

  async function jlist(): Promise<Pm2Process[]> {
    const out = await pm2(["jlist"]);
    // pm2 may print a notice before the JSON array.
    return JSON.parse(out.slice(out.indexOf("["))) as Pm2Process[];
  }

  /** Every app with all its processes online (by app name), or false. */
  async function appsOnline(): Promise<Map<string, Pm2Process[]> | false> {
    const list = await jlist();
    const byName = new Map<string, Pm2Process[]>();
    for (const p of list) byName.set(p.name, [...(byName.get(p.name) ?? []), p]);
    const up = (a: (typeof APPS)[number]) => (byName.get(a) ?? []).filter((p) => p.pm2_env.status === "online" && p.pid > 0).length === INSTANCES[a];
    return APPS.every(up) ? byName : false;
  }

  /** The tail of every log file pm2 wrote for the apps, for failure messages. */
  async function logs(): Promise<string> {
    let out = "";
    for (const file of await allNames(logDir)) {
      const text = await readFile(path.join(logDir, file), "utf8").catch(() => "");
      out += `--- ${file}\n${text.split("\n").slice(-40).join("\n")}\n`;
    }
    return out;
  }

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "deployq-pm2-"));
    pm2Home = path.join(dir, "pm2");
    logDir = path.join(dir, "logs");
    repo = await createRepo(dir);
    shas = [];
    for (let i = 0; i < COMMITS; i++) shas.push(await repo.commit({ "index.html": `v${i}\n` }));
    port = await freePort();
    ws = await createWorkspace({
      port,
      deployments: followingDeployment("app", repo.bare, `
keep_releases = 3
# Every acknowledged delivery's record is checked at the end: none may be pruned meanwhile.
keep_deploys = 1000000
commands = [["sh", "-c", "echo $DEPLOYQ_SHA > BUILD"]]
`),
    });
    tdb = await createTestDatabase("postgres");
    const inherited = { ...process.env };
    // Nothing of this machine's own setup leaks in: the private daemon, the test's queues and locks only.
    for (const key of ["PM2_HOME", "DEPLOYQ_QUEUES_DIR", "REDIS_URL", "DEPLOYQ_PM2_KILL_TIMEOUT_MS", "NODE_ENV"]) delete inherited[key];
    env = {
      ...inherited,
      PM2_HOME: pm2Home,
      DEPLOYQ_CONFIG: ws.configPath,
      DEPLOYQ_PM2_LOG_DIR: logDir,
      // info: the receiver's "deployq started" lines show which processes wrote pm2's log file.
      DEPLOYQ_LOG_LEVEL: "info",
      GITHUB_WEBHOOK_SECRET: SECRET,
      DATABASE_URL: tdb.url,
    };
  });

  afterAll(async () => {
    let left: Array<{ pid: number; cmdline: string }> = [];
    if (daemonStarted) {
      // Stops the apps (SIGINT, drain) and the daemon, whatever the test left running.
      left = await killPm2(pm2Home, env);
    }
    await tdb?.dispose();
    await ws?.dispose();
    if (dir) await rm(dir, { recursive: true, force: true });
    expect(left, "processes of the private PM2_HOME left after pm2 kill").toEqual([]);
  });

  it(
    "start, two reloads while deliveries arrive on kept-alive and fresh connections, stop, delete: no delivery is refused or fails, and each is deployed or superseded exactly once",
    async () => {
      const url = `http://127.0.0.1:${port}`;
      const router = path.join(ws.queuesDir, "router");
      const appQueue = path.join(ws.queuesDir, "deployments", "app");
      const appDir = path.join(ws.dir, "apps", "app");

      const startedAt = Date.now();
      await pm2(["start", ECOSYSTEM]);
      // wait_ready: `pm2 start` returns once every process sent "ready" (or listen_timeout passed).
      const before = await waitUntil(appsOnline, { what: "every app is online", timeoutMs: 60_000, describe: logs });
      await waitForHttp(url);
      const startMs = Date.now() - startedAt;

      // Deliveries: one every SEND_EVERY_MS, each pushing a real commit of the repository.
      interface Sent {
        index: number;
        sha: string;
        deliveryId: string;
        sentAt: number;
        outcome?: Outcome;
        /** The entry named by the 202 answer. */
        queued?: string;
        keepAlive: boolean;
      }
      const sent: Sent[] = [];
      const inFlight: Array<Promise<void>> = [];
      let acked = 0;
      let stop = false;
      const sender = (async () => {
        const deadline = Date.now() + SENDER_DEADLINE_MS;
        while (!stop && Date.now() < deadline) {
          const index = sent.length;
          const sha = shas[index % COMMITS]!;
          const request = await signedDelivery(pushPayload({ repository: "octo-org/app", branch: "main", after: sha }));
          // Even deliveries reuse keep-alive connections (fetch's pool), odd ones open their own.
          const keepAlive = index % 2 === 0;
          const record: Sent = { index, sha, deliveryId: request.headers["x-github-delivery"]!, sentAt: Date.now(), keepAlive };
          sent.push(record);
          inFlight.push(
            (keepAlive ? tryPost(url, request, 30_000) : tryPostFresh(url, request, 30_000)).then((outcome) => {
              record.outcome = outcome;
              if (outcome.kind === "status" && outcome.status === 202) {
                record.queued = outcome.body.queued as string;
                acked++;
              }
            }),
          );
          await new Promise((resolve) => setTimeout(resolve, SEND_EVERY_MS)); // the sending rate, not a synchronisation
        }
      })();

      const reloads: Array<{ start: number; end: number }> = [];
      try {
        await waitUntil(() => acked >= ACKS_BEFORE, { what: `${ACKS_BEFORE} deliveries acknowledged before the reload`, timeoutMs: 30_000 });
        for (let r = 0; r < RELOADS; r++) {
          const start = Date.now();
          await pm2(["reload", ECOSYSTEM]);
          reloads.push({ start, end: Date.now() });
          const ackedAtReload = acked;
          await waitUntil(() => acked >= ackedAtReload + ACKS_AFTER, {
            what: `${ACKS_AFTER} more deliveries acknowledged after reload ${r + 1}`,
            timeoutMs: 60_000,
            describe: async () => `${sent.length} sent, ${acked} acknowledged, ${sent.filter((s) => s.outcome === undefined).length} unanswered\n${await logs()}`,
          });
        }
        stop = true;
        await sender;
        await Promise.all(inFlight);

        // pm2 replaced every process once per reload, and all are online again; the receiver
        // runs as two cluster-mode instances.
        const after = await waitUntil(appsOnline, { what: "every app is online after the reloads", timeoutMs: 30_000, describe: logs });
        for (const app of APPS) {
          const oldPids = new Set(before.get(app)!.map((p) => p.pid));
          for (const p of after.get(app)!) {
            expect(oldPids.has(p.pid), `${app} ${p.pid} is a new process`).toBe(false);
            expect(p.pm2_env.restart_time, app).toBe(RELOADS);
            expect(p.pm2_env.exec_mode, app).toBe(INSTANCES[app] > 1 ? "cluster_mode" : "fork_mode");
          }
        }

        // pm2 kept every receiver instance's log lines (cluster mode captures process.stdout,
        // not fd 1): one "deployq started" per process it ran, two at start and two per reload.
        const receiverLog = await readFile(path.join(logDir, "deployq-receiver.out.log"), "utf8");
        const startedPids = new Set(
          receiverLog
            .split("\n")
            .filter((l) => l.includes('"msg":"deployq started"'))
            .map((l) => (JSON.parse(l) as { pid: number }).pid),
        );
        expect(startedPids.size, "receiver processes that logged their start").toBe(INSTANCES["deployq-receiver"] * (1 + RELOADS));
        for (const p of after.get("deployq-receiver")!) expect(startedPids.has(p.pid), `the log has receiver ${p.pid}`).toBe(true);

        // Answers: every delivery, on a kept-alive or a fresh connection, got 202: the port
        // never closed (no refused, reset or cut connection) and nothing answered 5xx.
        const statuses = new Map<string, number>();
        for (const s of sent) {
          const key = `${s.keepAlive ? "keep-alive" : "fresh"} ${s.outcome!.kind === "status" ? String(s.outcome!.status) : s.outcome!.error}`;
          statuses.set(key, (statuses.get(key) ?? 0) + 1);
        }
        expect(Object.fromEntries(statuses), "answers by connection kind").toEqual({
          "keep-alive 202": sent.filter((s) => s.keepAlive).length,
          "fresh 202": sent.filter((s) => !s.keepAlive).length,
        });
        const during = (s: Sent) => reloads.some((r) => s.sentAt >= r.start && s.sentAt <= r.end);
        const sentDuringReload = sent.filter(during);
        for (const kind of [true, false]) {
          expect(sentDuringReload.filter((s) => s.keepAlive === kind).length, `${kind ? "keep-alive" : "fresh"} deliveries sent while pm2 reloaded`).toBeGreaterThan(0);
        }
        const ack = sent.filter((s) => s.queued !== undefined);
        const entryOf = (s: Sent) => s.queued!;
        const names = ack.map(entryOf);
        expect(new Set(names).size, "one entry per acknowledged delivery").toBe(ack.length);

        // Every acknowledged delivery ends with exactly one final outcome in the deploys table,
        // and both queues drain.
        const finalRows = async () =>
          (await tdb.database.db.select().from(deploys).where(eq(deploys.deployment, "app"))).filter((r) => FINAL.includes(r.status));
        const missing = async () => {
          const done = new Set((await finalRows()).map((r) => r.entry));
          return names.filter((n) => !done.has(n));
        };
        await waitUntil(async () => (await entryNames(router)).length === 0 && (await entryNames(appQueue)).length === 0 && (await missing()).length === 0, {
          what: "router/ and deployments/app/ are empty and every acknowledged entry has its outcome",
          timeoutMs: 90_000,
          describe: async () =>
            `router: ${(await entryNames(router)).length}, app queue: ${(await entryNames(appQueue)).length}, ` +
            `without an outcome: ${(await missing()).length}\n${await logs()}`,
        });

        const rows = await tdb.database.db.select().from(deploys).where(eq(deploys.deployment, "app"));
        const byEntry = new Map<string, typeof rows>();
        for (const r of rows) byEntry.set(r.entry, [...(byEntry.get(r.entry) ?? []), r]);
        for (const s of ack) {
          const mine = byEntry.get(entryOf(s)) ?? [];
          const final = mine.filter((r) => FINAL.includes(r.status));
          expect(final, `delivery ${s.index} (${entryOf(s)}): ${JSON.stringify(mine.map((r) => r.status))}`).toHaveLength(1);
          expect(final[0]).toMatchObject({ deliveryId: s.deliveryId, event: "push" });
          // The push's commit, or (when main had moved on) the branch's head deployed in its place.
          expect(final[0]!.requestedSha ?? final[0]!.sha).toBe(s.sha);
          // Besides its outcome, an entry may only have been interrupted by the reload (and redone).
          for (const r of mine) expect(["interrupted", ...FINAL], `delivery ${s.index}`).toContain(r.status);
        }
        // Nothing else was deployed (every delivery was answered, so none was queued unacknowledged).
        const acknowledged = new Set(names);
        expect(rows.filter((r) => !acknowledged.has(r.entry))).toEqual([]);
        expect(rows.filter((r) => r.status === "running" || r.status === "failed" || r.status === "retrying")).toEqual([]);

        // The router recorded each one as routed to app.
        const routed = await tdb.database.db.select().from(deliveries);
        const routedByEntry = new Map(routed.map((r) => [r.entry, r]));
        for (const n of names) expect(routedByEntry.get(n), n).toMatchObject({ outcome: "routed", routedTo: ["app"] });

        // `current` is the head of main: every push deploys its branch's head, never an older commit.
        const head = shas.at(-1)!;
        const release = JSON.parse(await readFile(path.join(appDir, "current", ".deployq-release.json"), "utf8")) as { sha: string };
        expect(release.sha).toBe(head);
        expect((await readFile(path.join(appDir, "current", "BUILD"), "utf8")).trim()).toBe(head);
        expect(await allNames(router)).toEqual([]);
        expect(await allNames(path.join(ws.queuesDir, ".tmp"))).toEqual([]);
        expect(await entryNames(path.join(ws.queuesDir, "dead-letter", "app"))).toEqual([]);

        // Stop: both apps drain and end; delete removes them from pm2.
        await pm2(["stop", ECOSYSTEM]);
        const stopped = await jlist();
        for (const app of APPS) expect(stopped.find((p) => p.name === app)?.pm2_env.status, app).toBe("stopped");
        await expect(fetch(`${url}/`)).rejects.toThrow();
        await pm2(["delete", ECOSYSTEM]);
        expect((await jlist()).filter((p) => (APPS as readonly string[]).includes(p.name))).toEqual([]);

        const counts = [...statuses].map(([k, v]) => `${k}: ${v}`).join(", ");
        const statusCounts = new Map<string, number>();
        for (const r of rows) statusCounts.set(r.status, (statusCounts.get(r.status) ?? 0) + 1);
        const ackedDuringReload = sentDuringReload.filter((s) => s.queued !== undefined).length;
        console.info(
          `pm2: start ${startMs} ms, reloads ${reloads.map((r) => `${r.end - r.start} ms`).join(", ")}; ${sent.length} deliveries (${counts}); ` +
            `${sentDuringReload.length} sent during the reload, ${ackedDuringReload} of them acknowledged; deploys: ${[...statusCounts].map(([k, v]) => `${k} ${v}`).join(", ")}`,
        );
      } finally {
        stop = true;
        await sender;
        await Promise.all(inFlight);
      }
    },
    240_000,
  );

  it(
    "a build running when pm2 reloads the workers finishes within the grace period: pm2 signals deployq, not its commands",
    async () => {
      const buildDir = path.join(dir, "slow-build");
      const gate = path.join(buildDir, "gate");
      const signals = path.join(buildDir, "signals");
      await mkdir(buildDir, { recursive: true });
      const slow = await createWorkspace({
        port: await freePort(),
        topLevel: "shutdown_grace_s = 30",
        deployments: `
[deployments.slow]
repository = "octo-org/app"
branch = "main"
remote = "${repo.bare}"
path = "./apps/slow"
commands = [["sh", "-c", "trap 'echo INT >> ${signals}; exit 130' INT; trap 'echo TERM >> ${signals}; exit 143' TERM; echo $$ > ${buildDir}/pid; while [ ! -e ${gate} ]; do sleep 0.02; done"]]
`,
      });
      const slowEnv = { DEPLOYQ_CONFIG: slow.configPath, DEPLOYQ_LOG_LEVEL: "info" };
      const workersLog = path.join(logDir, "deployq-workers.out.log");
      try {
        await pm2(["start", ECOSYSTEM], slowEnv);
        const before = await waitUntil(appsOnline, { what: "both apps are online", timeoutMs: 60_000, describe: logs });
        const url = `http://127.0.0.1:${slow.settings.port}`;
        const sha = shas.at(-1)!;
        const answer = await tryPost(url, await signedDelivery(pushPayload({ repository: "octo-org/app", branch: "main", after: sha })));
        expect(answer).toMatchObject({ kind: "status", status: 202 });
        const entry = answer.kind === "status" ? (answer.body.queued as string) : "";
        await waitUntil(async () => (await readFile(path.join(buildDir, "pid"), "utf8").catch(() => "")).trim() !== "", {
          what: "the build has started",
          timeoutMs: 30_000,
          describe: logs,
        });
        const logBefore = (await readFile(workersLog, "utf8").catch(() => "")).length;

        // Reload while the build runs: the old workers process drains (its build goes on), then
        // the new one starts; `pm2 reload` returns once it is ready.
        const reload = pm2(["reload", ECOSYSTEM], slowEnv);
        await waitUntil(async () => (await readFile(workersLog, "utf8").catch(() => "")).slice(logBefore).includes("draining"), {
          what: "the old workers process is draining",
          timeoutMs: 30_000,
          describe: logs,
        });
        await writeFile(gate, "");
        await reload;
        const after = await waitUntil(appsOnline, { what: "both apps are online after the reload", timeoutMs: 30_000, describe: logs });
        expect(after.get("deployq-workers")![0]!.pid).not.toBe(before.get("deployq-workers")![0]!.pid);

        // The build was never signalled, its deploy succeeded once, before the old process ended.
        expect(await readFile(signals, "utf8").catch(() => "")).toBe("");
        const rows = await tdb.database.db.select().from(deploys).where(eq(deploys.entry, entry));
        expect(rows.map((r) => ({ status: r.status, sha: r.sha, pid: r.pid }))).toEqual([{ status: "succeeded", sha, pid: before.get("deployq-workers")![0]!.pid }]);
        const release = JSON.parse(await readFile(path.join(slow.dir, "apps", "slow", "current", ".deployq-release.json"), "utf8")) as { sha: string };
        expect(release.sha).toBe(sha);
        expect(await entryNames(path.join(slow.queuesDir, "deployments", "slow"))).toEqual([]);

        await pm2(["delete", ECOSYSTEM], slowEnv);
      } finally {
        await writeFile(gate, "").catch(() => {});
        await slow.dispose();
      }
    },
    180_000,
  );
  it(
    "control: with the receiver in fork mode instead, the same reload refuses connections",
    async () => {
      // ecosystem.config.cjs with only the receiver changed back to one fork-mode process.
      const forkEcosystem = path.join(dir, "fork-mode.config.cjs");
      await writeFile(
        forkEcosystem,
        `const ours = require(${JSON.stringify(ECOSYSTEM)});\n` +
          `module.exports = { apps: ours.apps.map((a) => (a.name === "deployq-receiver" ? { ...a, exec_mode: "fork", instances: 1 } : a)) };\n`,
      );
      const only = ["--only", "deployq-receiver"];
      await pm2(["start", forkEcosystem, ...only]);
      await waitForHttp(`http://127.0.0.1:${port}`);
      // Connect again and again while pm2 reloads: pm2 stops the old process and waits for its
      // exit before it starts the new one, which must boot (tsx, migrations) before it listens,
      // so the port is closed for at least that boot, and a connection attempt made then is refused.
      const seen = { accepted: 0, refused: 0, other: [] as string[] };
      let reloading = true;
      const probe = (async () => {
        while (reloading) {
          await new Promise<void>((resolve) => {
            const socket = createConnection({ host: "127.0.0.1", port }, () => {
              seen.accepted++;
              socket.destroy();
              resolve();
            });
            socket.once("error", (err: NodeJS.ErrnoException) => {
              if (err.code === "ECONNREFUSED") seen.refused++;
              else seen.other.push(err.code ?? err.message);
              resolve();
            });
          });
        }
      })();
      try {
        await pm2(["reload", forkEcosystem, ...only]);
      } finally {
        reloading = false;
        await probe;
      }
      expect(seen.refused, `connections during a fork-mode reload: ${JSON.stringify(seen)}`).toBeGreaterThan(0);
      expect(seen.accepted).toBeGreaterThan(0);
      await pm2(["delete", forkEcosystem]);
    },
    120_000,
  );
});
