import { type IncomingHttpHeaders, type Server, createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { verifySignature } from "../../src/http/signature.ts";
import { type FakeGithub, type FakeHook, startFakeGithub } from "../helpers/fake-github.ts";
import { runDeployq } from "../helpers/processes.ts";
import { until } from "../helpers/wait.ts";
import { SECRET, type Workspace, createWorkspace, followingDeployment } from "../helpers/workspace.ts";

/** `deployq github hook install|list|ping|remove` against a fake GitHub, through the real CLI. */
describe("deployq github hook", () => {
  let fake: FakeGithub;
  let ws: Workspace;
  let noUrl: Workspace;
  /** Stands for deployq's receiver at public_url: records what GitHub posts to it. */
  let receiver: Server;
  const received: Array<{ headers: IncomingHttpHeaders; body: Buffer }> = [];
  let publicUrl: string;
  let foreign: FakeHook;

  beforeAll(async () => {
    fake = await startFakeGithub();
    receiver = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        received.push({ headers: req.headers, body: Buffer.concat(chunks) });
        res.writeHead(200, { "content-type": "application/json" }).end('{"ok":true}');
      });
    });
    await new Promise<void>((resolve) => receiver.listen(0, "127.0.0.1", resolve));
    publicUrl = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}`;
    const deployments = followingDeployment("app", "/nonexistent/app.git") + followingDeployment("web", "/nonexistent/web.git");
    ws = await createWorkspace({ deployments: `public_url = "${publicUrl}"\n${deployments}`, env: { GITHUB_TOKEN: fake.token, GITHUB_API_URL: fake.url } });
    noUrl = await createWorkspace({ deployments, env: { GITHUB_TOKEN: fake.token, GITHUB_API_URL: fake.url } });
    // Someone else's webhook on the same repository: deployq never touches it.
    foreign = fake.addHook("octo-org/app", { url: "http://127.0.0.1:9/ci", secret: "theirs", events: ["push", "pull_request"] });
  });
  afterAll(async () => {
    await fake?.close();
    await new Promise((resolve) => receiver?.close(resolve));
    await ws?.dispose();
    await noUrl?.dispose();
  });

  const cli = (args: string[], env: NodeJS.ProcessEnv = {}, workspace = ws) => runDeployq(["github", "hook", ...args], { ...workspace.env, DEPLOYQ_CONFIG: workspace.configPath, ...env });
  const ours = () => fake.hooks.filter((h) => h.url === `${publicUrl}/github-webhook`);

  it("install creates one webhook posting to public_url + /github-webhook, json, signed with GITHUB_WEBHOOK_SECRET, for push; GitHub's ping arrives signed", async () => {
    const run = await cli(["install", "app"]);
    expect(run.code, run.stderr).toBe(0);
    const [hook, ...more] = ours();
    expect(more).toHaveLength(0);
    expect(hook).toMatchObject({ repository: "octo-org/app", url: `${publicUrl}/github-webhook`, contentType: "json", secret: SECRET, events: ["push"], active: true });
    expect(run.stdout).toContain(`created webhook ${hook!.id} on octo-org/app: ${publicUrl}/github-webhook, content type json, events push`);
    expect(fake.requests.some((r) => r.method === "POST" && r.path === "/repos/octo-org/app/hooks" && r.authorization === `token ${fake.token}`)).toBe(true);
    // GitHub pings a new hook; the ping is signed with the secret install set.
    await fake.settled();
    const ping = await until("the ping", async () => received.find((r) => r.headers["x-github-event"] === "ping"));
    expect(ping.headers["x-github-hook-id"]).toBe(String(hook!.id));
    expect(verifySignature([SECRET], ping.body, ping.headers["x-hub-signature-256"] as string)).toBe(true);
  });

  it("install again updates the same webhook (found by its URL), putting back what was changed, and creates none", async () => {
    const [hook] = ours();
    hook!.events = ["issues"];
    hook!.secret = "changed-by-hand";
    hook!.contentType = "form";
    const creates = fake.requests.filter((r) => r.method === "POST" && r.path === "/repos/octo-org/app/hooks").length;
    const run = await cli(["install", "app", "--json"]);
    expect(run.code, run.stderr).toBe(0);
    expect(JSON.parse(run.stdout)).toMatchObject({ action: "updated", repository: "octo-org/app", hook: { id: hook!.id, events: ["push"], contentType: "json" }, duplicates: [] });
    expect(ours()).toHaveLength(1);
    expect(ours()[0]).toMatchObject({ id: hook!.id, secret: SECRET, events: ["push"], contentType: "json" });
    expect(fake.requests.filter((r) => r.method === "POST" && r.path === "/repos/octo-org/app/hooks")).toHaveLength(creates);
    expect(fake.requests.some((r) => r.method === "PATCH" && r.path === `/repos/octo-org/app/hooks/${hook!.id}`)).toBe(true);
    expect(foreign).toMatchObject({ url: "http://127.0.0.1:9/ci", secret: "theirs", events: ["push", "pull_request"] });
  });

  it("list shows every webhook of the repository, marking deployq's", async () => {
    const [hook] = ours();
    const text = await cli(["list", "app"]);
    expect(text.code, text.stderr).toBe(0);
    const lines = text.stdout.trimEnd().split("\n");
    expect(lines[0]).toMatch(/^\s+ID\s+URL\s+EVENTS\s+ACTIVE\s+LAST RESPONSE$/);
    expect(lines.find((l) => l.includes(String(hook!.id)))).toMatch(new RegExp(`^\\*\\s+${hook!.id}\\s+${publicUrl.replace(/[.]/g, "\\.")}/github-webhook\\s+push\\s+yes\\s+200`));
    expect(lines.find((l) => l.includes(String(foreign.id)))).toMatch(new RegExp(`^\\s+${foreign.id}\\s+http://127\\.0\\.0\\.1:9/ci\\s+push,pull_request\\s+yes`));
    const json = await cli(["list", "app", "--json"]);
    const listed = JSON.parse(json.stdout) as Array<{ id: number; deployq: boolean; url: string }>;
    expect(listed.map((h) => [h.id, h.deployq]).sort()).toEqual([[hook!.id, true], [foreign.id, false]].sort());
    const empty = await cli(["list", "web"]);
    expect(empty.stdout).toBe("octo-org/web has no webhooks: `deployq github hook install web` creates deployq's\n");
  });

  it("ping makes GitHub send deployq's webhook a ping", async () => {
    const [hook] = ours();
    const before = received.filter((r) => r.headers["x-github-event"] === "ping").length;
    const run = await cli(["ping", "app"]);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toContain(`pinged webhook ${hook!.id} on octo-org/app`);
    await fake.settled();
    expect(received.filter((r) => r.headers["x-github-event"] === "ping")).toHaveLength(before + 1);
    expect(fake.requests.filter((r) => r.path.endsWith("/pings")).map((r) => r.path)).toEqual([`/repos/octo-org/app/hooks/${hook!.id}/pings`]);
    const none = await cli(["ping", "web"]);
    expect(none.code).toBe(2);
    expect(none.stderr).toContain(`no webhook of octo-org/web posts to ${publicUrl}/github-webhook: \`deployq github hook install web\` creates it`);
  });

  it("remove deletes deployq's webhook only; a second remove has nothing to do", async () => {
    const [hook] = ours();
    const run = await cli(["remove", "app"]);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toContain(`removed webhook ${hook!.id} from octo-org/app`);
    expect(ours()).toHaveLength(0);
    expect(fake.hooks).toEqual([foreign]);
    const again = await cli(["remove", "app"]);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toBe(`no webhook of octo-org/app posts to ${publicUrl}/github-webhook: nothing removed\n`);
  });

  it("deployq --help lists the commands", async () => {
    const help = await runDeployq(["--help"], {});
    expect(help.stdout).toMatch(/github\s+GitHub: github hook install\|list\|ping\|remove\s+<deployment>/);
    const sub = await runDeployq(["github", "hook", "--help"], {});
    for (const command of ["install", "list", "ping", "remove"]) expect(sub.stdout).toMatch(new RegExp(`^  ${command} \\[options\\] <deployment>`, "m"));
  });

  it("refuses, saying what to do, without asking GitHub: no GITHUB_TOKEN, no public_url, no secret, an unknown deployment", async () => {
    const asked = fake.requests.length;
    const noToken = await cli(["install", "app"], { GITHUB_TOKEN: "" });
    expect(noToken.code).toBe(2);
    expect(noToken.stderr).toContain('deployq: GITHUB_TOKEN is not set: export a token with the repository permission "Webhooks: read and write" on octo-org/app');
    const noPublicUrl = await cli(["install", "app"], {}, noUrl);
    expect(noPublicUrl.code).toBe(2);
    expect(noPublicUrl.stderr).toMatch(/deployq: \[server\] public_url is not set in .*deployq\.toml: set it to the address GitHub reaches deployq at/);
    const noSecret = await cli(["install", "app"], { GITHUB_WEBHOOK_SECRET: "" });
    expect(noSecret.code).toBe(2);
    expect(noSecret.stderr).toContain("deployq: GITHUB_WEBHOOK_SECRET is not set: export the secret GitHub should sign deliveries with");
    const unknown = await cli(["list", "nope"]);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain('no deployment "nope"');
    expect(fake.requests.length).toBe(asked);
    expect(ours()).toHaveLength(0);
  });

  it("a token without the Webhooks permission (403) or a repository it cannot see (404): says which permission to give", async () => {
    fake.setHookAccess("octo-org/app", 403);
    const forbidden = await cli(["install", "app"]);
    expect(forbidden.code).toBe(2);
    expect(forbidden.stderr).toMatch(/GitHub answered 403: Resource not accessible by personal access token while trying to list the webhooks of octo-org\/app: give GITHUB_TOKEN the repository permission "Webhooks: read and write" on octo-org\/app/);
    fake.setHookAccess("octo-org/app", 404);
    const missing = await cli(["list", "app"]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/GitHub answered 404: Not Found while trying to list the webhooks of octo-org\/app: the repository octo-org\/app does not exist, or GITHUB_TOKEN may not manage its webhooks; give GITHUB_TOKEN the repository permission "Webhooks: read and write"/);
    fake.setHookAccess("octo-org/app", undefined);
    const wrongToken = await cli(["list", "app"], { GITHUB_TOKEN: "ghp_wrong" });
    expect(wrongToken.code).toBe(2);
    expect(wrongToken.stderr).toContain("GitHub refused GITHUB_TOKEN (401: Bad credentials)");
    expect(ours()).toHaveLength(0);
  });
});
