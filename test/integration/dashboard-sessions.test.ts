import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Daemon, startDaemon } from "../../src/daemon.ts";
import { type Database, openDatabase } from "../../src/db/client.ts";
import { silentLogger } from "../../src/log.ts";
import { type TestDatabase, createTestDatabase } from "../helpers/db.ts";
import { type Workspace, createWorkspace } from "../helpers/workspace.ts";

const TOKEN = "sessions-test-token-0123456789abcdef";

/**
 * pm2 runs the receiver as two cluster instances behind one port, so two requests of one
 * browser may reach two processes, and a reload restarts them one after the other: a
 * session made by one must hold on the other and after a restart, and a logout must end it
 * on both. Two receivers here, each with its own connection pool to one Postgres database.
 */
describe("dashboard sessions across receiver instances", () => {
  let ws: Workspace;
  let tdb: TestDatabase;
  const opened: Database[] = [];
  const daemons: Daemon[] = [];

  const start = async () => {
    const database = await openDatabase({ databaseUrl: tdb.url, dataDir: "unused" });
    opened.push(database);
    const daemon = await startDaemon({ settings: ws.settings, role: "receiver", logger: silentLogger(), database });
    daemons.push(daemon);
    return `${daemon.url!}/dashboard`;
  };

  beforeAll(async () => {
    ws = await createWorkspace({ env: { DEPLOYQ_ADMIN_TOKEN: TOKEN } });
    tdb = await createTestDatabase("postgres");
  });
  afterAll(async () => {
    for (const d of daemons) await d.close();
    for (const d of opened) await d.close();
    await tdb?.dispose();
    await ws?.dispose();
  });

  const login = async (base: string): Promise<string> => {
    const res = await fetch(`${base}/login`, { method: "POST", body: new URLSearchParams({ token: TOKEN }), redirect: "manual" });
    expect(res.status).toBe(303);
    const cookie = /deployq_session=([^;]+)/.exec(res.headers.get("set-cookie") ?? "")?.[1];
    expect(cookie).toMatch(/^[A-Za-z0-9_-]{43}$/);
    return `deployq_session=${cookie}`;
  };
  const get = (url: string, cookie: string) => fetch(url, { headers: { cookie }, redirect: "manual" });
  const csrfOf = (html: string) => /name="_csrf" value="([^"]+)"/.exec(html)?.[1];

  it("a session made by one instance holds on the other and after a restart; a logout on one ends it on both", async () => {
    const [a, b] = [await start(), await start()];
    const cookie = await login(a);

    const onB = await get(`${b}/`, cookie);
    expect(onB.status).toBe(200);
    const html = await onB.text();
    expect(html).toContain("Log out");
    const csrf = csrfOf(html);
    expect(csrf).toBeDefined();

    // An action posted to B with the session's CSRF token; its result shows once, on A.
    const paused = await fetch(`${b}/deployments/api/pause`, {
      method: "POST",
      headers: { cookie },
      body: new URLSearchParams({ _csrf: csrf!, reason: "freeze for the release" }),
      redirect: "manual",
    });
    expect(paused.status).toBe(303);
    const shown = await (await get(`${a}/deployments/api`, cookie)).text();
    expect(shown).toMatch(/class="flash ok"[^>]*>[^<]*paused api/);
    expect(await (await get(`${a}/deployments/api`, cookie)).text()).not.toContain('class="flash');

    // A's restart (a pm2 reload): the cookie still holds on the new process.
    await daemons.shift()!.close();
    const a2 = await start();
    expect((await get(`${a2}/`, cookie)).status).toBe(200);

    const out = await fetch(`${a2}/logout`, { method: "POST", headers: { cookie }, body: new URLSearchParams({ _csrf: csrf! }), redirect: "manual" });
    expect(out.status).toBe(303);
    const afterLogout = await get(`${b}/`, cookie);
    expect(afterLogout.status).toBe(303);
    expect(afterLogout.headers.get("location")).toBe("/dashboard/login");
  });

  it("a wrong or made-up cookie is no session, and a POST without a session is refused on every instance", async () => {
    const base = await start();
    expect((await get(`${base}/`, "deployq_session=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")).status).toBe(303);
    expect((await get(`${base}/`, "deployq_session=' or 1=1 --")).status).toBe(303);
    const res = await fetch(`${base}/deployments/api/pause`, { method: "POST", body: new URLSearchParams({ reason: "x" }), redirect: "manual" });
    expect(res.status).toBe(401);
  });
});
