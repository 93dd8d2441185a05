import type { NextFunction, Request, RequestHandler, Response } from "express";
import express from "express";
import type { Logger } from "pino";
import { errorMessage } from "../errors.ts";
import type { Metrics } from "./registry.ts";

/**
 * Times every POST /github-webhook from its first byte to its answer, whatever answers it
 * (the handler, the admission check, the error handler), labelled with the status code
 * sent. Put it first: it only listens for the end of the response, it never answers.
 */
export function webhookRequestMetrics(metrics: Metrics): RequestHandler {
  return (req: Request, res: Response, next: NextFunction) => {
    if (req.method !== "POST" || req.path !== "/github-webhook") return next();
    const start = process.hrtime.bigint();
    let done = false;
    const end = () => {
      if (done) return;
      done = true;
      metrics.observeWebhookRequest(req.get("x-github-event"), res.statusCode, Number(process.hrtime.bigint() - start) / 1e9);
    };
    // "close" alone also covers a connection cut before the answer was sent.
    res.once("finish", end);
    res.once("close", end);
    next();
  };
}

/**
 * GET /metrics in the text exposition format. Like /healthz it needs no token: it is meant
 * for a Prometheus on the same host (the daemon listens on 127.0.0.1, and nginx forwards
 * only /github-webhook).
 */
export function metricsHandler(metrics: Metrics, logger: Logger): RequestHandler {
  return async (_req: Request, res: Response) => {
    try {
      const text = await metrics.scrape();
      res.set("content-type", metrics.contentType).send(text);
    } catch (err) {
      logger.error({ err: errorMessage(err) }, "cannot collect the metrics");
      res.status(500).type("text/plain").send(`cannot collect the metrics: ${errorMessage(err)}\n`);
    }
  };
}

/** The workers process has no receiver: this app serves its /metrics alone (the [metrics] address). */
export function createMetricsApp(metrics: Metrics, logger: Logger): express.Express {
  const app = express();
  app.disable("x-powered-by");
  app.set("etag", false);
  app.get("/metrics", metricsHandler(metrics, logger));
  app.use((_req, res) => {
    res.status(404).json({ error: "not found: this address serves only /metrics" });
  });
  return app;
}
