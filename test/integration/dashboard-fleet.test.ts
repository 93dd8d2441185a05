import { mkdir } from "node:fs/promises";
import path from "node:path";
import { eq } from "drizzle-orm";
import { type Browser, type Page, chromium } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Daemon, startDaemon } from "../../src/daemon.ts";
import { fleetHosts, rolloutHosts, rollouts } from "../../src/db/schema.ts";
import { silentLogger } from "../../src/log.ts";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import { type Workspace, createWorkspace } from "../helpers/workspace.ts";
import { FLEET_FIXTURE_DEPLOYMENTS } from "../helpers/fleet.ts";

const TOKEN = "fleet-dashboard-token-0123456789abcdef";
const SHOTS = path.resolve("test-output/dashboard");
const HOSTILE_ERROR = `<script>alert(1)</script>`;
const HOSTILE_REASON = `GET http://web2:8080/health answered 503 after 3 tries "><img src=x onerror=alert(2)>`;
const OLD_SHA = "a1".repeat(20);
const SUPERSEDED_SHA = "b2".repeat(20);
const HALTED_SHA = "c3d4e5f6a7".repeat(4);

/** The text of an HTML fragment, tags dropped and entities of the escaped kinds decoded. */
const textOf = (html: string) =>
  html
    .replace(/<[^>]+>/g, " ")
    .replace(/&lt;/g, "<")
    .replace(/&gt;/g, ">")
    .replace(/&quot;/g, '"')
    .replace(/&amp;/g, "&")
    .replace(/\s+/g, " ")
    .trim();

/** The rows (<tr>…</tr>) of the first table after `marker` in `html`, as text. */
function rowsAfter(html: string, marker: string): string[] {
  const from = html.indexOf(marker);
  expect(from, `${marker} in the page`).toBeGreaterThan(-1);
  const table = html.slice(from, html.indexOf("</table>", from));
  return [...table.matchAll(/<tr>([\s\S]*?)<\/tr>/g)].map((m) => textOf(m[1]!)).slice(1);
}

/**
 * The fleet on the dashboard: a receiver (it serves the dashboard; no workers, so nothing
 * moves the rows) on a real Postgres into which the test writes rollouts, their hosts' rows
 * and the hosts' check-ins, as the hosts of a fleet would.
 */
describe("the dashboard shows a fleet deployment's rollouts and hosts", () => {
  let ws: Workspace;
  let tdb: TestDatabase;
  let daemon: Daemon;
  let base: string;
  let cookie: string;
  let ids: { old: number; superseded: number; halted: number };
  const switchStart = new Date("2026-12-04T18:00:01.000Z");
  const switchEnd = new Date("2026-12-04T18:00:04.500Z");

  beforeAll(async () => {
    ws = await createWorkspace({
      topLevel: `host_name = "web1"`,
      deployments: FLEET_FIXTURE_DEPLOYMENTS,
      env: { DEPLOYQ_ADMIN_TOKEN: TOKEN },
    });
    tdb = await createTestDatabase("postgres");
    const db = tdb.database.db;
    const hosts = ["web1", "web2", "web3"];
    const row = { deployment: "app", ref: "refs/heads/main", parallel: 1, canary: "web1", onFailure: "halt", body: "{}", hosts };
    const ago = (minutes: number) => new Date(Date.now() - minutes * 60_000);
    const insert = async (values: typeof rollouts.$inferInsert) => (await db.insert(rollouts).values(values).returning({ id: rollouts.id }))[0]!.id;
    const old = await insert({ ...row, entry: "e1.json", sha: OLD_SHA, state: "succeeded", createdAt: ago(180), finishedAt: ago(178) });
    await db.insert(rolloutHosts).values(hosts.map((host) => ({ rolloutId: old, host, state: "succeeded", release: `20261204T150000.000Z-${OLD_SHA.slice(0, 7)}` })));
    const superseded = await insert({ ...row, entry: "e2.json", sha: SUPERSEDED_SHA, state: "running", createdAt: ago(120) });
    await db.insert(rolloutHosts).values([
      { rolloutId: superseded, host: "web1", state: "succeeded", release: `20261204T160000.000Z-${SUPERSEDED_SHA.slice(0, 7)}` },
      { rolloutId: superseded, host: "web2", state: "superseded" },
    ]);
    const halted = await insert({
      ...row,
      entry: "e3.json",
      sha: HALTED_SHA,
      state: "halted",
      failedHost: "web2",
      failedStep: "health-check",
      reason: HOSTILE_REASON,
      createdAt: ago(60),
      finishedAt: ago(58),
    });
    await db.update(rollouts).set({ state: "superseded", supersededBy: halted, finishedAt: ago(60) }).where(eq(rollouts.id, superseded));
    await db.insert(rolloutHosts).values([
      { rolloutId: halted, host: "web1", state: "succeeded", release: "20261204T180000.000Z-c3d4e5f", switchStartedAt: switchStart, switchEndedAt: switchEnd },
      { rolloutId: halted, host: "web2", state: "failed", release: "20261204T180005.000Z-c3d4e5f", step: "health-check", error: HOSTILE_ERROR, switchStartedAt: new Date("2026-12-04T18:00:05.000Z") },
      // web3: no row (the rollout halted before it was handed over).
    ]);
    await db.insert(fleetHosts).values([
      { host: "web1", pid: 101, lastSeen: ago(0.25) },
      { host: "web2", pid: 102, lastSeen: ago(12) },
    ]);
    ids = { old, superseded, halted };

    daemon = await startDaemon({ settings: ws.settings, role: "receiver", logger: silentLogger(), database: tdb.database });
    base = `${daemon.url!}/dashboard`;
    const res = await fetch(`${base}/login`, { method: "POST", body: new URLSearchParams({ token: TOKEN }), redirect: "manual" });
    expect(res.status).toBe(303);
    cookie = `deployq_session=${/deployq_session=([^;]+)/.exec(res.headers.get("set-cookie") ?? "")![1]}`;
  });
  afterAll(async () => {
    await daemon?.close();
    await tdb?.dispose();
    await ws?.dispose();
  });

  const html = async (url: string) => {
    const res = await fetch(url, { headers: { cookie } });
    expect(res.status).toBe(200);
    return res.text();
  };
  /** The overview's row of one deployment, as text. */
  const overviewRow = (page: string, deployment: string) => textOf(page.split("<tr>").find((r) => r.includes(`/deployments/${deployment}"`)) ?? "");

  it("the deployment page has a Fleet section: the newest rollout, where it failed and why, each host, and the last rollouts", async () => {
    const page = await html(`${base}/deployments/app`);
    const start = page.indexOf(`<section id="fleet"`);
    expect(start).toBeGreaterThan(-1);
    const section = page.slice(start, page.indexOf("</section>", start));
    const text = textOf(section);
    // The rest of the page is this host's.
    expect(textOf(page)).toContain("Current on web1: nothing deployed");
    expect(text).toContain(`Fleet Newest rollout #${ids.halted} halted`);
    expect(text).toContain(`Commit ${HALTED_SHA.slice(0, 7)} main`);
    expect(text).toContain("Rollout 3 hosts, 1 at a time, canary web1, on failure: halt");
    expect(text).toContain("Failed web2 failed at health-check");
    expect(text).toContain(`Reason ${HOSTILE_REASON}`);

    expect(rowsAfter(section, `class="fleet-hosts"`)).toEqual([
      expect.stringMatching(/^web1 \(this host\) succeeded 20261204T180000\.000Z-c3d4e5f 18:00:01 → 18:00:04 \(3\.5 s\) \d+s ago$/),
      expect.stringMatching(new RegExp(`^web2 failed health-check 20261204T180005\\.000Z-c3d4e5f 18:00:05 → not ended 12m ago ${HOSTILE_ERROR.replace(/[()]/g, "\\$&")}$`)),
      "web3 pending - - never",
    ]);

    const recent = rowsAfter(section, `class="rollouts"`);
    expect(recent).toEqual([
      expect.stringMatching(new RegExp(`^#${ids.halted} ${HALTED_SHA.slice(0, 7)} halted 1 pending 1 succeeded 1 failed web2 failed at health-check 1h 0m ago$`)),
      expect.stringMatching(new RegExp(`^#${ids.superseded} ${SUPERSEDED_SHA.slice(0, 7)} superseded 1 pending 1 succeeded 1 superseded superseded by #${ids.halted} 2h 0m ago$`)),
      expect.stringMatching(new RegExp(`^#${ids.old} ${OLD_SHA.slice(0, 7)} succeeded 3 succeeded 3h 0m ago$`)),
    ]);

    // Everything from the database is text: the hostile error and reason are escaped, once.
    expect(page).toContain("&lt;script>alert(1)&lt;/script>");
    expect(page).toContain("&quot;>&lt;img src=x onerror=alert(2)>");
    expect(page).not.toContain(HOSTILE_ERROR);
    expect(page).not.toContain("<img");
  });

  it("a fleet deployment before its first rollout lists its configured hosts", async () => {
    const section = (await html(`${base}/deployments/shop`)).split(`<section id="fleet"`)[1]!.split("</section>")[0]!;
    expect(textOf(section)).toContain("No rollout yet: the first push to this deployment makes one.");
    expect(rowsAfter(section, `class="fleet-hosts"`)).toEqual(["s1 - - - never", "s2 - - - never"]);
    expect(section).not.toContain(`class="rollouts"`);
  });

  it("a deployment without hosts has no Fleet section", async () => {
    const page = await html(`${base}/deployments/plain`);
    expect(page).toContain("<h1>plain</h1>");
    expect(textOf(page)).toContain("Current: nothing deployed");
    expect(page).not.toContain(`id="fleet"`);
    expect(page).not.toContain("Fleet");
    expect(page).not.toContain("rollout");
  });

  it("the overview shows each fleet deployment's newest rollout and how many of its hosts are live on it", async () => {
    const page = await html(`${base}/`);
    expect(overviewRow(page, "app")).toContain(`fleet: rollout #${ids.halted} halted 1/3 hosts live`);
    expect(page).toContain(`href="/dashboard/deployments/app#fleet"`);
    expect(overviewRow(page, "shop")).toContain("fleet: no rollout yet, 2 hosts");
    const plain = overviewRow(page, "plain");
    expect(plain).toMatch(/^plain octo-org\/plain · main nothing deployed/);
    expect(plain).not.toContain("fleet");
  });

  describe("in a browser", () => {
    let browser: Browser;
    let page: Page;
    const dialogs: string[] = [];
    const shot = (name: string) => page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });

    beforeAll(async () => {
      await mkdir(SHOTS, { recursive: true });
      browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: ["--no-sandbox"] });
      const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
      page = await context.newPage();
      page.on("dialog", (d) => {
        dialogs.push(d.message());
        void d.dismiss();
      });
      await page.goto(`${base}/login`);
      await page.fill("input[name=token]", TOKEN);
      await page.click("button[type=submit]");
      await page.waitForURL(`${base}/`);
    });
    afterAll(async () => {
      await browser?.close();
    });

    it("shows the fleet deployment's page: the halted rollout, the failed host and its error as text", async () => {
      await page.goto(`${base}/deployments/app`);
      const fleet = page.locator("section#fleet");
      await expect(fleet.locator("h2").textContent()).resolves.toBe("Fleet");
      await expect(fleet.locator("dl.facts dd").first().innerText()).resolves.toBe(`#${ids.halted} halted`);
      await expect(fleet.locator("dl.facts dd.bad").innerText()).resolves.toBe("web2 failed at health-check");
      await expect(fleet.locator("dl.facts pre.error").innerText()).resolves.toBe(HOSTILE_REASON);
      const rows = fleet.locator("table.fleet-hosts tbody tr");
      await expect(rows.count()).resolves.toBe(3);
      const cells = async (i: number) => (await rows.nth(i).locator("td").allInnerTexts()).map((t) => t.trim());
      expect(await cells(0)).toEqual(["web1 (this host)", "succeeded", "20261204T180000.000Z-c3d4e5f", "18:00:01 → 18:00:04 (3.5 s)", expect.stringMatching(/^\d+s ago$/), ""]);
      expect(await cells(1)).toEqual(["web2", "failed health-check", "20261204T180005.000Z-c3d4e5f", "18:00:05 → not ended", "12m ago", HOSTILE_ERROR]);
      expect(await cells(2)).toEqual(["web3", "pending", "-", "-", "never", ""]);
      // The badges are coloured by state.
      await expect(rows.nth(0).locator(".badge").getAttribute("class")).resolves.toBe("badge ok");
      await expect(rows.nth(1).locator(".badge").getAttribute("class")).resolves.toBe("badge bad");
      await expect(rows.nth(2).locator(".badge").getAttribute("class")).resolves.toBe("badge muted");
      await expect(fleet.locator("table.rollouts tbody tr").count()).resolves.toBe(3);
      await expect(fleet.locator("table.rollouts tbody tr").first().locator("td").nth(3).innerText()).resolves.toBe("1 pending 1 succeeded 1 failed");
      expect(await page.locator("main script, main img").count()).toBe(0);
      expect(dialogs).toEqual([]);
      await shot("fleet-deployment");
      await fleet.screenshot({ path: path.join(SHOTS, "fleet-section.png") });
    });

    it("shows the overview: the fleet deployments' rollouts and live hosts; the plain one as before", async () => {
      await page.goto(`${base}/`);
      const app = page.locator("tbody tr", { has: page.locator(`a[href="/dashboard/deployments/app"]`) });
      await expect(app.locator(".fleet-summary").innerText()).resolves.toBe(`fleet: rollout #${ids.halted} halted 1/3 hosts live`);
      const shop = page.locator("tbody tr", { has: page.locator(`a[href="/dashboard/deployments/shop"]`) });
      await expect(shop.locator(".fleet-summary").innerText()).resolves.toBe("fleet: no rollout yet, 2 hosts");
      const plain = page.locator("tbody tr", { has: page.locator(`a[href="/dashboard/deployments/plain"]`) });
      await expect(plain.locator(".fleet-summary").count()).resolves.toBe(0);
      await shot("fleet-overview");

      // The rollout's link goes to the Fleet section.
      await app.locator(".fleet-summary a").click();
      await page.waitForURL(`${base}/deployments/app#fleet`);
      expect(dialogs).toEqual([]);
    });
  });
});
