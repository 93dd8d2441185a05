import { randomUUID, timingSafeEqual } from "node:crypto";
import { mkdir, mkdtemp, readFile, rename, rm, writeFile } from "node:fs/promises";
import { type IncomingHttpHeaders, type Server, createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { and, eq } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Daemon, startDaemon } from "../../src/daemon.ts";
import { deploys, githubOutbox } from "../../src/db/schema.ts";
import { ConfigError } from "../../src/errors.ts";
import { outboxRows } from "../../src/github/outbox.ts";
import { silentLogger } from "../../src/log.ts";
import { signNotification } from "../../src/notify/notify.ts";
import { collectStatus } from "../../src/status.ts";
import { entryName } from "../../src/queue/entry-name.ts";
import { queueLayout } from "../../src/queue/layout.ts";
import { writeEntryDurably } from "../../src/queue/write.ts";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import { type TestRepo, createRepo } from "../helpers/git.ts";
import { runDeployq } from "../helpers/processes.ts";
import { until } from "../helpers/wait.ts";
import { type Workspace, createWorkspace, followingDeployment, post, pushPayload, signedDelivery } from "../helpers/workspace.ts";

const KEY = "the json notifier's key";
const PUBLIC_URL = "https://deploy.example.com";

interface Received {
  path: string;
  headers: IncomingHttpHeaders;
  body: string;
  /** What the recorder answered. */
  status: number;
}

/** [[notify]] through a real daemon: a recording HTTP server stands for Slack, Discord and a JSON endpoint. */
describe("notifications", () => {
  let ws: Workspace;
  let tdb: TestDatabase;
  let daemon: Daemon;
  let repo: TestRepo;
  let dir: string;
  let recorder: Server;
  const received: Received[] = [];
  /** What each path answers now (default 200). */
  const answer = new Map<string, number>();

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "deployq-notify-"));
    repo = await createRepo(dir);
    recorder = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        const status = answer.get(req.url!) ?? 200;
        received.push({ path: req.url!, headers: req.headers, body: Buffer.concat(chunks).toString("utf8"), status });
        res.writeHead(status, { "content-type": "text/plain" }).end(status < 300 ? "ok" : "no_service");
      });
    });
    await new Promise<void>((resolve) => recorder.listen(0, "127.0.0.1", resolve));
    const base = `http://127.0.0.1:${(recorder.address() as AddressInfo).port}`;
    ws = await createWorkspace({
      topLevel: `
[[notify]]
url_env = "DEPLOYQ_NOTIFY_SLACK"
format = "slack"

[[notify]]
url_env = "DEPLOYQ_NOTIFY_DISCORD"
format = "discord"
events = ["failure", "recovered"]

[[notify]]
url_env = "DEPLOYQ_NOTIFY_HOOK"
format = "json"
events = ["failure", "recovered", "rollback", "dead-letter", "success"]
secret_env = "DEPLOYQ_NOTIFY_HOOK_KEY"
deployments = ["app"]
`,
      env: { DEPLOYQ_NOTIFY_SLACK: `${base}/slack`, DEPLOYQ_NOTIFY_DISCORD: `${base}/discord`, DEPLOYQ_NOTIFY_HOOK: `${base}/json`, DEPLOYQ_NOTIFY_HOOK_KEY: KEY },
      deployments: `public_url = "${PUBLIC_URL}"\n${followingDeployment("app", repo.bare, `commands = [["sh", "-c", "if [ -e FAIL ]; then echo 'build broke: <!channel> @everyone' >&2; exit 3; fi"]]\ncoalesce_ms = 0`)}`,
    });
    tdb = await createTestDatabase("postgres");
    daemon = await startDaemon({ settings: ws.settings, role: "serve", logger: silentLogger(), database: tdb.database });
  });
  afterAll(async () => {
    await daemon?.close();
    await tdb?.dispose();
    await new Promise((resolve) => recorder?.close(resolve));
    await ws?.dispose();
    await rm(dir, { recursive: true, force: true });
  });

  const push = async (sha: string) => {
    const res = await post(daemon.url!, await signedDelivery(pushPayload({ repository: "octo-org/app", after: sha })));
    expect(res.status).toBe(202);
    return res.body.queued as string;
  };
  const deployOf = async (entry: string, status: string) =>
    until(`${entry} ${status}`, async () => (await tdb.database.db.select().from(deploys).where(and(eq(deploys.entry, entry), eq(deploys.status, status))))[0]);
  /** Every notification written so far has been dealt with (sent or given up). */
  const allSent = () => until("every notification to be sent", async () => (await outboxRows(tdb.database.db)).filter((r) => r.kind === "notify").every((r) => r.result !== null));
  const taken = (p: string) => received.filter((r) => r.path === p && r.status < 300);
  const events = (p: string) => taken(p).map((r) => r.headers["x-deployq-event"]);
  const json = (r: Received) => JSON.parse(r.body) as Record<string, unknown>;

  it("a success, two failures, then a success: failure once, then recovered, to each notifier in its format, with the events it listens to", async () => {
    const v1 = await repo.commit({ "index.html": "v1" });
    await deployOf(await push(v1), "succeeded");
    const v2 = await repo.commit({ FAIL: "1" });
    await deployOf(await push(v2), "failed");
    const v3 = await repo.commit({ "index.html": "v3, still failing" });
    await deployOf(await push(v3), "failed");
    const v4 = await repo.commit({ FAIL: null });
    const fixed = await deployOf(await push(v4), "succeeded");
    await allSent();

    // Slack hears of failures, recoveries, rollbacks and dead letters (its default): the
    // second failure is only a dead letter, as it was failing already.
    expect(events("/slack")).toEqual(["failure", "dead-letter", "recovered"]);
    expect(events("/discord")).toEqual(["failure", "recovered"]);
    expect(events("/json")).toEqual(["success", "failure", "dead-letter", "recovered"]);

    // Slack: Block Kit, its markup escaped (the build's "<!channel>" pings nobody).
    const slackFailure = json(taken("/slack")[0]!) as { text: string; blocks: Array<{ type: string; text?: { type: string; text: string }; elements?: Array<{ text: string }> }> };
    expect(slackFailure.blocks[0]!.type).toBe("section");
    expect(slackFailure.blocks[0]!.text!.type).toBe("mrkdwn");
    expect(slackFailure.blocks[0]!.text!.text).toContain(`*app: deploy of ${v2.slice(0, 7)} failed at its build*`);
    expect(slackFailure.blocks[0]!.text!.text).toContain("&lt;!channel&gt;");
    expect(slackFailure.blocks[0]!.text!.text).not.toContain("<!channel>");
    expect(slackFailure.blocks[0]!.text!.text).toContain(`The previous release (${v1.slice(0, 7)}) is still serving.`);
    expect(slackFailure.blocks[1]!.elements![0]!.text).toContain(`octo-org/app@${v2.slice(0, 7)}`);
    expect(slackFailure.blocks[1]!.elements![0]!.text).toContain(`<${PUBLIC_URL}/dashboard/deploys/`);
    const slackRecovered = json(taken("/slack")[2]!) as { blocks: Array<{ text?: { text: string } }> };
    expect(slackRecovered.blocks[0]!.text!.text).toContain(`*app recovered: ${v4.slice(0, 7)} is live*`);
    expect(slackRecovered.blocks[0]!.text!.text).toContain("after 2 failed deploys since");

    // Discord: an embed, and no mention is ever parsed.
    const discord = json(taken("/discord")[0]!) as { allowed_mentions: { parse: unknown[] }; embeds: Array<{ title: string; description: string; color: number; url: string }> };
    expect(discord.allowed_mentions).toEqual({ parse: [] });
    expect(discord.embeds[0]!.title).toBe(`app: deploy of ${v2.slice(0, 7)} failed at its build`);
    expect(discord.embeds[0]!.description).toContain("build broke");
    expect(discord.embeds[0]!.url).toMatch(new RegExp(`^${PUBLIC_URL}/dashboard/deploys/\\d+$`));

    // json: signed over its exact bytes with the notifier's key, one delivery id each.
    for (const r of taken("/json")) {
      const signature = String(r.headers["x-deployq-signature-256"]);
      expect(timingSafeEqual(Buffer.from(signature), Buffer.from(signNotification(KEY, r.body)))).toBe(true);
      expect(signature).not.toBe(signNotification("another key", r.body));
    }
    const recovered = json(taken("/json")[3]!);
    expect(recovered).toMatchObject({ event: "recovered", events: ["recovered", "success"], deployment: "app", repository: "octo-org/app", sha: v4, deploy_id: fixed.id, url: `${PUBLIC_URL}/dashboard/deploys/${fixed.id}`, failures: 0 });
    expect(json(taken("/json")[1]!)).toMatchObject({ event: "failure", events: ["failure", "dead-letter"], sha: v2, failures: 1 });
    expect(String(json(taken("/json")[1]!).error)).toContain("build broke");
    const ids = taken("/json").map((r) => r.headers["x-deployq-delivery"]);
    expect(new Set(ids).size).toBe(ids.length);
    expect(ids.every((id) => String(json(taken("/json").find((r) => r.headers["x-deployq-delivery"] === id)!).delivery) === id)).toBe(true);
  });

  it("a rollback: rollback, to those who listen to it", async () => {
    const before = { slack: taken("/slack").length, json: taken("/json").length, discord: taken("/discord").length };
    const live = JSON.parse(await readFile(path.join(ws.dir, "apps", "app", "current", ".deployq-release.json"), "utf8")).sha as string;
    const layout = queueLayout(ws.queuesDir);
    const id = randomUUID();
    const name = entryName(id);
    await writeEntryDurably(layout, layout.deployment("app"), name, { event: "rollback", delivery_id: id, hook_id: "", received_at: new Date().toISOString(), payload: {} });
    await deployOf(name, "succeeded");
    await allSent();
    const to = JSON.parse(await readFile(path.join(ws.dir, "apps", "app", "current", ".deployq-release.json"), "utf8")).sha as string;
    expect(events("/slack").slice(before.slack)).toEqual(["rollback"]);
    expect(events("/json").slice(before.json)).toEqual(["rollback"]);
    expect(taken("/discord")).toHaveLength(before.discord);
    expect(json(taken("/json").at(-1)!)).toMatchObject({ event: "rollback", sha: to, title: `app: rolled back to ${to.slice(0, 7)}` });
    expect(String(json(taken("/json").at(-1)!).text)).toContain(`from ${live.slice(0, 7)}`);
  });

  it("a notifier that is down changes no deploy and holds up no other notifier; it gets each of its notifications once it is back, in order", async () => {
    const before = { slack: taken("/slack").length, json: taken("/json").length, discord: taken("/discord").length };
    answer.set("/discord", 503);
    const bad = await repo.commit({ FAIL: "1", "index.html": "down" });
    await deployOf(await push(bad), "failed");
    const good = await repo.commit({ FAIL: null, "index.html": "up" });
    await deployOf(await push(good), "succeeded");
    // The others were told meanwhile.
    await until("slack to hear of the failure and the recovery", async () => events("/slack").slice(before.slack).length === 2);
    expect(events("/slack").slice(before.slack)).toEqual(["failure", "recovered"]);
    await until("the json endpoint to hear of both", async () => events("/json").slice(before.json).length === 2);
    expect(events("/json").slice(before.json)).toEqual(["failure", "recovered"]);
    // Discord was asked, and refused: nothing is given up on a 503.
    await until("discord to be tried", async () => received.some((r) => r.path === "/discord" && r.status === 503));
    expect((await outboxRows(tdb.database.db)).filter((r) => r.kind === "notify" && r.key === "notify:DEPLOYQ_NOTIFY_DISCORD" && r.result === null).length).toBe(2);
    // deployq status shows the backlog and why.
    const shown = await until("status to show discord's refusal", async () => {
      const n = (await collectStatus(ws.settings, tdb.database.db)).notifications;
      return n?.lastError?.key === "notify:DEPLOYQ_NOTIFY_DISCORD" ? n : undefined;
    });
    expect(shown.backlog).toBe(2);
    expect(shown.lastError!.error).toContain("it answered 503");
    answer.delete("/discord");
    await allSent();
    expect((await collectStatus(ws.settings, tdb.database.db)).notifications!.backlog).toBe(0);
    expect(events("/discord").slice(before.discord)).toEqual(["failure", "recovered"]);
    const [failure, recovery] = taken("/discord").slice(before.discord).map(json) as Array<{ embeds: Array<{ title: string }> }>;
    expect(failure!.embeds[0]!.title).toBe(`app: deploy of ${bad.slice(0, 7)} failed at its build`);
    expect(recovery!.embeds[0]!.title).toBe(`app recovered: ${good.slice(0, 7)} is live`);
    // The refusal was counted on the row that was sent after it.
    const rows = (await outboxRows(tdb.database.db)).filter((r) => r.key === "notify:DEPLOYQ_NOTIFY_DISCORD");
    expect(rows.at(-2)!.attempts).toBeGreaterThan(1);
    expect(rows.at(-2)!.lastError).toContain("it answered 503");
  }, 120_000);

  it("an entry moved to dead-letter/ that no deploy ran: told to the notifiers of its queue (router/: those of every deployment)", async () => {
    const before = { slack: taken("/slack").length, json: taken("/json").length };
    const layout = queueLayout(ws.queuesDir);
    const put = async (dir: string, name: string) => {
      await mkdir(path.join(layout.root, ".tmp"), { recursive: true });
      const tmp = path.join(layout.root, ".tmp", name);
      await writeFile(tmp, "{ this is not json");
      await rename(tmp, path.join(dir, name));
    };
    const routerEntry = entryName(randomUUID());
    await put(layout.router, routerEntry);
    await until("the router's dead letter to reach slack", async () => taken("/slack").length > before.slack);
    const appEntry = entryName(randomUUID());
    await put(layout.deployment("app"), appEntry);
    await until("app's dead letter to reach slack and the json endpoint", async () => taken("/slack").length > before.slack + 1 && taken("/json").length > before.json);
    await allSent();
    const slack = taken("/slack").slice(before.slack).map(json) as Array<{ blocks: Array<{ text?: { text: string } }> }>;
    expect(events("/slack").slice(before.slack)).toEqual(["dead-letter", "dead-letter"]);
    expect(slack[0]!.blocks[0]!.text!.text).toContain(`*router: entry ${routerEntry} moved to dead-letter/*`);
    expect(slack[1]!.blocks[0]!.text!.text).toContain(`*app: entry ${appEntry} moved to dead-letter/*`);
    // The json notifier listens to app only: not to the router.
    expect(taken("/json").slice(before.json).map((r) => json(r).entry)).toEqual([appEntry]);
  });

  it("deployq check names each notifier and what it hears of, and fails one whose URL is not set, without calling any", async () => {
    const before = received.length;
    const env = { ...ws.env, DEPLOYQ_CONFIG: ws.configPath, DATABASE_URL: tdb.url };
    const good = await runDeployq(["check"], env);
    expect(good.stdout).toMatch(/^ok +notify +DEPLOYQ_NOTIFY_SLACK: slack, of failure, recovered, rollback, dead-letter for every deployment \(its URL is set; check does not call it\)$/m);
    expect(good.stdout).toMatch(/^ok +notify +DEPLOYQ_NOTIFY_HOOK: json, of failure, recovered, rollback, dead-letter, success for app/m);
    const bad = await runDeployq(["check"], { ...env, DEPLOYQ_NOTIFY_DISCORD: "" });
    expect(bad.code).toBe(1);
    expect(bad.stdout).toMatch(/^FAIL +notify +DEPLOYQ_NOTIFY_DISCORD is not set: export the notifier's URL/m);
    expect(received.length).toBe(before);
  });

  it("a notifier taken out of the configuration: what waited for it is given up at the next start, saying why", async () => {
    await tdb.database.db.insert(githubOutbox).values({ kind: "notify", key: "notify:DEPLOYQ_NOTIFY_GONE", collapsible: false, repository: "octo-org/app", sha: "", context: "deployq/app", state: "failure", description: "app: …", deployment: "app" });
    const waitingFor = async () => (await outboxRows(tdb.database.db)).filter((r) => r.key === "notify:DEPLOYQ_NOTIFY_GONE");
    expect((await waitingFor())[0]!.result).toBeNull();
    await daemon.close();
    daemon = await startDaemon({ settings: ws.settings, role: "serve", logger: silentLogger(), database: tdb.database });
    const [row] = await waitingFor();
    expect(row).toMatchObject({ result: "gave-up", lastError: "its notifier is no longer in the configuration ([[notify]] url_env)" });
    expect((await collectStatus(ws.settings, tdb.database.db)).notifications!.backlog).toBe(0);
    // The configured notifiers' rows are not touched.
    expect((await outboxRows(tdb.database.db)).filter((r) => r.kind === "notify" && r.result === "gave-up")).toHaveLength(1);
  });

  it("refuses to start the workers without a notifier's URL or key, naming the variable and not its value", async () => {
    const broken = await createWorkspace({
      topLevel: `[[notify]]\nurl_env = "DEPLOYQ_NOTIFY_OPS"\nformat = "json"\nsecret_env = "DEPLOYQ_NOTIFY_OPS_KEY"\n`,
      env: { DEPLOYQ_NOTIFY_OPS: "ftp://secret-value.example.com/x" },
      deployments: followingDeployment("app", "/nonexistent/app.git"),
    });
    try {
      const started = startDaemon({ settings: broken.settings, role: "workers", logger: silentLogger(), database: tdb.database });
      await expect(started).rejects.toBeInstanceOf(ConfigError);
      const message = await started.then(
        () => "",
        (err: Error) => err.message,
      );
      expect(message).toContain("DEPLOYQ_NOTIFY_OPS is not an http(s) URL");
      expect(message).toContain("DEPLOYQ_NOTIFY_OPS_KEY is not set");
      expect(message).not.toContain("secret-value");
    } finally {
      await broken.dispose();
    }
  });
});
