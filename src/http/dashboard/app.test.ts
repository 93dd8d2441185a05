import { Writable } from "node:stream";
import { pino } from "pino";
import { describe, expect, it } from "vitest";
import type { Settings } from "../../config/load.ts";
import type { Db } from "../../db/client.ts";
import { dashboardFor } from "./app.ts";

function collectingLogger() {
  const lines: Array<Record<string, unknown>> = [];
  const stream = new Writable({
    write(chunk, _enc, cb) {
      lines.push(JSON.parse(String(chunk)) as Record<string, unknown>);
      cb();
    },
  });
  return { logger: pino({ level: "info" }, stream), lines };
}

const settings = (adminToken: string | undefined) => ({ dashboard: { path: "/dash" }, secrets: { adminToken, redisUrls: [] } }) as unknown as Settings;

describe("dashboardFor", () => {
  it("is off without DEPLOYQ_ADMIN_TOKEN, and says so", () => {
    const { logger, lines } = collectingLogger();
    expect(dashboardFor(settings(undefined), {} as Db, logger)).toBeUndefined();
    expect(lines.map((l) => l.msg)).toEqual(["the dashboard is off: set DEPLOYQ_ADMIN_TOKEN (a long random string) to serve it at /dash"]);
  });

  it("is served at the configured path with the token", () => {
    const { logger, lines } = collectingLogger();
    expect(dashboardFor(settings("t"), {} as Db, logger)).toMatchObject({ path: "/dash" });
    expect(lines[0]).toMatchObject({ msg: "the dashboard is on", path: "/dash" });
  });
});
