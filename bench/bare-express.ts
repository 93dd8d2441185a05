/**
 * The baseline for bench/run.ts: a bare Express 5 app that reads the raw body the way the
 * receiver does (express.raw, same limit) and answers 204. No signature check, no
 * database, no file: the cost of Node + Express + reading a 7-8 KB body.
 *
 *   node --import tsx bench/bare-express.ts [port]     prints "listening on http://…"
 */
import type { AddressInfo } from "node:net";
import express from "express";
import { BODY_LIMIT_BYTES } from "../src/http/server.ts";

const app = express();
app.disable("x-powered-by");
app.set("etag", false);
app.post("/github-webhook", express.raw({ type: () => true, limit: BODY_LIMIT_BYTES }), (req, res) => {
  if (!Buffer.isBuffer(req.body)) {
    res.status(400).end();
    return;
  }
  res.status(204).end();
});

const server = app.listen(Number(process.argv[2] ?? 0), "127.0.0.1", () => {
  const { port } = server.address() as AddressInfo;
  process.stdout.write(`bare express listening on http://127.0.0.1:${port}\n`);
});
// Same keep-alive timeout as deployq's listen().
server.keepAliveTimeout = 5000;

const stop = () => {
  server.close(() => process.exit(0));
  server.closeAllConnections();
};
process.once("SIGTERM", stop);
process.once("SIGINT", stop);
