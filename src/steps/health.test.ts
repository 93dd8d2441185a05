import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { PassThrough } from "node:stream";
import { afterEach, describe, expect, it } from "vitest";
import { waitHealthy } from "./health.ts";

describe("waitHealthy", () => {
  let server: Server | undefined;
  const servers: Server[] = [];
  afterEach(async () => {
    await Promise.all(servers.splice(0).map((s) => new Promise<void>((resolve) => (s.listening ? s.close(() => resolve()) : resolve()))));
    server = undefined;
  });

  async function serve(answers: Array<[number, string]>): Promise<{ url: string; requests: () => number }> {
    let n = 0;
    server = createServer((_req, res) => {
      const [status, body] = answers[Math.min(n++, answers.length - 1)]!;
      res.writeHead(status, status >= 300 && status < 400 ? { location: "/elsewhere" } : {}).end(body);
    });
    servers.push(server);
    await new Promise<void>((resolve) => server!.listen(0, "127.0.0.1", resolve));
    return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/health`, requests: () => n };
  }

  it("polls until the URL answers 2xx", async () => {
    const s = await serve([[503, "starting"], [503, "starting"], [200, "ok"]]);
    const log = new PassThrough();
    await waitHealthy({ url: s.url, timeout_s: 10 }, log);
    expect(s.requests()).toBe(3);
    expect(log.read().toString()).toMatch(/healthy after 3 attempt\(s\): HTTP 200: ok/);
  });

  it("fails with the last answer when no 2xx comes in time; a redirect is not followed and is not healthy", async () => {
    const s = await serve([[302, ""]]);
    await expect(waitHealthy({ url: s.url, timeout_s: 0.5 }, new PassThrough())).rejects.toThrow(/failed within 0\.5 s; last answer: HTTP 302/);
    const t = await serve([[500, "database   connection\nrefused"]]);
    await expect(waitHealthy({ url: t.url, timeout_s: 0.5 }, new PassThrough())).rejects.toThrow(/last answer: HTTP 500: database connection refused$/);
  });

  it("names the connection error when nothing listens", async () => {
    const s = await serve([[200, "ok"]]);
    const url = s.url;
    await new Promise<void>((resolve) => server!.close(() => resolve()));
    await expect(waitHealthy({ url, timeout_s: 0.3 }, new PassThrough())).rejects.toThrow(/last answer: ECONNREFUSED/);
  });

  it("stops when the deploy is cancelled", async () => {
    const s = await serve([[503, "starting"]]);
    const abort = new AbortController();
    setImmediate(() => abort.abort());
    await expect(waitHealthy({ url: s.url, timeout_s: 30 }, new PassThrough(), abort.signal)).rejects.toThrow(/cancelled/);
  });
});
