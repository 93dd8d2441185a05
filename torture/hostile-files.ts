import { execFile } from "node:child_process";
import { randomUUID } from "node:crypto";
import { chmod, chown, link, lstat, mkdir, mkdtemp, open, readFile, readlink, rename, rm, stat, symlink, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { and, eq, inArray } from "drizzle-orm";
import { FINAL_STATUSES } from "../src/db/queries/deploys.ts";
import { deliveries, deploys } from "../src/db/schema.ts";
import { entryName } from "../src/queue/entry-name.ts";
import { serializeEntry } from "../src/queue/entry.ts";
import { MAX_ENTRY_BYTES } from "../src/queue/read.ts";
import { createTestDatabase } from "../test/helpers/db.ts";
import { createRepo } from "../test/helpers/git.ts";
import { DEPLOYQ_BIN, REPO_ROOT, type Spawned, spawnTracked } from "../test/helpers/processes.ts";
import { until } from "../test/helpers/wait.ts";
import { createWorkspace, followingDeployment, pushPayload } from "../test/helpers/workspace.ts";
import { killIfRunning } from "./ledger.ts";
import { createRng } from "./rng.ts";
import { type Scenario, must } from "./scenario.ts";

const run = promisify(execFile);

/** Two users, as on a server: the daemon's, and another that may write into its queues (a post-receive hook's `git`). */
const DEPLOYQ = { uid: 64_212, gid: 64_212 };
const OTHER = { uid: 64_211, gid: 64_211 };
/** What the outside files hold: it must never reach a log line, an error file or the database. */
const SECRET = "root:x:0:0:hostile-files-secret";

type Kind =
  | "valid"
  | "other-user"
  | "unreadable"
  | "link-to-secret"
  | "link-to-entry"
  | "dangling-link"
  | "fifo"
  | "directory"
  | "other-user-directory"
  | "truncated"
  | "huge"
  | "hard-link-to-secret"
  | "not-an-entry"
  | "stray";
const KINDS: Kind[] = ["valid", "other-user", "unreadable", "link-to-secret", "link-to-entry", "dangling-link", "fifo", "directory", "other-user-directory", "truncated", "huge", "hard-link-to-secret", "not-an-entry", "stray"];

/** How each kind that is not an entry must be described in its dead-letter reason (never by its content). */
/** The log lines that refuse `name`: a file that is not an entry and cannot be moved aside. */
const refusals = (log: string, name: string) => log.split("\n").filter((l) => l.includes(name) && l.includes("cannot be moved to dead-letter/")).length;

const REASON: Partial<Record<Kind, RegExp>> = {
  unreadable: /unreadable by deployq's user \(permission denied\)/,
  "link-to-secret": /a symbolic link, not an entry/,
  "link-to-entry": /a symbolic link, not an entry/,
  "dangling-link": /a symbolic link, not an entry/,
  fifo: /a (socket or )?FIFO, not an entry/,
  directory: /a directory, not an entry/,
  truncated: /not valid JSON \(\d+ bytes/,
  huge: new RegExp(`\\d+ bytes, more than an entry may hold \\(${MAX_ENTRY_BYTES}\\)`),
  "hard-link-to-secret": /not valid JSON \(\d+ bytes/,
  "not-an-entry": /not a deployq entry: /,
};

interface Planted {
  kind: Kind;
  queue: "router" | "app";
  name: string;
  deliveryId: string;
}

export interface HostileFilesOptions {
  seed: number;
  rounds: number;
  /** How long a round's files may take to be handled before it counts as held up (default 120 s). */
  roundTimeoutMs?: number;
  log?: (line: string) => void;
}

export interface HostileFilesResult {
  seed: number;
  rounds: number;
  planted: number;
  /** Per kind, how many were planted. */
  kinds: Partial<Record<Kind, number>>;
  /** Valid entries (the daemon's user's or another user's) not routed, or never deployed. */
  lost: number;
  /** Files that are not entries not moved to dead-letter/ with their reason, or moved without it. */
  notMovedAside: number;
  /** Links followed, outside files changed, or anything of their content quoted. */
  leaked: number;
  /** Stray files (names that are not entries) moved or changed. */
  strayTouched: number;
  /** Whether the workers process was still running at the end (a FIFO or a huge file blocks or kills nothing). */
  workersAlive: boolean;
  seconds: number;
  problems: string[];
}

/**
 * Files that are not entries, planted at random among valid ones in router/ and in a
 * deployment's queue, while `deployq workers` runs as a user of its own (not root: root
 * reads anything and may hard-link anything, which would hide half of the cases): symbolic
 * links (to a secret outside the queue root, to a valid entry outside it, dangling), FIFOs,
 * directories, truncated entries, entries larger than an entry may hold, a hard link to the
 * secret, JSON that is not an entry, another user's entry it may read (a post-receive hook's)
 * and one it may not, and strays whose names are not entry names. Invariants: every valid
 * entry is routed and deployed; every hostile one is moved to dead-letter/ with a reason in
 * deployq's words, a link as a link (never followed), without holding up the entries
 * behind it; strays are left alone; nothing of an outside file is quoted, changed or read
 * through a link; the workers process is still running.
 */
export async function hostileFiles(options: HostileFilesOptions): Promise<HostileFilesResult> {
  const started = Date.now();
  const rng = createRng(options.seed);
  const log = options.log ?? (() => {});
  const work = await mkdtemp(path.join(tmpdir(), "deployq-torture-hostile-"));
  await chmod(work, 0o755);
  const repo = await createRepo(work);
  const sha = await repo.commit({ "index.html": "v1" });
  const tdb = await createTestDatabase("postgres");
  const ws = await createWorkspace({ deployments: followingDeployment("app", repo.bare, `commands = [["true"]]\nkeep_deploys = 1000000`), env: { DATABASE_URL: tdb.url! } });
  const outside = path.join(work, "outside");
  await mkdir(outside, { mode: 0o755 });
  const secretFile = path.join(outside, "secret");
  await writeFile(secretFile, `${SECRET}\n`, { mode: 0o644 });
  const home = path.join(work, "home");
  await mkdir(path.join(work, "tmp"), { mode: 0o1777 });
  await chmod(path.join(work, "tmp"), 0o1777);
  await mkdir(home);
  // The daemon's user fetches from root's repository.
  await writeFile(path.join(home, ".gitconfig"), "[safe]\n\tdirectory = *\n");
  const queues = ws.queuesDir;
  const dirOf = (q: Planted["queue"]) => (q === "router" ? path.join(queues, "router") : path.join(queues, "deployments", "app"));
  // As README says: the queue root the daemon's, .tmp/ and router/ group-writable and setgid for the other user.
  await run("chown", ["-R", `${DEPLOYQ.uid}:${DEPLOYQ.gid}`, ws.dir, home]);
  await run("install", ["-d", "-o", String(DEPLOYQ.uid), "-g", String(DEPLOYQ.gid), "-m", "0750", queues]);
  await run("install", ["-d", "-o", String(DEPLOYQ.uid), "-g", String(DEPLOYQ.gid), "-m", "2770", path.join(queues, ".tmp"), dirOf("router"), path.join(queues, "deployments"), dirOf("app")]);
  const planted: Planted[] = [];
  const strays = new Map<string, string>(); // path → content
  const outsideEntries: string[] = [];
  let workers: Spawned | undefined;
  const problems: string[] = [];

  const validEntry = (name: string, deliveryId: string) =>
    serializeEntry({ event: "push", delivery_id: deliveryId, hook_id: "", received_at: new Date().toISOString(), payload: pushPayload({ repository: "octo-org/app", branch: "main", after: sha }) });
  /** Written beside the queue and renamed in whole, as the receiver or a hook would; `owner` its owner and mode. */
  const place = async (dir: string, name: string, text: string | Buffer, owner: { uid: number; gid: number; mode: number } = { ...DEPLOYQ, mode: 0o640 }) => {
    const staged = path.join(work, `staged-${name}`);
    await writeFile(staged, text, { mode: owner.mode });
    await chown(staged, owner.uid, owner.gid);
    await chmod(staged, owner.mode);
    await rename(staged, path.join(dir, name));
  };
  const plant = async (kind: Kind, queue: Planted["queue"]) => {
    const deliveryId = randomUUID();
    const name = entryName(deliveryId);
    const dir = dirOf(queue);
    const file = path.join(dir, name);
    switch (kind) {
      case "valid":
        await place(dir, name, validEntry(name, deliveryId));
        break;
      case "other-user": // a post-receive hook's: the other user's, readable by deployq's group, not linkable by it
        await place(dir, name, validEntry(name, deliveryId), { uid: OTHER.uid, gid: DEPLOYQ.gid, mode: 0o640 });
        break;
      case "unreadable":
        await place(dir, name, validEntry(name, deliveryId), { ...OTHER, mode: 0o600 });
        break;
      case "link-to-secret":
        await symlink(secretFile, file);
        break;
      case "link-to-entry": {
        const target = path.join(outside, name);
        await writeFile(target, validEntry(name, deliveryId), { mode: 0o644 });
        outsideEntries.push(target);
        await symlink(target, file);
        break;
      }
      case "dangling-link":
        await symlink(path.join(outside, `gone-${name}`), file);
        break;
      case "fifo":
        await run("mkfifo", [file]);
        break;
      case "directory":
        await mkdir(file, { mode: 0o755 });
        await chown(file, DEPLOYQ.uid, DEPLOYQ.gid);
        break;
      case "other-user-directory": // moving a directory needs write on it (its ".."): this one cannot be moved, only refused
        await mkdir(file, { mode: 0o755 });
        await chown(file, OTHER.uid, OTHER.gid);
        break;
      case "truncated": {
        const text = validEntry(name, deliveryId);
        await place(dir, name, text.slice(0, rng.int(1, text.length - 2)));
        // Settled (it does not look like a file still being copied in), so it is moved aside on the first pass.
        await utimes(file, new Date(Date.now() - 60_000), new Date(Date.now() - 60_000));
        break;
      }
      case "huge": {
        // Sparse: larger than an entry may hold, without writing it.
        await place(dir, name, '{"event":"push",');
        const fh = await open(file, "r+");
        await fh.truncate(MAX_ENTRY_BYTES + rng.int(1, 4096));
        await fh.close();
        break;
      }
      case "hard-link-to-secret":
        await link(secretFile, file);
        break;
      case "not-an-entry":
        await place(dir, name, JSON.stringify({ hello: "world", delivery_id: deliveryId }));
        break;
      case "stray": {
        const strayName = rng.pick([`notes-${deliveryId}.txt`, `.${name}`, `${name}~`, `${name}.swp`, `${name.slice(0, -5)}.JSON.bak`]);
        const content = `an admin's file ${deliveryId}\n`;
        await place(dir, strayName, content);
        strays.set(path.join(dir, strayName), content);
        break;
      }
    }
    planted.push({ kind, queue, name, deliveryId });
  };

  try {
    const [file, args] = [
      "setpriv",
      [`--reuid=${DEPLOYQ.uid}`, `--regid=${DEPLOYQ.gid}`, "--clear-groups", "--", process.execPath, DEPLOYQ_BIN, "--config", ws.configPath, "workers"],
    ];
    workers = spawnTracked(file, args, { ...ws.env, HOME: home, TMPDIR: path.join(work, "tmp"), GIT_CONFIG_NOSYSTEM: "1", DEPLOYQ_LOG_LEVEL: "info", DEPLOYQ_LOG_FORMAT: "json" }, REPO_ROOT);
    const db = tdb.database.db;
    const handled = async (p: Planted): Promise<boolean> => {
      if (p.kind === "stray") return true;
      const dead = path.join(queues, "dead-letter", p.queue, p.name);
      if (p.kind === "valid" || p.kind === "other-user") {
        const final = await db
          .select({ status: deploys.status })
          .from(deploys)
          .where(and(eq(deploys.deployment, "app"), eq(deploys.entry, p.name), inArray(deploys.status, [...FINAL_STATUSES])));
        return final.length > 0;
      }
      if (p.kind === "other-user-directory") return refusals(workers!.output(), p.name) > 0;
      return (await lstat(dead).catch(() => undefined)) !== undefined && (await lstat(path.join(dirOf(p.queue), p.name)).catch(() => undefined)) === undefined;
    };
    for (let round = 1; round <= options.rounds; round++) {
      // The first round plants one of each kind, so that even a short run meets them all.
      const kindsThisRound = round === 1 ? KINDS : Array.from({ length: rng.int(4, 16) }, () => rng.pick(KINDS));
      for (const kind of kindsThisRound) {
        // Another user's readable entry belongs in router/ (where a hook writes); a deployment's queue is the daemon's own.
        const queue = kind === "other-user" || rng.int(0, 2) > 0 ? "router" : "app";
        await plant(kind, queue);
      }
      const pending = () => Promise.all(planted.map(async (p) => ((await handled(p)) ? undefined : p))).then((ps) => ps.filter((p) => p !== undefined));
      await until(`round ${round}: every planted file handled`, async () => (await pending()).length === 0 || workers!.child.exitCode !== null, options.roundTimeoutMs ?? 120_000, 100).catch(async () => {
        problems.push(`round ${round}: not handled within ${(options.roundTimeoutMs ?? 120_000) / 1000} s: ${(await pending()).map((p) => `${p.kind} ${p.queue}/${p.name}`).join(", ")}; the log ends:\n${workers!.output().slice(-2000)}`);
      });
      if (workers.child.exitCode !== null) break;
      if (round % 5 === 0 || round === options.rounds) log(`  round ${round}/${options.rounds}: ${planted.length} planted`);
    }
    const workersAlive = workers.child.exitCode === null && workers.child.signalCode === null;
    if (!workersAlive) problems.push(`deployq workers exited (${workers.child.exitCode ?? workers.child.signalCode}):\n${workers.output().slice(-3000)}`);
    workers.child.kill("SIGTERM");
    await workers.exited;
    const output = workers.output();
    workers = undefined;

    let lost = 0;
    let notMovedAside = 0;
    let leaked = 0;
    let strayTouched = 0;
    const rowOf = new Map((await tdb.database.db.select().from(deliveries)).map((r) => [r.deliveryId, r]));
    for (const p of planted) {
      if (p.kind === "stray") continue;
      const where = `${p.kind} ${p.queue}/${p.name}`;
      if (p.kind === "valid" || p.kind === "other-user") {
        if (p.queue === "router" && rowOf.get(p.deliveryId)?.outcome !== "routed") {
          lost++;
          problems.push(`lost: ${where} was not routed (row ${rowOf.get(p.deliveryId)?.outcome ?? "missing"})`);
        } else if (!(await handled(p))) {
          lost++;
          problems.push(`lost: ${where} has no final deploy row`);
        }
        continue;
      }
      if (p.kind === "other-user-directory") {
        // Refused: left where it is, said once (not once per pass), and nothing behind it held up (the valid entries' checks above).
        const said = refusals(output, p.name);
        if (said !== 1 || !(await lstat(path.join(dirOf(p.queue), p.name)).catch(() => undefined))?.isDirectory()) {
          notMovedAside++;
          problems.push(`${where}: expected left in place and refused in one log line, got ${said} lines`);
        }
        continue;
      }
      const dead = path.join(queues, "dead-letter", p.queue, p.name);
      const moved = await lstat(dead).catch(() => undefined);
      if (!moved || (await lstat(path.join(dirOf(p.queue), p.name)).catch(() => undefined))) {
        notMovedAside++;
        problems.push(`not moved aside: ${where}`);
        continue;
      }
      // Its reason: beside it (.error) or, for JSON, inside it.
      const reason = p.kind === "not-an-entry" ? String((JSON.parse(await readFile(dead, "utf8")) as { last_error?: unknown }).last_error ?? "") : await readFile(`${dead}.error`, "utf8").catch(() => "");
      if (!REASON[p.kind]!.test(reason)) {
        notMovedAside++;
        problems.push(`${where}: its reason is ${JSON.stringify(reason.slice(0, 200))}, not ${REASON[p.kind]}`);
      }
      if (reason.includes(SECRET)) {
        leaked++;
        problems.push(`${where}: its reason quotes the outside file`);
      }
      if (p.kind.endsWith("link") || p.kind === "link-to-secret" || p.kind === "link-to-entry") {
        if (!moved.isSymbolicLink()) {
          leaked++;
          problems.push(`${where}: what is in dead-letter/ is not the link itself (it was followed)`);
        } else if (p.kind !== "dangling-link" && !(await readlink(dead)).startsWith(outside)) {
          leaked++;
          problems.push(`${where}: the link was changed`);
        }
      }
      if (p.kind === "link-to-entry" && rowOf.get(p.deliveryId)?.outcome === "routed") {
        leaked++;
        problems.push(`${where}: the outside entry was routed through the link`);
      }
    }
    for (const [file, content] of strays) {
      if ((await readFile(file, "utf8").catch(() => undefined)) !== content) {
        strayTouched++;
        problems.push(`stray ${path.relative(queues, file)} was moved or changed`);
      }
    }
    if ((await readFile(secretFile, "utf8")) !== `${SECRET}\n`) {
      leaked++;
      problems.push("the outside secret was changed");
    }
    for (const target of outsideEntries) {
      if (!(await stat(target).catch(() => undefined))?.isFile()) {
        leaked++;
        problems.push(`the outside entry ${target} was moved or removed`);
      }
    }
    const recorded = JSON.stringify(await tdb.database.db.select().from(deliveries));
    for (const [what, text] of [
      ["the log", output],
      ["the deliveries table", recorded],
    ] as const) {
      if (text.includes(SECRET)) {
        leaked++;
        problems.push(`${what} quotes the outside file`);
      }
    }
    // Each one moved aside has its log line, by name.
    const unlogged = planted.filter((p) => REASON[p.kind] && !output.includes(p.name));
    if (unlogged.length > 0) problems.push(`no log line names ${unlogged.length} of the files moved aside (${unlogged.slice(0, 3).map((p) => p.name).join(", ")})`);
    const kinds: Partial<Record<Kind, number>> = {};
    for (const p of planted) kinds[p.kind] = (kinds[p.kind] ?? 0) + 1;
    return {
      seed: rng.seed,
      rounds: options.rounds,
      planted: planted.length,
      kinds,
      lost,
      notMovedAside,
      leaked,
      strayTouched,
      workersAlive,
      seconds: Math.round((Date.now() - started) / 1000),
      problems: [...problems.slice(0, 20), ...(problems.length > 20 ? [`… and ${problems.length - 20} more`] : [])],
    };
  } finally {
    if (workers) await killIfRunning(workers);
    await tdb.dispose();
    await ws.dispose();
    await rm(work, { recursive: true, force: true });
  }
}

export const hostileFilesScenario: Scenario = {
  name: "hostile-files",
  title: "hostile files among the entries, under a daemon that is not root",
  unit: "rounds",
  count: 40,
  async run(seed, rounds) {
    const r = await hostileFiles({ seed, rounds, log: (l) => console.log(l) });
    const other = r.planted - (r.kinds.valid ?? 0) - (r.kinds["other-user"] ?? 0) - (r.kinds.stray ?? 0) - (r.kinds["other-user-directory"] ?? 0);
    return {
      header: ["rounds", "files planted", "valid (of them another user's)", "hostile, moved aside", "unmovable, refused", "strays", "lost", "not moved aside", "followed, changed or quoted", "strays touched", "workers still running", "seconds"],
      row: [r.rounds, r.planted, `${(r.kinds.valid ?? 0) + (r.kinds["other-user"] ?? 0)} (${r.kinds["other-user"] ?? 0})`, other, r.kinds["other-user-directory"] ?? 0, r.kinds.stray ?? 0, must(r.lost), must(r.notMovedAside), must(r.leaked), must(r.strayTouched), r.workersAlive ? "yes" : "**no**", r.seconds],
      problems: r.problems,
    };
  },
};
