import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ConfigError } from "../errors.ts";
import { loadSettings, requireWebhookSecrets } from "./load.ts";

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), "deployq-config-"));
});
afterAll(() => rm(dir, { recursive: true, force: true }));

async function load(toml: string, env: NodeJS.ProcessEnv = {}) {
  const file = path.join(dir, `c${Math.random().toString(36).slice(2)}.toml`);
  await writeFile(file, toml);
  return { file, settings: () => loadSettings({ configPath: file, env }) };
}

const DEPLOYMENT = `
[deployments.api]
repository = "octo-org/api"
branch = "main"
remote = "https://github.com/octo-org/api.git"
path = "apps/api"
commands = [["npm", "ci"]]
`;

describe("loadSettings", () => {
  it("loads the shipped example", () => {
    const file = new URL("../../deployq.example.toml", import.meta.url).pathname;
    const settings = loadSettings({ configPath: file, env: {} });
    // Its remote "." is this checkout, resolved against the file's folder.
    expect(settings.deployments.get("example")).toMatchObject({ branch: "main", strategy: "releases", remote: path.dirname(file) });
  });

  it("applies defaults, resolves paths against the file's folder, and reads secrets from the environment only", async () => {
    const { settings } = await load(DEPLOYMENT, { GITHUB_WEBHOOK_SECRET: " new , old ,", DATABASE_URL: "postgres://x@h/db" });
    const s = settings();
    expect(s.host).toBe("127.0.0.1");
    expect(s.port).toBe(3400);
    expect(s.queuesDir).toBe(path.join(dir, "queues"));
    expect(s.dataDir).toBe(path.join(dir, "data"));
    expect(s.deployments.get("api")).toMatchObject({ name: "api", path: path.join(dir, "apps/api"), keep_releases: 5, enabled: true });
    expect(s.secrets.webhookSecrets).toEqual(["new", "old"]);
    expect(s.secrets.databaseUrl).toBe("postgres://x@h/db");
  });

  it("keeps 100 deploys per deployment unless the top level or the deployment says otherwise", async () => {
    expect((await load(DEPLOYMENT)).settings().deployments.get("api")?.keep_deploys).toBe(100);
    expect((await load(`keep_deploys = 20\n${DEPLOYMENT}`)).settings().deployments.get("api")?.keep_deploys).toBe(20);
    expect((await load(`keep_deploys = 20\n${DEPLOYMENT}keep_deploys = 3\n`)).settings().deployments.get("api")?.keep_deploys).toBe(3);
  });

  it("lets DEPLOYQ_QUEUES_DIR override queues_dir", async () => {
    const { settings } = await load(DEPLOYMENT, { DEPLOYQ_QUEUES_DIR: "/srv/q" });
    expect(settings().queuesDir).toBe("/srv/q");
  });

  it.each([
    ['[server]\nport = "x"', /server\.port/],
    ['[server]\nhots = "x"', /unknown key "hots" in \[server\]/],
    [`${DEPLOYMENT}\n[deployments.web]\nrepository = "not a repo"\nbranch = "main"\nremote = "r"\npath = "p"`, /deployments\.web\.repository: must be "owner\/name"/],
    [DEPLOYMENT.replace('commands = [["npm", "ci"]]', 'commands = ["npm ci"]'), /deployments\.api\.commands\.0/],
    [DEPLOYMENT.replace('branch = "main"', 'branch = "refs/heads/main"'), /without "refs\/heads\/"/],
    [DEPLOYMENT.replace("[deployments.api]", "[deployments.\"../etc\"]"), /deployment name/],
    [DEPLOYMENT.replace("[deployments.api]", "[deployments.router]"), /"router" is reserved/],
    [DEPLOYMENT.replace('remote = "https://github.com/octo-org/api.git"\n', ""), /deployments\.api\.remote/],
    ["this is = = not toml", /not valid TOML/],
    [`${DEPLOYMENT}restart = { pm2 = "../ecosystem.config.cjs" }`, /deployments\.api\.restart/],
    [`${DEPLOYMENT}restart = { pm2 = "e.cjs", only = ["a,b"] }`, /deployments\.api\.restart/],
    [`${DEPLOYMENT}health = { url = "ftp://127.0.0.1/health" }`, /deployments\.api\.health\.url: must be an http/],
    [`${DEPLOYMENT}nginx = { conf_dir = "conf.d" }`, /deployments\.api\.nginx\.conf_dir: must be an absolute path/],
    [`${DEPLOYMENT}nginx = { conf_dir = "/etc/nginx/conf.d", verify = { "../x" = "http://127.0.0.1/" } }`, /deployments\.api\.nginx\.verify/],
    [`[nginx]\ntest_command = "nginx -t"\n${DEPLOYMENT}`, /nginx\.test_command/],
    [`[certbot]\nemail = "not an email"\n${DEPLOYMENT}`, /certbot\.email/],
    [`keep_deploys = 0\n${DEPLOYMENT}`, /keep_deploys: must keep at least 1 deploy/],
    [`${DEPLOYMENT}keep_deploys = 2.5`, /deployments\.api\.keep_deploys: must be a whole number/],
  ])("names the file and the key: %#", async (toml, message) => {
    const { file, settings } = await load(toml);
    let error: unknown;
    try {
      settings();
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as Error).message).toContain(file);
    expect((error as Error).message).toMatch(message);
  });

  it("reads the deploy steps: pm2 restart, health check, nginx sites, the host's nginx and certbot", async () => {
    const { settings } = await load(`pm2_home = "pm2"
[nginx]
test_command = ["nginx", "-t"]
[certbot]
email = "ops@example.com"
${DEPLOYMENT}restart = { pm2 = "ecosystem.config.cjs", only = ["api"], env = { PORT = "3000" } }
health = { url = "http://127.0.0.1:3000/health" }
nginx = { conf_dir = "/etc/nginx/conf.d", exclude = ["staging-*"] }
`);
    const s = settings();
    expect(s.pm2Home).toBe(path.join(dir, "pm2"));
    expect(s.nginx).toEqual({ test_command: ["nginx", "-t"], reload_command: ["sudo", "-n", "systemctl", "reload", "nginx"], pid_file: "/run/nginx.pid", verify_timeout_s: 10 });
    expect(s.certbot).toEqual({ email: "ops@example.com", command: ["sudo", "-n", "/usr/local/sbin/deployq-certbot"], webroot: "/var/www/letsencrypt" });
    expect(s.deployments.get("api")).toMatchObject({
      restart: { pm2: "ecosystem.config.cjs", only: ["api"], env: { PORT: "3000" } },
      health: { url: "http://127.0.0.1:3000/health", timeout_s: 30 },
      nginx: { sites_dir: "nginx/sites", conf_dir: "/etc/nginx/conf.d", include: ["*"], exclude: ["staging-*"], verify: {}, certificates: true },
    });
    const { settings: fromEnv } = await load(DEPLOYMENT, { PM2_HOME: "/var/lib/deployq/pm2" });
    expect(fromEnv().pm2Home).toBe("/var/lib/deployq/pm2");
    expect(fromEnv().certbot).toBeUndefined();
  });

  it("says what to do when the file is missing", () => {
    expect(() => loadSettings({ configPath: path.join(dir, "missing.toml"), env: {} })).toThrow(/pass --config <file> or set DEPLOYQ_CONFIG/);
  });

  it("refuses to run a receiver without a secret", async () => {
    const { settings } = await load(DEPLOYMENT, { GITHUB_WEBHOOK_SECRET: " , " });
    expect(() => requireWebhookSecrets(settings())).toThrow(/GITHUB_WEBHOOK_SECRET is not set/);
  });
});
