import type { Settings } from "../config/load.ts";
import { type DeliverySummary, recentDeliveries } from "../db/queries/recent-deliveries.ts";
import { getJson, withDatabase } from "./database-access.ts";
import { formatAge, printJson, table } from "./output.ts";

/**
 * `deployq deliveries`: the newest deliveries and what became of each, from the table the
 * receiver and the router record them in (asking the daemon when it owns PGlite).
 */
export async function deliveriesCommand(settings: Settings, limit: number, json: boolean): Promise<void> {
  const rows = await withDatabase(
    settings,
    (db) => recentDeliveries(db, limit),
    (base) => getJson<DeliverySummary[]>(`${base}/deliveries?limit=${limit}`),
  );
  if (json) return printJson(rows);
  if (rows.length === 0) {
    process.stdout.write("no deliveries recorded yet: `deployq send-test-delivery` sends one\n");
    return;
  }
  const now = Date.now();
  process.stdout.write(
    `${table(
      ["RECEIVED", "EVENT", "REPOSITORY", "REF", "SHA", "OUTCOME", "DUPLICATES", "DEPLOYMENTS / REASON"],
      rows.map((r) => [
        `${formatAge(Math.max(0, Math.round((now - new Date(r.receivedAt).getTime()) / 1000)))} ago`,
        r.event,
        r.repository ?? "-",
        (r.ref ?? "-").replace(/^refs\/heads\//, ""),
        r.sha ? r.sha.slice(0, 7) : "-",
        r.outcome,
        String(r.duplicates),
        detail(r),
      ]),
    )}\n`,
  );
}

function detail(r: DeliverySummary): string {
  if (r.outcome === "routed") return r.deployments.join(", ");
  if (r.outcome === "queued") return "(waiting for the router)";
  return r.reason ? r.reason.replace(/\s+/g, " ") : "";
}
