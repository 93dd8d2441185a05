import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { spawnTracked } from "./processes.ts";
import { freePort } from "./load.ts";

export interface TestPrometheus {
  url: string;
  /** GET /api/v1/<endpoint>?<params>: the `data` of a successful answer. */
  api<T = unknown>(endpoint: string, params?: Record<string, string>): Promise<T>;
  stop(): Promise<void>;
}

/**
 * A real Prometheus (Debian's `prometheus`), on a free port with its own config and TSDB in
 * a temporary folder, scraping `targets` (host:port) every 200 ms and evaluating `ruleFiles`
 * as often. stop() ends it and removes the folder.
 */
export async function startPrometheus(options: { targets: string[]; ruleFiles?: string[] }): Promise<TestPrometheus> {
  const dir = await mkdtemp(path.join(tmpdir(), "deployq-prometheus-"));
  const config = path.join(dir, "prometheus.yml");
  await writeFile(
    config,
    JSON.stringify({
      global: { scrape_interval: "200ms", scrape_timeout: "200ms", evaluation_interval: "200ms" },
      rule_files: options.ruleFiles ?? [],
      scrape_configs: [{ job_name: "deployq", static_configs: [{ targets: options.targets }] }],
    }),
  );
  const port = await freePort();
  const child = spawnTracked("prometheus", [`--config.file=${config}`, `--storage.tsdb.path=${path.join(dir, "data")}`, `--web.listen-address=127.0.0.1:${port}`, "--log.level=info"]);
  const stop = async () => {
    if (child.child.exitCode === null && child.child.signalCode === null) child.child.kill("SIGTERM");
    await child.exited;
    await rm(dir, { recursive: true, force: true });
  };
  try {
    await child.waitFor("Server is ready to receive web requests", 60_000);
  } catch (err) {
    await stop();
    throw err;
  }
  const url = `http://127.0.0.1:${port}`;
  return {
    url,
    async api<T>(endpoint: string, params: Record<string, string> = {}) {
      const res = await fetch(`${url}/api/v1/${endpoint}?${new URLSearchParams(params)}`);
      const body = (await res.json()) as { status: string; data: T; error?: string };
      if (body.status !== "success") throw new Error(`prometheus ${endpoint}: ${body.error ?? res.status}`);
      return body.data;
    },
    stop,
  };
}
