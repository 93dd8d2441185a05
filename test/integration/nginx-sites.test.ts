import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, readdir, rm, symlink, writeFile } from "node:fs/promises";
import { type Server, createServer } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { type NginxHost, NginxSites } from "../../src/config/schema.ts";
import { DeployqError } from "../../src/errors.ts";
import type { CommandContext } from "../../src/steps/command-context.ts";
import { checkNginx } from "../../src/steps/nginx/check.ts";
import { ownedSites } from "../../src/steps/nginx/manifest.ts";
import { type DeploySitesResult, type SiteFile, deploySites, removeSites } from "../../src/steps/nginx/sites.ts";
import { freePort } from "../helpers/load.ts";
import { type PrivateNginx, serverBlock, startNginx } from "../helpers/nginx.ts";
import { LogCollector } from "../helpers/log-collector.ts";
import { until } from "../helpers/wait.ts";

const run = promisify(execFile);

/** GET on a fresh connection: the body, or undefined when nothing answers. */
async function get(port: number): Promise<string | undefined> {
  try {
    const res = await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(2_000), headers: { connection: "close" } });
    return await res.text();
  } catch {
    return undefined;
  }
}

async function servesText(port: number, text: string): Promise<void> {
  await until(`127.0.0.1:${port} to answer ${JSON.stringify(text)}`, async () => (await get(port)) === text, 30_000);
}

/** Every entry of a folder, files with their bytes (hex): "byte for byte" comparisons. */
async function snapshotDir(dir: string): Promise<Record<string, string>> {
  const files: Record<string, string> = {};
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    files[entry.isFile() ? entry.name : `${entry.name} (not a file)`] = entry.isFile() ? (await readFile(path.join(dir, entry.name))).toString("hex") : "";
  }
  return files;
}

describe("nginx sites: deploySites against a private nginx", () => {
  let nginx: PrivateNginx;
  let work: string;
  let stateDir: string;
  let log: LogCollector;
  let releases = 0;

  beforeEach(async () => {
    nginx = await startNginx({ verifyTimeoutS: 5 });
    work = await mkdtemp(path.join(tmpdir(), "deployq-nginx-test-"));
    stateDir = path.join(work, "data", "nginx");
    log = new LogCollector();
  });

  afterEach(async () => {
    await nginx.stop();
    await rm(work, { recursive: true, force: true });
  });

  const ctx = (): CommandContext => ({ log, timeoutMs: 30_000 });

  /** A release folder whose nginx/sites/ holds `files` (name → content). */
  async function release(files: Record<string, string>): Promise<string> {
    const dir = path.join(work, `release-${++releases}`);
    await mkdir(path.join(dir, "nginx", "sites"), { recursive: true });
    for (const [name, text] of Object.entries(files)) await writeFile(path.join(dir, "nginx", "sites", name), text);
    return dir;
  }

  function deploy(
    sourceDir: string,
    options: { deployment?: string; sites?: Partial<NginxSites>; host?: Partial<NginxHost>; beforeActivate?: (sites: SiteFile[]) => Promise<void> } = {},
  ): Promise<DeploySitesResult> {
    return deploySites(
      {
        deployment: options.deployment ?? "app",
        sourceDir,
        sites: NginxSites.parse({ conf_dir: nginx.confDir, ...options.sites }),
        host: { ...nginx.host, ...options.host },
        stateDir,
        ...(options.beforeActivate ? { beforeActivate: options.beforeActivate } : {}),
      },
      ctx(),
    );
  }

  async function rejection(promise: Promise<unknown>): Promise<DeployqError> {
    const err = await promise.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(DeployqError);
    return err as DeployqError;
  }

  const confFile = (site: string) => path.join(nginx.confDir, `${site}.conf`);

  /** nginx was not reloaded since `before` was taken: no worker started (old ones from an earlier reload may have exited). */
  async function expectNoNewWorker(before: number[]): Promise<void> {
    expect((await nginx.workerPids()).filter((pid) => !before.includes(pid))).toEqual([]);
  }

  it("deploys a new site that nginx then serves, serves a changed site's new content, removes a removed site", async () => {
    const [portA, portB] = [await freePort(), await freePort()];
    const a1 = serverBlock({ port: portA, body: "a v1" });
    const b1 = serverBlock({ port: portB, body: "b v1" });
    const first = await deploy(await release({ "a.conf": a1, "b.conf": b1 }), { sites: { verify: { a: `http://127.0.0.1:${portA}/` } } });
    expect(first).toEqual({ changed: ["a", "b"], removed: [] });
    expect(await readFile(confFile("a"), "utf8")).toBe(a1);
    expect(await readFile(confFile("b"), "utf8")).toBe(b1);
    await servesText(portA, "a v1");
    await servesText(portB, "b v1");
    expect(log.text).toContain(`verify a: http://127.0.0.1:${portA}/ answered 200`);
    expect(await ownedSites(stateDir, "app")).toEqual(["a", "b"]);

    const a2 = serverBlock({ port: portA, body: "a v2" });
    const second = await deploy(await release({ "a.conf": a2 }));
    expect(second).toEqual({ changed: ["a"], removed: ["b"] });
    expect(await readFile(confFile("a"), "utf8")).toBe(a2);
    expect(await readdir(nginx.confDir)).toEqual(["a.conf"]);
    await servesText(portA, "a v2");
    await until(`127.0.0.1:${portB} to stop answering`, async () => (await get(portB)) === undefined, 30_000);
    expect(await ownedSites(stateDir, "app")).toEqual(["a"]);
  });

  it("deploys only the sites include and not exclude match, and ignores files that are not <site>.conf", async () => {
    const ports = { a: await freePort(), api: await freePort(), "api-staging": await freePort(), other: await freePort() };
    const files: Record<string, string> = { "README.md": "not a site", "snippet.inc": "x" };
    for (const [site, port] of Object.entries(ports)) files[`${site}.conf`] = serverBlock({ port, body: site });
    const result = await deploy(await release(files), { sites: { include: ["a", "api*"], exclude: ["*-staging"] } });
    expect(result).toEqual({ changed: ["a", "api"], removed: [] });
    expect(await readdir(nginx.confDir)).toEqual(["a.conf", "api.conf"]);
    await servesText(ports.api, "api");
    expect(log.text).toContain("ignoring nginx/sites/README.md");
    expect(log.text).toContain("skipping site api-staging");
    expect(log.text).toContain("skipping site other");
  });

  it("changes nothing and does not reload when no site file changed", async () => {
    const port = await freePort();
    const files = { "a.conf": serverBlock({ port, body: "a" }) };
    await deploy(await release(files));
    await servesText(port, "a");
    const workers = await nginx.workerPids();
    const before = await snapshotDir(nginx.confDir);
    log.text = "";
    expect(await deploy(await release(files))).toEqual({ changed: [], removed: [] });
    expect(log.text).not.toContain("$ "); // no command ran: neither nginx -t nor the reload
    expect(log.text).toContain("unchanged");
    await expectNoNewWorker(workers);
    expect(await snapshotDir(nginx.confDir)).toEqual(before);
  });

  it("never reloads a configuration nginx -t rejects, and leaves the previous files byte-identical", async () => {
    const port = await freePort();
    const a1 = serverBlock({ port, body: "a v1" });
    await deploy(await release({ "a.conf": a1 }));
    await servesText(port, "a v1");
    const workers = await nginx.workerPids();
    const before = await snapshotDir(nginx.confDir);
    const manifestBefore = await readFile(path.join(stateDir, "app.json"), "utf8");
    log.text = "";

    const broken = `server {\n    listen 127.0.0.1:${port};\n    retrun 200 'a v2';\n}\n`;
    const extra = serverBlock({ port: await freePort(), body: "new" });
    const err = await rejection(deploy(await release({ "a.conf": broken, "new.conf": extra })));
    expect(err.message).toContain('[emerg] unknown directive "retrun"');
    expect(err.message).toContain("put back byte for byte");
    expect(log.text).not.toContain("-s reload");
    await expectNoNewWorker(workers);
    expect(await snapshotDir(nginx.confDir)).toEqual(before); // a.conf as it was, new.conf gone
    expect(await readFile(path.join(stateDir, "app.json"), "utf8")).toBe(manifestBefore);
    expect(await get(port)).toBe("a v1");
  });

  it("detects a reload that nginx -t passes but nginx cannot apply (port in use), rolls back byte-identically, and the previous site still serves", async () => {
    const port = await freePort();
    const a1 = serverBlock({ port, body: "a v1" });
    await deploy(await release({ "a.conf": a1 }));
    await servesText(port, "a v1");
    const before = await snapshotDir(nginx.confDir);

    const blocker: Server = createServer();
    await new Promise<void>((resolve, reject) => {
      blocker.once("error", reject);
      blocker.listen(0, "127.0.0.1", () => resolve());
    });
    try {
      const taken = (blocker.address() as { port: number }).port;
      const a2 = serverBlock({ port, body: "a v2" }) + serverBlock({ port: taken, body: "a on a taken port" });
      const err = await rejection(deploy(await release({ "a.conf": a2 })));
      expect(err.message).toContain("the reload did not take effect");
      // nginx's own message, from its error log (readable here: the tests run as root, like the master).
      expect(err.message).toMatch(new RegExp(`\\[emerg\\] .*bind\\(\\) to 127\\.0\\.0\\.1:${taken} failed \\(98: Address already in use\\)`));
      expect(err.message).toContain("nginx reloaded with them");
      expect(await snapshotDir(nginx.confDir)).toEqual(before);
      await servesText(port, "a v1");
      expect(await nginx.errorLogText()).toContain("Address already in use");
    } finally {
      await new Promise<void>((resolve) => blocker.close(() => resolve()));
    }
    expect(await ownedSites(stateDir, "app")).toEqual(["a"]);
  });

  it("rolls back when a verify URL answers 5xx after the reload", async () => {
    const port = await freePort();
    const a1 = serverBlock({ port, body: "a v1" });
    await deploy(await release({ "a.conf": a1 }));
    const before = await snapshotDir(nginx.confDir);
    const err = await rejection(
      deploy(await release({ "a.conf": serverBlock({ port, body: "broken upstream", status: 502 }) }), {
        sites: { verify: { a: `http://127.0.0.1:${port}/health` } },
        host: { verify_timeout_s: 2 },
      }),
    );
    expect(err.message).toContain(`site a's verify URL http://127.0.0.1:${port}/health did not answer with a status below 500`);
    expect(err.message).toContain("status 502");
    expect(await snapshotDir(nginx.confDir)).toEqual(before);
    await servesText(port, "a v1");
  });

  it("refuses a site whose file in conf_dir belongs to the operator or to another deployment, and changes nothing", async () => {
    const operators = "# the operator's own\n";
    await writeFile(confFile("mine"), operators);
    await writeFile(path.join(work, "linked-target.conf"), "# the operator's, linked in\n");
    await symlink(path.join(work, "linked-target.conf"), confFile("linked")); // never written through
    const portShared = await freePort();
    await deploy(await release({ "shared.conf": serverBlock({ port: portShared, body: "first" }) }), { deployment: "first" });
    const before = await snapshotDir(nginx.confDir);
    const workers = await nginx.workerPids();
    log.text = "";

    const err = await rejection(deploy(await release({ "mine.conf": serverBlock({ port: await freePort(), body: "x" }), "fresh.conf": serverBlock({ port: await freePort(), body: "y" }) }), { deployment: "second" }));
    expect(err.message).toContain(`${confFile("mine")} already exists and was not written by deployq`);
    const err3 = await rejection(deploy(await release({ "linked.conf": serverBlock({ port: await freePort(), body: "x" }) }), { deployment: "second" }));
    expect(err3.message).toContain(`${confFile("linked")} already exists and was not written by deployq`);
    const err2 = await rejection(deploy(await release({ "shared.conf": serverBlock({ port: portShared, body: "second" }) }), { deployment: "second" }));
    expect(err2.message).toContain(`${confFile("shared")} belongs to deployment first`);

    expect(await snapshotDir(nginx.confDir)).toEqual(before); // fresh.conf was not written either
    expect(await readFile(confFile("mine"), "utf8")).toBe(operators);
    expect(log.text).not.toContain("$ ");
    await expectNoNewWorker(workers);
    expect(await ownedSites(stateDir, "second")).toEqual([]);
    await servesText(portShared, "first");
  });

  it("refuses symlinks, non-regular files and invalid names in sites_dir, and writes nothing anywhere", async () => {
    const outside = path.join(work, "outside.conf");
    const outsideText = serverBlock({ port: await freePort(), body: "from outside the release" });
    await writeFile(outside, outsideText);
    const ok = serverBlock({ port: await freePort(), body: "ok" });
    const prefixBefore = await readdir(nginx.dir);
    const confBefore = await snapshotDir(nginx.confDir);

    const linked = await release({ "ok.conf": ok });
    await symlink(outside, path.join(linked, "nginx", "sites", "evil.conf"));
    expect((await rejection(deploy(linked))).message).toMatch(/evil\.conf is a symbolic link/);

    const fifo = await release({ "ok.conf": ok });
    await run("mkfifo", [path.join(fifo, "nginx", "sites", "pipe.conf")]);
    expect((await rejection(deploy(fifo))).message).toMatch(/pipe\.conf is not a regular file/);

    const folder = await release({ "ok.conf": ok });
    await mkdir(path.join(folder, "nginx", "sites", "folder.conf"));
    expect((await rejection(deploy(folder))).message).toMatch(/folder\.conf is not a regular file/);

    for (const bad of ["-x.conf", ".hidden.conf", "sp ace.conf", "new\nline.conf"]) {
      const named = await release({ "ok.conf": ok, [bad]: ok });
      expect((await rejection(deploy(named))).message).toContain("is not a valid site file name");
    }

    // sites_dir itself a link out of the release.
    const outsideDir = path.join(work, "outside-sites");
    await mkdir(outsideDir);
    await writeFile(path.join(outsideDir, "x.conf"), ok);
    const linkedDir = path.join(work, "release-linked-dir");
    await mkdir(path.join(linkedDir, "nginx"), { recursive: true });
    await symlink(outsideDir, path.join(linkedDir, "nginx", "sites"));
    expect((await rejection(deploy(linkedDir))).message).toContain("is a symbolic link");

    // A missing sites_dir is an error, not "remove every site".
    expect((await rejection(deploy(await release({}), { sites: { sites_dir: "nope" } }))).message).toContain("the release has no nope/");

    // An excluded symlink is never read, so it does not stand in the way.
    const excluded = await release({ "ok.conf": ok });
    await symlink(outside, path.join(excluded, "nginx", "sites", "evil.conf"));
    expect(await deploy(excluded, { sites: { exclude: ["evil"] } })).toEqual({ changed: ["ok"], removed: [] });

    expect(await readFile(outside, "utf8")).toBe(outsideText);
    expect(Object.keys(await snapshotDir(nginx.confDir))).toEqual([...Object.keys(confBefore), "ok.conf"]);
    expect((await readdir(nginx.dir)).sort()).toEqual(prefixBefore.sort());
  });

  it("calls beforeActivate with the new and changed sites only, and writes nothing when it throws", async () => {
    const [portA, portB] = [await freePort(), await freePort()];
    const a = serverBlock({ port: portA, body: "a" });
    await deploy(await release({ "a.conf": a }));
    const before = await snapshotDir(nginx.confDir);
    const seen: SiteFile[][] = [];
    const b = serverBlock({ port: portB, body: "b" });
    const err = await rejection(
      deploy(await release({ "a.conf": a, "b.conf": b }), {
        beforeActivate: async (sites) => {
          seen.push(sites);
          throw new DeployqError("DEPLOY", "certbot said no");
        },
      }),
    );
    expect(err.message).toBe("certbot said no");
    expect(seen).toEqual([[{ name: "b", text: b }]]);
    expect(await snapshotDir(nginx.confDir)).toEqual(before);
    expect(await ownedSites(stateDir, "app")).toEqual(["a"]);
  });

  it("replaces an owned file edited by hand (with a warning), and removeSites removes every owned site", async () => {
    const port = await freePort();
    const a1 = serverBlock({ port, body: "a v1" });
    await deploy(await release({ "a.conf": a1, "b.conf": serverBlock({ port: await freePort(), body: "b" }) }));
    await writeFile(confFile("a"), serverBlock({ port, body: "edited by hand" }));
    const a2 = serverBlock({ port, body: "a v2" });
    log.text = "";
    expect(await deploy(await release({ "a.conf": a2, "b.conf": await readFile(confFile("b"), "utf8") }))).toEqual({ changed: ["a"], removed: [] });
    expect(log.text).toContain(`warning: ${confFile("a")} was changed by hand`);
    await servesText(port, "a v2");

    await writeFile(confFile("operator"), "# not ours\n");
    expect(await removeSites({ deployment: "app", host: nginx.host, stateDir }, ctx())).toEqual({ changed: [], removed: ["a", "b"] });
    expect(await readdir(nginx.confDir)).toEqual(["operator.conf"]);
    expect(await ownedSites(stateDir, "app")).toEqual([]);
    await until(`127.0.0.1:${port} to stop answering`, async () => (await get(port)) === undefined, 30_000);
  });

  it("fails clearly, changing nothing, when nginx is not running", async () => {
    const site = serverBlock({ port: await freePort(), body: "a" });
    const err = await rejection(deploy(await release({ "a.conf": site }), { host: { pid_file: path.join(work, "missing.pid") } }));
    expect(err.message).toContain("is nginx running?");
    expect(await readdir(nginx.confDir)).toEqual([]);
  });

  it("checkNginx reports what works and what does not, changing nothing", async () => {
    const good = await checkNginx(nginx.host, [nginx.confDir]);
    expect(good.map((c) => [c.name, c.ok])).toEqual([
      ["nginx test_command", true],
      ["nginx reload_command", true],
      [`nginx conf_dir ${nginx.confDir}`, true],
      ["nginx pid_file", true],
    ]);
    const missing = path.join(work, "no-such-dir");
    const bad = await checkNginx(
      { ...nginx.host, test_command: ["no-such-nginx-binary", "-t"], reload_command: ["sudo", "-n", "-u", "deployq-no-such-user", "systemctl", "reload", "nginx"], pid_file: path.join(work, "none.pid") },
      [missing],
    );
    expect(bad.every((c) => !c.ok)).toBe(true);
    expect(bad[0]!.detail).toContain("no-such-nginx-binary is not an executable file on PATH");
    // Without sudo installed: "sudo is not installed"; with it: sudo -l refuses the unknown user.
    expect(bad[1]!.detail).toMatch(/sudo is not installed|sudo -n -u deployq-no-such-user -l systemctl reload nginx failed/);
    expect(bad[2]!.detail).toContain(`${missing} does not exist`);
    expect(bad[3]!.detail).toContain("is nginx running?");
    expect(await readdir(work)).not.toContain("no-such-dir");
    if (existsSync("/usr/bin/sudo") && process.getuid?.() === 0) {
      // root may run anything through sudo: `sudo -n -l <command>` allows it and names the program.
      const [viaSudo] = await checkNginx({ ...nginx.host, test_command: ["sudo", "-n", ...nginx.testCommand] }, []);
      expect(viaSudo).toMatchObject({ name: "nginx test_command", ok: true });
      expect(viaSudo!.detail).toContain("sudo allows it");
    }
  });
});
