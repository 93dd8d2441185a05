import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { hostname, tmpdir } from "node:os";
import path from "node:path";
import { type Browser, type BrowserContext, type Page, chromium } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Daemon, startDaemon } from "../../src/daemon.ts";
import { asc } from "drizzle-orm";
import { recentDeploys } from "../../src/db/queries/deploys.ts";
import { adminActions } from "../../src/db/schema.ts";
import type { StampedEvent } from "../../src/events/types.ts";
import { CONTENT_SECURITY_POLICY } from "../../src/http/dashboard/app.ts";
import { Writable } from "node:stream";
import { pino } from "pino";
import { queueLayout } from "../../src/queue/layout.ts";
import { scanQueue } from "../../src/queue/scan.ts";
import { collectStatus } from "../../src/status.ts";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import { type TestRepo, createRepo } from "../helpers/git.ts";
import { until } from "../helpers/wait.ts";
import { type Workspace, createWorkspace, followingDeployment, post, pushPayload, signedDelivery } from "../helpers/workspace.ts";

const TOKEN = "dashboard-test-token-0123456789abcdef";
const PREFIX = "/ops/dashboard";
const SHOTS = path.resolve("test-output/dashboard");
const XSS = [`<script>alert(1)</script>`, `"><img src=x onerror=alert(1)>`];

/**
 * The dashboard in a real browser (Debian's chromium through playwright-core), against a
 * daemon (`serve`) deploying from a local bare repository into a real Postgres.
 */
describe("the dashboard in a browser", () => {
  let ws: Workspace;
  let tdb: TestDatabase;
  let daemon: Daemon;
  let repo: TestRepo;
  let reposDir: string;
  let browser: Browser;
  let context: BrowserContext;
  let page: Page;
  let base: string;
  const seen: StampedEvent[] = [];
  const dialogs: string[] = [];
  const foreignRequests: string[] = [];
  let gate: string;
  /** The daemon's log, as JSON lines. */
  const logLines: Array<Record<string, unknown>> = [];
  const logger = pino(
    { level: "info" },
    new Writable({
      write(chunk, _encoding, callback) {
        for (const line of String(chunk).split("\n").filter(Boolean)) logLines.push(JSON.parse(line) as Record<string, unknown>);
        callback();
      },
    }),
  );

  beforeAll(async () => {
    reposDir = await mkdtemp(path.join(tmpdir(), "deployq-repos-"));
    gate = path.join(reposDir, "gate");
    repo = await createRepo(reposDir);
    // (Split words, so that the log's copy of the command line does not contain what the output is checked for.)
    // The build prints NOTE (a hostile string in some commits), and waits for the test's gate file when the commit has WAIT.
    const build = `if [ -e FAIL ]; then echo failing >&2; exit 3; fi; cat NOTE 2>/dev/null; echo; if [ -e WAIT ]; then echo "wai""ting"; while [ ! -e ${gate} ]; do sleep 0.05; done; echo "re""leased"; while [ ! -e ${gate}-2 ]; do sleep 0.05; done; fi; if [ -e HOLD ]; then echo "hol""ding"; while [ ! -e ${gate}-hold ]; do sleep 0.05; done; fi; echo built`;
    ws = await createWorkspace({
      deployments: followingDeployment("app", repo.bare, `commands = [["sh", "-c", ${JSON.stringify(build)}]]`),
      topLevel: `[dashboard]\npath = "${PREFIX}"\n`,
      env: { DEPLOYQ_ADMIN_TOKEN: TOKEN },
    });
    tdb = await createTestDatabase("postgres");
    daemon = await startDaemon({ settings: ws.settings, role: "serve", logger, database: tdb.database });
    daemon.events.on((e) => seen.push(e));
    base = `${daemon.url!}${PREFIX}`;
    await mkdir(SHOTS, { recursive: true });
    browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: ["--no-sandbox"] });
    context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    page = await context.newPage();
    page.on("dialog", (d) => {
      dialogs.push(d.message());
      void d.dismiss();
    });
    context.on("request", (r) => {
      if (!r.url().startsWith(`${base}/`)) foreignRequests.push(r.url());
    });
  });
  afterAll(async () => {
    await browser?.close();
    await daemon?.close();
    await tdb?.dispose();
    await ws?.dispose();
    await rm(reposDir, { recursive: true, force: true });
  });

  const finished = (entry: string, after = 0) =>
    until(`the deploy of ${entry} to finish`, async () => seen.slice(after).find((e) => e.kind === "deploy" && e.name === "finished" && e.entry === entry));
  const push = async (files: Record<string, string | null>, message?: string) => {
    const sha = await repo.commit(files, { message });
    const res = await post(daemon.url!, await signedDelivery(pushPayload({ repository: "octo-org/app", after: sha })));
    expect(res.status).toBe(202);
    return { sha, entry: res.body.queued as string };
  };
  const shot = (name: string) => page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });

  it("sends to the login page, refuses a wrong token, and logs in with the right one", async () => {
    const res = await page.goto(`${base}/`);
    expect(page.url()).toBe(`${base}/login`);
    expect(res!.headers()["content-security-policy"]).toBe(CONTENT_SECURITY_POLICY);
    expect(res!.headers()["x-content-type-options"]).toBe("nosniff");
    expect(res!.headers()["referrer-policy"]).toBe("no-referrer");
    await shot("login");

    await page.fill("input[name=token]", "wrong");
    const refused = await Promise.all([page.waitForResponse((r) => r.url() === `${base}/login` && r.request().method() === "POST"), page.click("button[type=submit]")]);
    expect(refused[0].status()).toBe(401);
    await expect(page.locator(".flash.error").textContent()).resolves.toContain("Wrong token");

    await page.fill("input[name=token]", TOKEN);
    await page.click("button[type=submit]");
    await page.waitForURL(`${base}/`);
    const cookie = (await context.cookies()).find((c) => c.name === "deployq_session")!;
    expect(cookie).toMatchObject({ httpOnly: true, sameSite: "Strict", path: PREFIX });
    await expect(page.locator("h1").first().textContent()).resolves.toBe("Deployments");
  });

  it("deploys a push, and the overview shows it without a reload; its deploy page shows the steps and the log", async () => {
    await page.goto(`${base}/`);
    await expect(page.locator("tbody tr").first().textContent()).resolves.toContain("nothing deployed");
    const { sha, entry } = await push({ "index.html": "v1", NOTE: XSS.join(" ") }, `release ${XSS.join(" ")}`);
    await finished(entry);
    // The page's own script re-reads it (every 5 s): the new release appears in place.
    await page.locator(`code.sha[title="${sha}"]`).first().waitFor({ timeout: 20_000 });
    await expect(page.locator("tbody tr").first().textContent()).resolves.toContain("succeeded");
    await shot("overview");

    await page.click("a:has-text('app')");
    await page.waitForURL(`${base}/deployments/app`);
    await expect(page.locator("svg.chart rect.bar").count()).resolves.toBe(1);
    await shot("deployment");

    await page.click("table a:has-text('#')");
    await page.waitForURL(/\/deploys\/\d+$/);
    const steps = await page.locator("table.steps tbody tr td:nth-child(2)").allTextContents();
    expect(steps).toEqual(["fetch", "checkout", "build", "switch", "prune"]);
    const log = await page.locator("pre#log").textContent();
    expect(log).toContain(`== build`);
    // The hostile NOTE the build printed is in the log, as text.
    expect(log).toContain(XSS.join(" "));
    expect(await page.locator("pre#log img, pre#log script").count()).toBe(0);
    await shot("deploy");
  });

  it("shows a hostile branch name, reason and ref as text, and runs nothing", async () => {
    const ref = `refs/heads/${XSS[0]}${XSS[1]}`;
    const voided = await post(daemon.url!, await signedDelivery({ ...pushPayload({ repository: "octo-org/app", after: "b".repeat(40) }), ref }));
    expect(voided.status).toBe(200);
    await page.goto(`${base}/`);
    const row = page.locator("tbody tr", { hasText: "voided" }).first();
    await expect(row.textContent()).resolves.toContain(`${XSS[0]}${XSS[1]}`);
    expect(await page.locator("main img, main script").count()).toBe(0);

    // A hostile ref typed into the deploy form comes back in the refusal, as text.
    await page.goto(`${base}/deployments/app`);
    await page.fill("input[name=ref]", XSS[1]!);
    await page.click("button:has-text('Deploy')");
    await page.waitForURL(`${base}/deployments/app`);
    await expect(page.locator(".flash.error").textContent()).resolves.toContain(XSS[1]);
    expect(await page.locator("main img, main script").count()).toBe(0);
    await shot("hostile");
    expect(dialogs).toEqual([]);
    expect(foreignRequests).toEqual([]);
  });

  it("requeues a dead letter from the queues page", async () => {
    const failing = await push({ FAIL: "1", NOTE: null });
    await finished(failing.entry);
    const layout = queueLayout(ws.settings.queuesDir);
    await until("the entry in dead-letter/app", async () => (await scanQueue(layout.deadLetter("app"))).includes(failing.entry));
    await page.goto(`${base}/queues`);
    await expect(page.locator("section", { hasText: "dead-letter/app" }).textContent()).resolves.toContain("failing");
    await shot("queues");

    const before = seen.length;
    await page.locator("section", { hasText: "dead-letter/app" }).locator("button:has-text('Requeue')").last().click();
    await page.waitForURL(`${base}/queues`);
    await expect(page.locator(".flash.ok").textContent()).resolves.toContain(`requeued 1 entry into app: ${failing.entry}`);
    // It ran again (and failed again: the build still fails).
    await finished(failing.entry, before);
    const rows = (await recentDeploys(tdb.database.db, "app", 10)).filter((r) => r.entry === failing.entry);
    expect(rows.map((r) => r.status)).toEqual(["failed", "failed"]);
  });

  it("rolls back from the deployment page", async () => {
    const v3 = await push({ FAIL: null, "index.html": "v3" });
    await finished(v3.entry);
    const first = (await recentDeploys(tdb.database.db, "app", 50)).at(-1)!;
    expect((await collectStatus(ws.settings, tdb.database.db, "app")).deployments[0]!.current.sha).toBe(v3.sha);

    await page.goto(`${base}/deployments/app`);
    const before = seen.length;
    await page.click("button:has-text('Roll back to the previous good release')");
    await page.waitForURL(`${base}/deployments/app`);
    const flash = await page.locator(".flash.ok").textContent();
    expect(flash).toMatch(/^queued rollback to the previous good release for app \(entry .+\.json\)$/);
    const entry = /\(entry (.+\.json)\)/.exec(flash!)![1]!;
    await expect(finished(entry, before)).resolves.toMatchObject({ outcome: "succeeded" });
    expect((await collectStatus(ws.settings, tdb.database.db, "app")).deployments[0]!.current.sha).toBe(first.sha);
    // Recorded with its time and origin.
    expect(logLines.find((l) => l.origin === "dashboard" && l.action === "rollback")).toMatchObject({ deployment: "app", time: expect.any(Number), msg: `dashboard: ${flash}` });
    await page.goto(`${base}/deployments/app`);
    await expect(page.locator("tr", { has: page.locator(".badge", { hasText: "current" }) }).textContent()).resolves.toContain(first.sha!.slice(0, 7));
    // And in admin_actions, shown on the page: the rollback, and the refused deploy of the hostile ref before it.
    const actions = await tdb.database.db.select().from(adminActions).orderBy(asc(adminActions.id));
    expect(actions.map((a) => [a.origin, a.action, a.deployment, a.ok])).toEqual([
      ["dashboard", "deploy", "app", false],
      ["dashboard", "requeue", "app", true],
      ["dashboard", "rollback", "app", true],
    ]);
    expect(actions[0]!.details).toEqual({ ref: XSS[1], force: false });
    await expect(page.locator("table.actions-log tbody tr").first().textContent()).resolves.toContain(flash);
    await shot("rolled-back");
  });

  it("shows a running deploy's log as it grows, without a reload", async () => {
    await rm(gate, { force: true });
    await rm(`${gate}-2`, { force: true });
    const before = seen.length;
    const slow = await push({ WAIT: "1", "index.html": "v4" });
    const started = await until("the slow deploy to start", async () => seen.slice(before).find((e) => e.kind === "deploy" && e.name === "started" && e.entry === slow.entry));
    const id = (started as { deployId: number }).deployId;
    // The build has printed "waiting" and blocks on the gate.
    await until("the build to wait", async () => {
      const row = (await recentDeploys(tdb.database.db, "app", 1))[0];
      return row?.logPath ? readFile(row.logPath, "utf8").then((t) => t.includes("waiting")) : false;
    });
    // The overview shows what runs now, and its step.
    await page.goto(`${base}/`);
    const now = await page.locator("tbody tr").first().locator("td").nth(3).textContent();
    expect(now).toMatch(/^running build/);
    // Its last deploy is the last one that finished (the rollback), not the running one.
    await expect(page.locator("tbody tr").first().locator("td").nth(2).textContent()).resolves.toMatch(/^succeeded/);
    // Its lock, held by this process (serve runs the workers), in-process: no TTL.
    const lock = await page.locator("tbody tr").first().locator("td").nth(4).textContent();
    expect(lock).toContain(`pid ${process.pid} on ${hostname()}`);
    expect(lock).toContain("in-process: no TTL");
    await shot("overview-running");

    await page.goto(`${base}/deploys/${id}`);
    await expect(page.locator("pre#log").textContent()).resolves.toContain("waiting");
    expect(await page.locator("pre#log").textContent()).not.toContain("released");
    await writeFile(gate, "");
    // Appended by the page's EventSource: the build still waits (for the second gate), so no reload could have shown it.
    await page.locator("pre#log", { hasText: "released" }).waitFor({ timeout: 20_000 });
    expect(seen.slice(before).some((e) => e.kind === "deploy" && e.name === "finished" && e.entry === slow.entry)).toBe(false);
    await writeFile(`${gate}-2`, "");
    // Once the deploy is over, the page reloads itself with its final steps and outcome.
    await finished(slow.entry, before);
    await page.locator("h1 .badge", { hasText: "succeeded" }).waitFor({ timeout: 20_000 });
    expect(await page.locator("table.steps tbody tr").count()).toBe(5);
    await shot("live-log");

    // A reconnecting EventSource sends the last id it saw (the byte offset of the last line it
    // got): the stream goes on with the line after it, never that one again.
    const row = (await recentDeploys(tdb.database.db, "app", 1))[0]!;
    const whole = await readFile(row.logPath!);
    const offset = whole.indexOf("released");
    const next = whole.indexOf("\n", offset) + 1;
    const resumed = await page.request.get(`${base}/deploys/${id}/log/stream`, { headers: { "last-event-id": String(offset) } });
    expect(resumed.headers()["content-type"]).toMatch(/^text\/event-stream/);
    const body = await resumed.text();
    const data = body
      .split("\n")
      .filter((l) => l.startsWith("data: "))
      .map((l) => l.slice(6));
    expect(data).not.toContain("released");
    expect(data[0]).toBe(whole.subarray(next, whole.indexOf("\n", next)).toString());
    expect(body).not.toContain(`id: ${offset}\n`);
    expect(body).toContain(`id: ${next}\n`);
    expect(body).toContain("event: end\n");
  });

  it("deploys a ref from the deployment page, saying it is not the branch head", async () => {
    const first = (await recentDeploys(tdb.database.db, "app", 50)).at(-1)!;
    await page.goto(`${base}/deployments/app`);
    await page.fill("input[name=ref]", first.sha!);
    const before = seen.length;
    await page.click("button:has-text('Deploy')");
    await page.waitForURL(`${base}/deployments/app`);
    const flash = (await page.locator(".flash.ok").textContent())!;
    expect(flash).toMatch(new RegExp(`^queued deploy ${first.sha} for app \\(entry .+\\.json\\); note: ${first.sha} is not the head of main`));
    const entry = /\(entry (.+?\.json)\)/.exec(flash)![1]!;
    await expect(finished(entry, before)).resolves.toMatchObject({ outcome: "succeeded", sha: first.sha });
    // Logged at info (the hostile ref earlier was logged as refused, at warn).
    expect(logLines.filter((l) => l.origin === "dashboard" && l.action === "deploy").map((l) => [l.level, l.ref])).toEqual([
      [40, XSS[1]],
      [30, first.sha],
    ]);
  });

  it("refuses a POST without the CSRF token (403), and one with another session's", async () => {
    const none = await page.request.post(`${base}/deployments/app/rollback`, { form: {}, maxRedirects: 0 });
    expect(none.status()).toBe(403);
    expect(none.headers()["content-security-policy"]).toBe(CONTENT_SECURITY_POLICY);
    const wrong = await page.request.post(`${base}/queues/dead-letter/app/flush`, { form: { _csrf: "x".repeat(43), confirm: "yes" }, maxRedirects: 0 });
    expect(wrong.status()).toBe(403);
    // Nothing was flushed.
    expect((await scanQueue(queueLayout(ws.settings.queuesDir).deadLetter("app"))).length).toBe(1);
    // Without a session at all: not even looked at.
    const anonymous = await fetch(`${base}/deployments/app/rollback`, { method: "POST", redirect: "manual" });
    expect(anonymous.status).toBe(401);
  });

  it("flushes dead letters from the queues page, only when confirmed", async () => {
    const dead = queueLayout(ws.settings.queuesDir).deadLetter("app");
    await page.goto(`${base}/queues`);
    const section = page.locator("section", { hasText: "dead-letter/app" });
    // Unticked, the server refuses too (the browser's `required` aside).
    const csrf = await section.locator("input[name=_csrf]").first().inputValue();
    const unconfirmed = await page.request.post(`${base}/queues/dead-letter/app/flush`, { form: { _csrf: csrf, back: "queues" }, maxRedirects: 0 });
    expect(unconfirmed.status()).toBe(303);
    expect(await scanQueue(dead)).toHaveLength(1);

    await page.goto(`${base}/queues`);
    await section.locator("input[name=confirm]").check();
    await section.locator("button:has-text('Flush')").click();
    await page.waitForURL(`${base}/queues`);
    await expect(page.locator(".flash.ok").textContent()).resolves.toBe("deleted 1 entry from dead-letter/app");
    expect(await scanQueue(dead)).toEqual([]);
    expect(logLines.find((l) => l.origin === "dashboard" && l.action === "flush")).toMatchObject({ queue: "dead-letter/app" });
  });

  it("pauses and resumes a deployment, and cancels a running deploy, from the deployment page", async () => {
    // Paused with a hostile reason: a push waits, and the reason is shown as text.
    const before = seen.length;
    await page.goto(`${base}/deployments/app`);
    await page.fill("input[name=reason]", XSS.join(" "));
    await page.fill("input[name=for]", "2h");
    await page.click("button:has-text('Pause')");
    await page.waitForURL(`${base}/deployments/app`);
    await expect(page.locator(".flash.ok").textContent()).resolves.toMatch(/^paused app until \S+: its entries wait/);
    await expect(page.locator(".actions").textContent()).resolves.toContain(`Paused by dashboard at`);
    await expect(page.locator(".actions").textContent()).resolves.toContain(XSS.join(" "));
    expect(await page.locator("main img, main script").count()).toBe(0);
    // The worker tells the pause once it sees it (it does not even read its queue while paused).
    await until("the worker to tell the pause", async () => seen.slice(before).find((e) => e.kind === "deploy" && e.name === "paused"));
    const held = await push({ "index.html": "v5", HOLD: "1", WAIT: null });
    await until("the push queued for app", async () => seen.slice(before).find((e) => e.kind === "deploy" && e.name === "queued" && e.entry === held.entry));
    await shot("paused");

    // Resumed: it deploys, and holds in its build; cancelled from the page, the previous release stays.
    const live = (await collectStatus(ws.settings, tdb.database.db, "app")).deployments[0]!.current.sha;
    await page.click("button:has-text('Resume')");
    await page.waitForURL(`${base}/deployments/app`);
    await expect(page.locator(".flash.ok").textContent()).resolves.toBe("resumed app: its newest waiting entry deploys now");
    await until("the held build", async () => seen.slice(before).find((e) => e.kind === "deploy" && e.name === "step-started" && e.step === "build" && e.entry === held.entry));
    // It waited: its deploy started only after the worker saw the resume.
    const at = (name: string) => seen.findIndex((e, i) => i >= before && e.kind === "deploy" && e.name === name && (name === "resumed" || e.entry === held.entry));
    expect(at("resumed")).toBeGreaterThan(-1);
    expect(at("started")).toBeGreaterThan(at("resumed"));
    await page.goto(`${base}/deployments/app`);
    await page.click("button:has-text('Cancel deploy')");
    await page.waitForURL(`${base}/deployments/app`);
    await expect(page.locator(".flash.ok").textContent()).resolves.toMatch(/^asked deploy #\d+ of app to stop/);
    await expect(finished(held.entry, before)).resolves.toMatchObject({ outcome: "cancelled" });
    expect((await collectStatus(ws.settings, tdb.database.db, "app")).deployments[0]!.current.sha).toBe(live);
    const actions = await tdb.database.db.select().from(adminActions).orderBy(asc(adminActions.id));
    expect(actions.slice(-3).map((a) => [a.action, a.ok])).toEqual([
      ["pause", true],
      ["resume", true],
      ["cancel", true],
    ]);
    await shot("cancelled");
  });

  it("works without JavaScript: log in, see the overview, log out", async () => {
    const plain = await browser.newContext({ javaScriptEnabled: false });
    try {
      const p = await plain.newPage();
      await p.goto(`${base}/`);
      await p.fill("input[name=token]", TOKEN);
      await p.click("button[type=submit]");
      await p.waitForURL(`${base}/`);
      await expect(p.locator("tbody tr").first().textContent()).resolves.toContain("app");
      // Logging out ends the session on the server: its cookie is worth nothing after.
      const cookie = (await plain.cookies()).find((c) => c.name === "deployq_session")!.value;
      await p.click("button:has-text('Log out')");
      await p.waitForURL(`${base}/login`);
      const after = await fetch(`${base}/`, { headers: { cookie: `deployq_session=${cookie}` }, redirect: "manual" });
      expect(after.status).toBe(303);
      expect(after.headers.get("location")).toBe(`${PREFIX}/login`);
    } finally {
      await plain.close();
    }
  });

  // Last: it locks this address out of logging in for a minute.
  it("rate-limits failed logins: 429 after 5 wrong tokens, even for the right one", async () => {
    const attempt = (token: string) => fetch(`${base}/login`, { method: "POST", body: new URLSearchParams({ token }), redirect: "manual" });
    // One wrong login was made by the first test.
    for (let i = 0; i < 4; i++) expect((await attempt(`wrong-${i}`)).status).toBe(401);
    const limited = await attempt("wrong-again");
    expect(limited.status).toBe(429);
    expect(Number(limited.headers.get("retry-after"))).toBeGreaterThan(0);
    expect((await attempt(TOKEN)).status).toBe(429);
    expect(dialogs).toEqual([]);
    expect(foreignRequests).toEqual([]);
  });
});
