import type { NextFunction, Request, RequestHandler, Response } from "express";
import { RequestError } from "../errors.ts";

/**
 * Webhook bodies are read whole before their signature can be checked, so each request in
 * flight may hold up to the body limit (25 MB) in memory: 60 concurrent 25 MB bodies with bad
 * signatures took a receiver from 180 to 1,588 MB (issue 14, item 8). Bodies are admitted
 * against one budget per process (memory is per process), before a byte of them is read.
 */
export const BODY_BUDGET_BYTES = 100 * 1024 * 1024;
/** A body up to this size counts as small: ordinary push payloads are a few KB to a few hundred KB. */
export const SMALL_BODY_BYTES = 1024 * 1024;
/**
 * Larger bodies must leave this much of the budget free, so that a flood of large bodies
 * (three 25 MB ones fill the rest) does not hold up ordinary deliveries.
 */
export const SMALL_BODY_RESERVE_BYTES = 16 * 1024 * 1024;
/** What a refused request is told to wait: a body takes seconds to arrive, not minutes. */
export const RETRY_AFTER_S = 10;

export class BodyBudget {
  #reserved = 0;

  constructor(
    readonly limit: number,
    readonly reserve: number,
    readonly smallBody: number,
  ) {}

  /** Bytes reserved by the bodies now in flight. */
  get reserved(): number {
    return this.#reserved;
  }

  /** Reserves `bytes` if they fit; a body larger than `smallBody` must leave `reserve` free. */
  tryReserve(bytes: number): boolean {
    const room = bytes <= this.smallBody ? this.limit : this.limit - this.reserve;
    if (this.#reserved + bytes > room) return false;
    this.#reserved += bytes;
    return true;
  }

  release(bytes: number): void {
    this.#reserved -= bytes;
  }
}

/** The receiver's budget: one per process, shared by every app in it. */
export const receiverBodyBudget = new BodyBudget(BODY_BUDGET_BYTES, SMALL_BODY_RESERVE_BYTES, SMALL_BODY_BYTES);

const megabytes = (bytes: number) => `${Math.round(bytes / (1024 * 1024))} MB`;

/**
 * Mounted right before the body parser. A request reserves its declared Content-Length, or
 * the whole body limit when the length is not known before reading (chunked, or a
 * Content-Encoding, which is buffered decompressed), and gets it back when its response is
 * done or its connection closes. One that does not fit is answered 503 at once, with
 * Retry-After and `connection: close`, and its body is never buffered: Node discards what
 * of it arrives until the socket is closed right after the answer.
 * A declared length over the limit is left to the parser's 413, which buffers nothing.
 */
export function admitBody(bodyLimit: number, budget: BodyBudget = receiverBodyBudget): RequestHandler {
  return (req: Request, res: Response, next: NextFunction) => {
    const bytes = bytesToReserve(req, bodyLimit);
    if (bytes === 0) return next();
    if (!budget.tryReserve(bytes)) {
      res.setHeader("retry-after", String(RETRY_AFTER_S));
      res.setHeader("connection", "close");
      return next(
        new RequestError(
          "UNAVAILABLE",
          503,
          `the receiver is already reading ${megabytes(budget.reserved)} of request bodies (its budget is ${megabytes(budget.limit)}); ` +
            `nothing was read or written: redeliver it in ${RETRY_AFTER_S} seconds (GitHub does not retry by itself: Recent Deliveries → Redeliver, or the API)`,
        ),
      );
    }
    const socket = req.socket;
    let held = true;
    const done = () => {
      if (!held) return;
      held = false;
      budget.release(bytes);
      res.off("close", done);
      socket.off("close", done);
    };
    // A response emits "close" once finished or when its connection is lost; the socket's own
    // "close" covers a pipelined request whose response never got the socket.
    res.on("close", done);
    socket.on("close", done);
    next();
  };
}

function bytesToReserve(req: Request, bodyLimit: number): number {
  const declared = req.headers["content-length"];
  const chunked = req.headers["transfer-encoding"] !== undefined;
  if (!chunked && (declared === undefined || Number(declared) === 0)) return 0; // no body
  const encoding = req.headers["content-encoding"]?.trim().toLowerCase();
  // Decompressed, it is buffered up to the limit whatever its length on the wire; chunked, its length is unknown.
  if ((encoding !== undefined && encoding !== "identity") || chunked) return bodyLimit;
  const length = Number(declared);
  // Node's parser has checked it is a number; one over the limit gets the parser's 413, which buffers nothing.
  return length > bodyLimit ? 0 : length;
}
