import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { type Server, createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Notifier, loadSettings, requireNotifyUrls } from "../config/load.ts";
import { Config } from "../config/schema.ts";
import { type NotifyPayload, renderNotification, sendNotification, signNotification } from "./notify.ts";

const payload: NotifyPayload = {
  notifier: "DEPLOYQ_NOTIFY_X",
  events: ["failure", "dead-letter"],
  deployment: "api",
  repository: "octo-org/api",
  entry: "1700000000000-x.json",
  sha: "a".repeat(40),
  deployId: 7,
  title: "api: deploy of aaaaaaa failed at its build",
  text: "x".repeat(5000),
  error: "build broke",
  url: "https://deploy.example.com/dashboard/deploys/7",
  at: "2026-12-03T09:00:00.000Z",
  failingSince: "2026-12-03T09:00:00.000Z",
  failures: 1,
};

describe("notification formats", () => {
  it("stay within Slack's and Discord's limits, and name the first event in X-Deployq-Event", () => {
    const slack = renderNotification({ format: "slack", secret: undefined }, payload, 3);
    const blocks = (JSON.parse(slack.body) as { blocks: Array<{ text?: { text: string } }> }).blocks;
    expect(blocks[0]!.text!.text.length).toBeLessThanOrEqual(3000);
    expect(slack.headers["x-deployq-event"]).toBe("failure");
    expect(slack.headers["x-deployq-delivery"]).toBe("3");
    expect(slack.headers["x-deployq-signature-256"]).toBeUndefined();
    const discord = JSON.parse(renderNotification({ format: "discord", secret: undefined }, payload, 3).body) as { embeds: Array<{ description: string }> };
    expect(discord.embeds[0]!.description.length).toBeLessThanOrEqual(4096);
  });

  it("signs json with HMAC-SHA256 over the exact body", () => {
    const r = renderNotification({ format: "json", secret: "k" }, payload, 9);
    expect(r.headers["x-deployq-signature-256"]).toBe(signNotification("k", r.body));
    expect(r.headers["x-deployq-signature-256"]).toMatch(/^sha256=[0-9a-f]{64}$/);
    expect(JSON.parse(r.body)).toMatchObject({ event: "failure", events: ["failure", "dead-letter"], delivery: 9, deployment: "api" });
  });
});

describe("sending a notification", () => {
  let server: Server;
  let base: string;
  beforeAll(async () => {
    server = createServer((req, res) => {
      req.resume();
      req.on("end", () => {
        const [, code, extra] = req.url!.split("/");
        if (code === "hang") return; // never answers
        const status = Number(code);
        const headers: Record<string, string> = {};
        if (status === 429 && extra) headers["retry-after"] = extra;
        if (status === 302) headers.location = "https://elsewhere.example.com/";
        res.writeHead(status, headers).end(status >= 400 ? "no_service\nmore" : "");
      });
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  });

  const notifier = (path: string): Notifier => ({ name: "DEPLOYQ_NOTIFY_X", url: `${base}${path}`, format: "json", events: new Set(["failure"]), deployments: undefined, secretEnv: "DEPLOYQ_NOTIFY_X_KEY", secret: "k" });
  const send = (path: string, timeoutMs = 2000) => sendNotification(notifier(path), { id: 1, payload: payload as unknown as Record<string, unknown> }, new AbortController().signal, timeoutMs);

  it("2xx is sent (Discord answers 204)", async () => {
    expect(await send("/200")).toEqual({ ok: true });
    expect(await send("/204")).toEqual({ ok: true });
  });

  it("429 waits for Retry-After; 5xx, 408, a timeout and a refused connection are retried", async () => {
    const limited = await send("/429/7");
    expect(limited).toMatchObject({ ok: false, kind: "rate-limited", status: 429 });
    const retryAt = (limited as { retryAt: number }).retryAt;
    expect(retryAt - Date.now()).toBeGreaterThan(5000);
    expect(retryAt - Date.now()).toBeLessThanOrEqual(7000);
    expect(await send("/503")).toMatchObject({ ok: false, kind: "transient", status: 503, message: 'it answered 503 "no_service"' });
    expect(await send("/408")).toMatchObject({ ok: false, kind: "transient" });
    expect(await send("/hang", 200)).toMatchObject({ ok: false, kind: "transient", message: "no answer within 200 ms" });
    const refused = await sendNotification({ ...notifier("/"), url: "http://127.0.0.1:9/" }, { id: 1, payload: payload as unknown as Record<string, unknown> }, new AbortController().signal, 2000);
    expect(refused).toMatchObject({ ok: false, kind: "transient" });
    expect((refused as { message: string }).message).toContain("could not reach it");
  });

  it("404, 410, 400 and a redirect are permanent, saying what to fix, and never quote the URL", async () => {
    for (const code of ["404", "410", "400", "302"]) {
      const r = await send(`/${code}`);
      expect(r, code).toMatchObject({ ok: false, kind: "permanent", status: Number(code) });
      expect((r as { message: string }).message).not.toContain(base);
    }
    expect(((await send("/404")) as { message: string }).message).toContain("check DEPLOYQ_NOTIFY_X");
    expect(((await send("/302")) as { message: string }).message).toContain("set DEPLOYQ_NOTIFY_X to the address it redirects to");
  });
});

describe("[[notify]] configuration", () => {
  const parse = (notify: unknown[]) => Config.safeParse({ notify });
  const messages = (notify: unknown[]) => {
    const r = parse(notify);
    return r.success ? [] : r.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`);
  };

  it("takes a notifier by the variable holding its URL, with the default events", () => {
    const r = parse([{ url_env: "DEPLOYQ_NOTIFY_SLACK", format: "slack" }]);
    expect(r.success && r.data.notify[0]!.events).toEqual(["failure", "recovered", "rollback", "dead-letter"]);
  });

  it("refuses what would go wrong, saying what to write instead", () => {
    expect(messages([{ url_env: "SLACK_URL", format: "slack" }]).join()).toContain("starting with DEPLOYQ_NOTIFY_");
    expect(messages([{ url_env: "DEPLOYQ_NOTIFY_A", format: "teams" }]).join()).toContain('must be "slack", "discord" or "json"');
    expect(messages([{ url_env: "DEPLOYQ_NOTIFY_A", format: "slack", events: ["deployed"] }]).join()).toContain("must be one of failure, recovered, rollback, dead-letter, success");
    expect(messages([{ url_env: "DEPLOYQ_NOTIFY_A", format: "slack", events: [] }]).join()).toContain("name at least one");
    expect(messages([{ url_env: "DEPLOYQ_NOTIFY_A", format: "json" }]).join()).toContain("set secret_env");
    expect(messages([{ url_env: "DEPLOYQ_NOTIFY_A", format: "slack", secret_env: "DEPLOYQ_NOTIFY_K" }]).join()).toContain("only a json notifier is signed");
    expect(messages([{ url_env: "DEPLOYQ_NOTIFY_A", format: "slack" }, { url_env: "DEPLOYQ_NOTIFY_A", format: "discord" }]).join()).toContain("the same url_env");
    expect(messages([{ url_env: "DEPLOYQ_NOTIFY_A", format: "slack", url: "https://hooks.slack.com/x" }]).join()).toContain('"url"');
  });
});

describe("[[notify]] settings", () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "deployq-notify-config-"));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });
  const load = async (notify: string, env: NodeJS.ProcessEnv) => {
    const file = path.join(dir, `${Math.random().toString(36).slice(2)}.toml`);
    await writeFile(file, `${notify}\n[deployments.api]\nrepository = "o/api"\nbranch = "main"\nremote = "/x.git"\npath = "./api"\n`);
    return loadSettings({ configPath: file, env });
  };

  it("read the URL and key from the environment, and check them at start", async () => {
    const settings = await load('[[notify]]\nurl_env = "DEPLOYQ_NOTIFY_OPS"\nformat = "json"\nsecret_env = "DEPLOYQ_NOTIFY_OPS_KEY"\ndeployments = ["api"]\n', { DEPLOYQ_NOTIFY_OPS: "https://ops.example.com/hook", DEPLOYQ_NOTIFY_OPS_KEY: "k" });
    expect(settings.notify).toEqual([{ name: "DEPLOYQ_NOTIFY_OPS", url: "https://ops.example.com/hook", format: "json", events: new Set(["failure", "recovered", "rollback", "dead-letter"]), deployments: new Set(["api"]), secretEnv: "DEPLOYQ_NOTIFY_OPS_KEY", secret: "k" }]);
    expect(() => requireNotifyUrls(settings)).not.toThrow();
    const unset = await load('[[notify]]\nurl_env = "DEPLOYQ_NOTIFY_OPS"\nformat = "slack"\n', {});
    expect(() => requireNotifyUrls(unset)).toThrow("DEPLOYQ_NOTIFY_OPS is not set");
  });

  it("refuse a notifier for a deployment the file does not have", async () => {
    await expect(load('[[notify]]\nurl_env = "DEPLOYQ_NOTIFY_OPS"\nformat = "slack"\ndeployments = ["apj"]\n', {})).rejects.toThrow('notify[0] (DEPLOYQ_NOTIFY_OPS) names "apj", which is not a deployment of this file');
  });
});
