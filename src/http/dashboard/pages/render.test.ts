import { describe, expect, it } from "vitest";
import { h } from "preact";
import type { Deploy } from "../../../db/schema.ts";
import type { DeploymentStatus } from "../../../status.ts";
import type { DeployData, DeploymentData, OverviewData } from "../data.ts";
import type { PageContext } from "./common.tsx";
import { DeployPage } from "./deploy.tsx";
import { DeploymentPage } from "./deployment.tsx";
import { OverviewPage } from "./overview.tsx";
import { renderPage } from "./render.ts";

const HOSTILE = [`<script>alert(1)</script>`, `"><img src=x onerror=alert(1)>`, `' onmouseover='alert(1)`, `</pre><script>x()</script>`];
const ctx: PageContext = { prefix: "/dashboard", assets: { css: "/dashboard/assets/dashboard.css?v=1", js: "/dashboard/assets/dashboard.js?v=1" }, csrf: `c"><b>`, now: Date.now() };

/** Every tag of a rendered page with its attribute names (double-quoted values, as preact writes them; text is skipped). */
function tagsOf(html: string): Array<{ name: string; closing: boolean; attributes: string[] }> {
  const tags: Array<{ name: string; closing: boolean; attributes: string[] }> = [];
  let i = 0;
  while ((i = html.indexOf("<", i)) >= 0) {
    const closing = html[i + 1] === "/";
    const name = /^<\/?([!a-zA-Z][^\s/>]*)/.exec(html.slice(i))?.[1] ?? "";
    let j = i + 1 + (closing ? 1 : 0) + name.length;
    const attributes: string[] = [];
    let quoted = false;
    let attr = "";
    for (; j < html.length; j++) {
      const c = html[j]!;
      if (quoted) {
        if (c === '"') quoted = false;
        continue;
      }
      if (c === '"') quoted = true;
      else if (c === ">") break;
      else if (/[\s/=]/.test(c)) {
        if (attr) attributes.push(attr.toLowerCase());
        attr = "";
      } else attr += c;
    }
    if (attr) attributes.push(attr.toLowerCase());
    tags.push({ name: name.toLowerCase(), closing, attributes });
    i = j + 1;
  }
  return tags;
}

const PAGE_TAGS = new Set(["!doctype", "html", "head", "meta", "title", "link", "script", "body", "header", "a", "nav", "form", "input", "button", "main", "h1", "h2", "p", "table", "thead", "tbody", "tr", "th", "td", "div", "span", "code", "time", "h3", "dl", "dt", "dd", "pre", "label", "section", "svg", "rect", "line", "text"]);

/** Only the page's own elements and attributes: nothing the strings brought in became markup. */
function expectInert(html: string, bad: string) {
  const tags = tagsOf(html);
  for (const t of tags) {
    expect(PAGE_TAGS, `<${t.name}> in the page`).toContain(t.name);
    for (const a of t.attributes) expect(a, `an attribute of <${t.name}>`).not.toMatch(/^on/);
  }
  // The page's own script is the one external file.
  expect(tags.filter((t) => t.name === "script" && !t.closing)).toHaveLength(1);
  // And the string is there, as text.
  expect(html).toContain(bad.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll('"', "&quot;"));
}

function deploy(over: Partial<Deploy>): Deploy {
  return {
    id: 7,
    deployment: "app",
    entry: "0000000000000000001-x.json",
    deliveryId: null,
    event: "push",
    ref: null,
    sha: "a".repeat(40),
    requestedSha: null,
    status: "failed",
    attempt: 1,
    host: "h",
    pid: 1,
    startedAt: new Date(),
    finishedAt: new Date(),
    durationMs: 1234,
    release: null,
    previousRelease: null,
    logPath: "/x.log",
    error: null,
    exitCode: null,
    signal: null,
    supersededBy: null,
    fencingToken: null,
    ...over,
  };
}

describe("pages escape whatever came from a push", () => {
  it("shows hostile branch names, reasons and errors on the overview as text", () => {
    for (const bad of HOSTILE) {
      const data: OverviewData = {
        router: { entries: 0, oldestAgeSeconds: null },
        deployments: [
          {
            deployment: "app",
            repository: "octo-org/app",
            branch: "main",
            strategy: "releases",
            enabled: true,
            current: { release: "20261123T065514.123Z-aaaaaaa", sha: "a".repeat(40), ref: bad },
            waitingForChecks: { entry: "e.json", sha: "b".repeat(40), since: "2026-11-23T06:55:14.123Z", pending: [bad], nextLookAt: undefined },
            paused: { reason: bad, by: "cli:root@host", at: new Date().toISOString() },
            queued: 0,
            deadLetters: 1,
            last: undefined,
            lastRun: undefined,
            sites: [],
            releasedAt: new Date(),
            running: { id: 3, step: bad, startedAt: new Date() },
            lock: { state: "held", holder: `pid 1 on ${bad}`, since: new Date(), ttlMs: 15_000, abandoned: false },
          },
        ],
        deliveries: [
          {
            receivedAt: new Date().toISOString(),
            event: "push",
            repository: "octo-org/app",
            ref: `refs/heads/${bad}`,
            sha: bad,
            hookId: "1",
            deliveryId: "d",
            entry: null,
            outcome: "voided",
            deployments: [bad],
            reason: `no deployment follows ${bad}`,
            duplicates: 0,
            deploys: [{ id: 1, deployment: "app", status: "superseded", supersededBy: bad }],
          },
        ],
      };
      expectInert(renderPage(h(OverviewPage, { ctx, data })), bad);
    }
  });

  it("shows the GitHub outbox's backlog, and its last error (GitHub's message) as text", () => {
    for (const bad of HOSTILE) {
      const data: OverviewData = {
        router: { entries: 0, oldestAgeSeconds: null },
        deployments: [],
        deliveries: [],
        github: { backlog: 3, oldestAgeSeconds: 12, lastError: { at: new Date().toISOString(), error: bad, repository: "octo-org/app", sha: "a".repeat(40), context: "deployq/app", gaveUp: false } },
      };
      const html = renderPage(h(OverviewPage, { ctx, data }));
      expect(html).toContain("GitHub commit statuses: 3 waiting, the oldest for");
      expectInert(html, bad);
    }
  });

  it("shows a hostile log, error and ref on the deploy page as text", () => {
    for (const bad of HOSTILE) {
      const data: DeployData = {
        deploy: deploy({ ref: `refs/heads/${bad}`, error: bad, supersededBy: bad, release: bad }),
        steps: [{ id: 1, deployId: 7, position: 0, kind: "build", title: bad, startedAt: new Date(), finishedAt: new Date(), durationMs: 5, ok: false, exitCode: 3 }],
        delivery: undefined,
        log: { text: `== build\n${bad}\n`, skipped: 0, size: 10, missing: false },
      };
      expectInert(renderPage(h(DeployPage, { ctx, data })), bad);
    }
  });

  it("shows a fleet's host names, failure reason and host errors (from the database) as text", () => {
    for (const bad of HOSTILE) {
      const status: DeploymentStatus = {
        deployment: "app",
        repository: "octo-org/app",
        branch: "main",
        strategy: "releases",
        enabled: true,
        current: { release: undefined, sha: undefined, ref: undefined },
        queued: 0,
        deadLetters: 0,
        paused: undefined,
        waitingForChecks: undefined,
        last: undefined,
        lastRun: undefined,
        sites: [],
      };
      const rollout = {
        id: 4,
        deployment: "app",
        entry: "e.json",
        deliveryId: null,
        ref: `refs/heads/${bad}`,
        sha: "c".repeat(40),
        hosts: ["web1", bad],
        parallel: 1,
        canary: bad,
        onFailure: "halt",
        state: "halted" as const,
        supersededBy: null,
        failedHost: bad,
        failedStep: bad,
        reason: bad,
        createdAt: new Date().toISOString(),
        finishedAt: null,
      };
      const part = (host: string) => ({
        host,
        state: "failed" as const,
        deployId: 1,
        release: bad,
        previousRelease: null,
        step: bad,
        error: bad,
        handedAt: null,
        switchStartedAt: new Date().toISOString(),
        switchEndedAt: null,
        switchSeconds: null,
      });
      const data: DeploymentData = {
        status,
        strategy: "releases",
        releases: [],
        history: [],
        queued: [],
        deadLetters: [],
        actions: [],
        running: undefined,
        fleet: {
          hostName: bad,
          newest: rollout,
          hosts: [
            { host: bad, part: part(bad), lastSeen: new Date() },
            // Configured after the rollout was routed.
            { host: "web4", part: undefined, lastSeen: undefined },
          ],
          recent: [{ ...rollout, hostStates: [{ host: bad, state: "failed" }] }],
        },
      };
      const html = renderPage(h(DeploymentPage, { ctx, data }));
      expect(html).toContain(`<section id="fleet"`);
      expect(html).toContain("not in this rollout");
      expectInert(html, bad);

      const overview: OverviewData = {
        router: { entries: 0, oldestAgeSeconds: null },
        deployments: [{ ...status, releasedAt: undefined, running: undefined, lock: undefined, fleet: { rollout, hosts: [{ host: bad, state: "succeeded", release: bad, error: bad, lastSeen: null }] } }],
        deliveries: [],
      };
      const page = renderPage(h(OverviewPage, { ctx, data: overview }));
      expect(page).toContain("1/2 hosts live");
      expectInert(page, "halted");
    }
  });

  it("escapes the CSRF token in its attribute", () => {
    const html = renderPage(h(DeployPage, { ctx, data: { deploy: deploy({}), steps: [], delivery: undefined, log: { text: "", skipped: 0, size: 0, missing: true } } }));
    expect(html).toContain(`name="_csrf" value="c&quot;>&lt;b>"`);
    expect(tagsOf(html).map((t) => t.name)).not.toContain("b");
  });
});
