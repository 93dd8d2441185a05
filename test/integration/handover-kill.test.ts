import { execFile } from "node:child_process";
import { existsSync, readFileSync, readdirSync, watch } from "node:fs";
import { mkdtemp, readFile, readdir, readlink, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { sql } from "drizzle-orm";
import { afterEach, describe, expect, it } from "vitest";
import { deliveries, deploys } from "../../src/db/schema.ts";
import { isEntryName } from "../../src/queue/entry-name.ts";
import { queueLayout } from "../../src/queue/layout.ts";
import { ensureQueueDirs } from "../../src/queue/write.ts";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import { git } from "../helpers/git.ts";
import { type Spawned, spawnDeployq } from "../helpers/processes.ts";
import { waitUntil } from "../helpers/load.ts";
import { until } from "../helpers/wait.ts";
import { type Workspace, createWorkspace, listFiles, queuePush } from "../helpers/workspace.ts";

/**
 * Issue 14, item 2, with real processes: the router records an entry's outcome, hard-links
 * it into each deployment queue, then removes it from router/. A workers process killed in
 * between leaves the entry in router/ although a deployment may already have consumed its
 * copy; the next pass hands it over again. handover.test.ts replays that state; this test
 * produces it (and every other kill point it can reach) with kill -9.
 *
 * Two deployments follow every branch deploy-* of one repository, so each entry is handed
 * to both: a (deployment, entry) pair is one turn of one entry in one queue. Each entry is
 * a push of its own branch, pointing at its own commit, so a second turn of an old entry
 * would really deploy it again (its branch's head is its own commit), and its build would
 * run again. The build appends a line to a record outside the releases as it starts and as
 * it ends, with the deployment, the commit, the release and the time.
 *
 * "Handled twice" means a second turn after a finished one: a second final deploy row for
 * a pair, or a build of a pair that starts after the pair's final row was written. A build
 * killed with its workers process and redone before the pair's turn ended is the same turn
 * (its row is `interrupted`), not a second handling.
 */

const DEPLOYMENTS = ["alpha", "beta"] as const;
type Kind = "handover" | "consumed" | "mid-build" | "after-build";
interface Round {
  /** The event that triggers the kill (see `trigger`). */
  kind: Kind;
  /** Entries written into router/ this round (varied, so that the router's batches are too)... */
  burst: number;
  /** ...before the workers start (a backlog the router routes in one batch) or while they run. */
  backlog: boolean;
  /** handover: kill once this many copies are in a deployment queue and still in router/. */
  copies?: number;
}
/** One kill per round. A hand-over killed with many copies linked makes the next start race its router against its deployment workers. */
const ROUNDS: Round[] = [
  { kind: "handover", burst: 30, backlog: true, copies: 15 },
  { kind: "consumed", burst: 12, backlog: false },
  { kind: "mid-build", burst: 6, backlog: false },
  { kind: "handover", burst: 25, backlog: true, copies: 10 },
  { kind: "after-build", burst: 8, backlog: false },
  { kind: "handover", burst: 20, backlog: false, copies: 1 },
  { kind: "handover", burst: 40, backlog: true, copies: 30 },
  { kind: "mid-build", burst: 5, backlog: true },
  { kind: "handover", burst: 15, backlog: true, copies: 5 },
  { kind: "handover", burst: 30, backlog: true, copies: 20 },
  { kind: "after-build", burst: 10, backlog: false },
];
/** Entries written while no workers process runs, after the last kill: the final run drains them with the rest. */
const TAIL = 10;
const FINAL = new Set(["succeeded", "already-deployed", "superseded", "failed"]);

describe("workers killed with SIGKILL while entries are handed over and consumed", () => {
  let dir: string | undefined;
  let tdb: TestDatabase | undefined;
  let ws: Workspace | undefined;
  let workers: Spawned | undefined;
  let hold: string | undefined;

  afterEach(async () => {
    if (hold) await rm(hold, { force: true }); // lets an orphaned build end by itself
    if (workers) {
      if (workers.child.exitCode === null && workers.child.signalCode === null) workers.child.kill("SIGKILL");
      await workers.exited;
    }
    await tdb?.dispose();
    await ws?.dispose();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it("every (deployment, entry) pair has exactly one turn, whatever the kill interrupted", { timeout: 120_000 }, async () => {
    const started = Date.now();
    dir = await mkdtemp(path.join(tmpdir(), "deployq-handover-kill-"));
    const record = path.join(dir, "record");
    hold = path.join(dir, "hold");
    const total = ROUNDS.reduce((sum, r) => sum + r.burst, 0) + TAIL;

    // One commit per entry, each on its own branch deploy-NNNN, made in one git fast-import.
    const bare = path.join(dir, "shop.git");
    await git(dir, "init", "--bare", "--quiet", "--initial-branch=main", bare);
    let stream = "";
    for (let i = 0; i < total; i++) {
      const content = `entry ${i}\n`;
      stream += `commit refs/heads/deploy-${String(i).padStart(4, "0")}\ncommitter Test <test@example.com> ${1_700_000_000 + i} +0000\n`;
      stream += `data ${Buffer.byteLength(content)}\n${content}M 644 inline index.html\ndata ${Buffer.byteLength(content)}\n${content}\n`;
    }
    await new Promise<void>((resolve, reject) => {
      const child = execFile("git", ["fast-import", "--quiet"], { cwd: bare }, (err) => (err ? reject(err) : resolve()));
      child.stdin!.end(stream);
    });
    const refs = (await git(bare, "for-each-ref", "--format=%(refname:short) %(objectname)", "refs/heads/")).split("\n");
    const branches = refs.map((line) => {
      const [branch, sha] = line.split(" ");
      return { branch: branch!, sha: sha! };
    });
    expect(branches).toHaveLength(total);
    const shaOfBranch = new Map(branches.map((b) => [b.branch, b.sha]));

    // The build: a line as it starts, a line as it ends; in between it waits while `hold` exists.
    const build = path.join(dir, "build.sh");
    await writeFile(
      build,
      `line() { echo "$1 $DEPLOYQ_DEPLOYMENT $DEPLOYQ_SHA \${DEPLOYQ_RELEASE_DIR##*/} $(date +%s%N)" >> '${record}'; }
line start
while [ -e '${hold}' ]; do sleep 0.01; done
line end
`,
    );
    await writeFile(record, "");
    let config = "";
    for (const name of DEPLOYMENTS) {
      config += `
[deployments.${name}]
repository = "octo-org/shop"
branch = "deploy-*"
remote = "${bare}"
path = "./apps/${name}"
coalesce_ms = 0
keep_deploys = 100000
commands = [["sh", "${build}"]]
`;
    }
    ws = await createWorkspace({ deployments: config });
    await ensureQueueDirs(queueLayout(ws.queuesDir), DEPLOYMENTS); // watched from the first round on
    tdb = await createTestDatabase("postgres");
    const env = { ...ws.env, DATABASE_URL: tdb.url, DEPLOYQ_CONFIG: ws.configPath, DEPLOYQ_LOG_LEVEL: "info" };
    const routerDir = path.join(ws.queuesDir, "router");
    const queueDirs = DEPLOYMENTS.map((d) => path.join(ws!.queuesDir, "deployments", d));
    const names = (d: string) => (existsSync(d) ? readdirSync(d).filter(isEntryName) : []);
    const lines = () => readFileSync(record, "utf8").split("\n").filter(Boolean);

    let fed = 0;
    const sent: Array<{ name: string; sha: string }> = [];
    const feed = async (count: number) => {
      for (let i = 0; i < count; i++, fed++) {
        const branch = branches[fed]!.branch;
        const name = await queuePush(ws!.queuesDir, "router", "octo-org/shop", shaOfBranch.get(branch)!, branch);
        sent.push({ name, sha: shaOfBranch.get(branch)! });
      }
    };

    /**
     * The event that ends a round, checked synchronously on every change in the queue
     * directories and the record (so the kill lands while the state it describes holds),
     * with a poll as the safety net. Returns what the kill interrupted, or undefined.
     */
    const trigger = ({ kind, copies = 1 }: Round, burstWritten: () => boolean): (() => string | undefined) => {
      const seen = new Set<string>();
      const startLines = lines().filter((l) => l.startsWith("start ")).length;
      const endLines = lines().filter((l) => l.startsWith("end ")).length;
      // When the event a round waits for does not come (the router won every race), the round ends once its burst is consumed.
      const idle = () =>
        burstWritten() && names(routerDir).length === 0 && queueDirs.every((d) => names(d).length === 0) ? "idle: every queue empty" : undefined;
      switch (kind) {
        case "handover": {
          // Linked into a deployment queue, not yet removed from router/ (by this round's process: not left so by the last kill).
          const inBoth = () => {
            const inRouter = new Set(names(routerDir));
            return queueDirs.flatMap((d) => names(d).filter((n) => inRouter.has(n)).map((n) => `${d}/${n}`));
          };
          const left = new Set(inBoth());
          return () => {
            const both = inBoth().filter((n) => !left.has(n));
            return both.length >= copies ? `handover: ${both.length} copies in a deployment queue still in router/` : idle();
          };
        }
        case "consumed":
          // A deployment consumed its copy (final row, removed) while the entry is still in router/.
          return () => {
            const inRouter = new Set(names(routerDir));
            const gone: string[] = [];
            for (const d of queueDirs) {
              const now = new Set(names(d));
              for (const n of seen) if (n.startsWith(`${d}/`) && !now.has(n.slice(d.length + 1)) && inRouter.has(n.slice(d.length + 1))) gone.push(n);
              for (const n of now) seen.add(`${d}/${n}`);
            }
            return gone.length > 0 ? `consumed: ${gone.length} copies consumed while still in router/` : idle();
          };
        case "mid-build":
          return () => (lines().filter((l) => l.startsWith("start ")).length > startLines ? "mid-build: a build waiting on hold" : undefined);
        case "after-build":
          return () => (lines().filter((l) => l.startsWith("end ")).length > endLines ? "after-build: a build just ended" : idle());
      }
    };

    /** SIGKILLs `p` the moment `check` reports its event; resolves with what it said once `p` is gone. */
    const killWhen = async (p: Spawned, kind: Kind, check: () => string | undefined): Promise<string> => {
      let hit: string | undefined;
      const fire = () => {
        if (hit !== undefined) return;
        hit = check();
        if (hit !== undefined) p.child.kill("SIGKILL");
      };
      const watchers = [routerDir, ...queueDirs, dir!].filter((d) => existsSync(d)).map((d) => watch(d, fire));
      try {
        await waitUntil(
          () => {
            fire();
            if (hit === undefined && (p.child.exitCode !== null || p.child.signalCode !== null)) throw new Error(`workers exited on their own:\n${p.output()}`);
            return hit;
          },
          {
            what: `the kill point of a ${kind} round`,
            timeoutMs: 30_000,
            intervalMs: 10,
            describe: () =>
              `router/ ${names(routerDir).length}, ${queueDirs.map((d) => `${path.basename(d)} ${names(d).length}`).join(", ")}; ` +
              `record ends ${JSON.stringify(lines().slice(-3))}\n${p.output().slice(-4000)}`,
          },
        );
      } finally {
        for (const w of watchers) w.close();
      }
      const { signal } = await p.exited;
      expect(signal, p.output()).toBe("SIGKILL");
      return hit!;
    };

    const kills: string[] = [];
    let dropped = 0;
    const countDropped = (p: Spawned) => (dropped += p.output().split("dropped a second copy").length - 1);
    for (const round of ROUNDS) {
      const { kind, burst, backlog } = round;
      if (kind === "mid-build") await writeFile(hold, "");
      if (backlog) await feed(burst);
      let written = backlog;
      const check = trigger(round, () => written);
      workers = spawnDeployq(["workers"], env);
      const killed = killWhen(workers, kind, check);
      killed.catch(() => {}); // awaited below; a failure meanwhile must not count as unhandled
      if (!backlog) {
        // Arrivals while the workers run (the kill may come before the burst is all written).
        await Promise.race([workers.waitFor("deployq started", 30_000).catch(() => {}), workers.exited]);
        await feed(burst);
        written = true;
      }
      kills.push(`${kind}${backlog ? " (backlog)" : ""}: ${await killed}`);
      countDropped(workers);
      // A build the kill orphaned runs on (in its own process group) to its end line.
      await rm(hold, { force: true });
      await until("orphaned builds to end", async () => {
        const all = lines();
        return all.filter((l) => l.startsWith("start ")).length === all.filter((l) => l.startsWith("end ")).length;
      });
    }
    await feed(TAIL);
    expect(fed).toBe(total);

    // The last run, left alone: it drains what is queued and is stopped gracefully.
    workers = spawnDeployq(["workers"], env);
    const db = tdb.database.db;
    const select = () =>
      db
        .select({
          deployment: deploys.deployment,
          entry: deploys.entry,
          sha: deploys.sha,
          status: deploys.status,
          release: deploys.release,
          finishedUs: sql<string | null>`(extract(epoch from ${deploys.finishedAt}) * 1000000)::bigint::text`,
        })
        .from(deploys);
    await until(
      "every pair to have a final row and every queue to be empty",
      async () => {
        if (workers!.child.exitCode !== null || workers!.child.signalCode !== null) throw new Error(`workers exited:\n${workers!.output()}`);
        const finals = (await select()).filter((r) => FINAL.has(r.status));
        return finals.length >= sent.length * DEPLOYMENTS.length && names(routerDir).length === 0 && queueDirs.every((d) => names(d).length === 0);
      },
      60_000,
    );
    workers.child.kill("SIGTERM");
    expect((await workers.exited).signal, workers.output()).toBe("SIGTERM");
    countDropped(workers);

    // Exactly one final row per pair; every other row of a pair is a run its kill interrupted.
    const rows = await select();
    const byPair = new Map<string, typeof rows>();
    for (const r of rows) byPair.set(`${r.deployment} ${r.entry}`, [...(byPair.get(`${r.deployment} ${r.entry}`) ?? []), r]);
    const pairs = DEPLOYMENTS.flatMap((d) => sent.map((s) => ({ deployment: d, ...s, key: `${d} ${s.name}` })));
    expect([...byPair.keys()].sort()).toEqual(pairs.map((p) => p.key).sort());
    const twice = pairs.filter((p) => byPair.get(p.key)!.filter((r) => FINAL.has(r.status)).length !== 1);
    expect(twice.map((p) => `${p.key}: ${byPair.get(p.key)!.map((r) => r.status).join(", ")}`), "pairs without exactly one final row").toEqual([]);
    expect(rows.filter((r) => !FINAL.has(r.status) && r.status !== "interrupted"), "rows neither final nor interrupted").toEqual([]);
    expect(rows.filter((r) => r.status === "failed"), "failed deploys").toEqual([]);
    // A kill interrupts at most the deploy each deployment was running.
    expect(rows.filter((r) => r.status === "interrupted").length).toBeLessThanOrEqual(kills.length * DEPLOYMENTS.length);
    // What this test is for: some kills landed inside the hand-over (an entry in router/ and in a deployment queue at once).
    expect(kills.filter((k) => / (handover|consumed): /.test(k)), kills.join("\n")).not.toEqual([]);

    // The router's record: one row per entry, routed to both (a hand-over repeated after a kill updates it).
    const delivered = await db.select().from(deliveries);
    expect(delivered.map((r) => r.entry).sort()).toEqual(sent.map((s) => s.name).sort());
    for (const r of delivered) expect({ outcome: r.outcome, routedTo: r.routedTo }, r.entry!).toEqual({ outcome: "routed", routedTo: [...DEPLOYMENTS] });

    // No entry left anywhere: not in router/, the deployment queues, dead letters or .tmp/.
    for (const sub of ["router", ".tmp", ...DEPLOYMENTS.map((d) => `deployments/${d}`)]) expect(await readdir(path.join(ws.queuesDir, sub)), sub).toEqual([]);
    expect(await listFiles(path.join(ws.queuesDir, "dead-letter")), "dead letters").toEqual([]);

    // The record: no build of a pair starts after its turn ended, and a deploy that went
    // live (succeeded, or already-deployed after a redo) names a build that ran to its end.
    const runs = lines().map((l) => {
      const [what, deployment, sha, release, ns] = l.split(" ");
      return { what: what!, deployment: deployment!, sha: sha!, release: release!, us: BigInt(ns!) / 1000n };
    });
    const builds = runs.filter((r) => r.what === "start");
    const entryOfSha = new Map(sent.map((s) => [s.sha, s.name]));
    const late: string[] = [];
    for (const b of builds) {
      const name = entryOfSha.get(b.sha);
      expect(name, `a build of ${b.sha}, which no entry pushed`).toBeDefined();
      const final = byPair.get(`${b.deployment} ${name}`)!.find((r) => FINAL.has(r.status))!;
      if (b.us > BigInt(final.finishedUs!)) late.push(`${b.deployment} ${name} (${final.status}): build ${b.release} started ${b.us - BigInt(final.finishedUs!)} µs after`);
    }
    expect(late, "builds that started after their pair's turn ended").toEqual([]);
    for (const p of pairs) {
      const final = byPair.get(p.key)!.find((r) => FINAL.has(r.status))!;
      const mine = builds.filter((b) => b.deployment === p.deployment && b.sha === p.sha);
      expect(mine.length, `${p.key}: more builds than deploy rows`).toBeLessThanOrEqual(byPair.get(p.key)!.length);
      if (final.status === "succeeded" || final.status === "already-deployed") {
        expect(final.sha, p.key).toBe(p.sha);
        expect(runs.filter((r) => r.what === "end" && r.deployment === p.deployment && r.release === final.release), `${p.key}: the build of ${final.release}`).toHaveLength(1);
      }
    }

    // The newest entry is what each deployment serves: no old entry was deployed again after it.
    const newest = sent.at(-1)!;
    for (const d of DEPLOYMENTS) {
      const current = await readlink(path.join(ws.dir, "apps", d, "current"));
      expect(JSON.parse(await readFile(path.join(ws.dir, "apps", d, current, ".deployq-release.json"), "utf8")), d).toMatchObject({ sha: newest.sha, entry: newest.name });
    }

    const statuses = new Map<string, number>();
    for (const r of rows) statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
    console.info(
      `handover-kill: ${kills.length} kills, ${sent.length} entries, ${pairs.length} pairs, ${builds.length} builds, ${dropped} second copies dropped, ` +
        `rows ${JSON.stringify(Object.fromEntries(statuses))}, ${Date.now() - started} ms\n  ${kills.join("\n  ")}`,
    );
  });
});
