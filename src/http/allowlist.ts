import type { NextFunction, Request, Response } from "express";
import type { Logger } from "pino";
import { RequestError } from "../errors.ts";
import type { GithubHookRanges } from "../github/meta.ts";
import { REDELIVER } from "./github-webhook.ts";

/** A refused address is logged once per this long (a scanner would otherwise fill the log). */
const LOG_EVERY_MS = 60_000;
const MAX_REMEMBERED = 1000;
/** While the ranges are not known: GitHub does not retry, but `deployq` asks for lost deliveries again. */
const RETRY_AFTER_S = 60;

/**
 * [github] allowlist: POST /github-webhook only from GitHub's webhook source ranges. Runs
 * before anything of the body is read. The client is req.ip, which follows [server]
 * trust_proxy (express's `trust proxy`): the TCP peer, or behind a trusted proxy the address
 * it forwards in X-Forwarded-For.
 */
export function githubAllowlist(ranges: GithubHookRanges, logger: Logger) {
  const logged = new Map<string, number>();
  const shouldLog = (address: string) => {
    const now = Date.now();
    const last = logged.get(address);
    if (last !== undefined && now - last < LOG_EVERY_MS) return false;
    if (logged.size >= MAX_REMEMBERED) logged.clear();
    logged.set(address, now);
    return true;
  };
  return (req: Request, res: Response, next: NextFunction) => {
    const address = req.ip ?? req.socket.remoteAddress ?? "";
    const allowed = ranges.allows(address);
    if (allowed === true) return next();
    if (allowed === undefined) {
      const state = ranges.state();
      const why = state.known ? "" : ` (${state.reason})`;
      res.set("retry-after", String(RETRY_AFTER_S));
      // Thrown to the error handler, which logs it: nothing is acknowledged that was not checked.
      throw new RequestError(
        "UNAVAILABLE",
        503,
        `GitHub's webhook source ranges are not known yet${why}, and [github] allowlist is on: nothing was queued; deployq keeps asking GitHub's GET /meta for them; once it has them, ${REDELIVER}`,
      );
    }
    const peer = req.socket.remoteAddress ?? "";
    const forwarded = req.get("x-forwarded-for") !== undefined;
    const trusted = (req.app.get("trust proxy fn") as (addr: string, i: number) => boolean)(peer, 0);
    let message = `${address || "the client"} is not within GitHub's webhook source ranges (GET /meta hooks), and [github] allowlist is on: refused, nothing was read`;
    if (forwarded && !trusted) {
      message += `; the request carries X-Forwarded-For but came from ${peer}, which is not in [server] trust_proxy: if ${peer} is your reverse proxy, add it there`;
    }
    if (shouldLog(address)) logger.warn({ path: req.path, address, peer, forwardedFor: forwarded ? req.get("x-forwarded-for")?.slice(0, 200) : undefined }, "refused a webhook delivery from outside GitHub's webhook ranges");
    res.status(403).json({ error: message });
  };
}
