/**
 * The few error classes deployq branches on. Branch on `code`, never on a message.
 * Every message is written for an operator and says what to do next.
 */
export type ErrorCode =
  | "CONFIG"
  | "SIGNATURE"
  | "BAD_REQUEST"
  | "UNSUPPORTED_MEDIA_TYPE"
  | "PAYLOAD_TOO_LARGE"
  | "UNAVAILABLE"
  | "DATA_DIR_LOCKED"
  | "ENTRY"
  | "EXEC"
  | "DEPLOY"
  | "ROLLOUT"
  | "TRANSIENT"
  | "LOCK_BUSY"
  | "LOCK_LOST";

export class DeployqError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "DeployqError";
  }
}

export class ConfigError extends DeployqError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("CONFIG", message, options);
    this.name = "ConfigError";
  }
}

/**
 * A failure worth retrying: the remote could not be reached, the lock service is down.
 * Everything else (a failing build, a bad configuration) is permanent and not retried.
 */
export class TransientError extends DeployqError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("TRANSIENT", message, options);
    this.name = "TransientError";
  }
}

/** An HTTP-facing error: carries the status the receiver answers with. */
export class RequestError extends DeployqError {
  constructor(
    code: ErrorCode,
    readonly status: number,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(code, message, options);
    this.name = "RequestError";
  }
}

/**
 * The message an operator should read. drizzle wraps driver errors as "Failed query: …"
 * with the real reason (connection refused, relation missing) in `cause`.
 */
export function errorMessage(err: unknown): string {
  if (err instanceof Error) {
    if (err.message.startsWith("Failed query:") && err.cause instanceof Error) return errorMessage(err.cause);
    return err.message;
  }
  return String(err);
}

/** A connection URL fit for logs: the password replaced. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = "***";
    return u.toString();
  } catch {
    return "(unparseable URL)";
  }
}
