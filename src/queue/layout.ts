import path from "node:path";
import { DEPLOYMENT_NAME } from "../config/schema.ts";

/**
 * The queue root, as admins see it:
 *   .tmp/                   in-flight writes (same filesystem, swept at start)
 *   router/                 every accepted event, first stop
 *   deployments/<name>/     one queue per deployment
 *   dead-letter/<name>/     entries that failed for good, with their error (router/ for the router)
 *   paused/<name>.json      a deploy freeze: the deployment's entries wait (deployq pause / resume)
 */
export interface QueueLayout {
  root: string;
  tmp: string;
  router: string;
  deployment(name: string): string;
  deadLetter(name: string): string;
  /** The pause file of a deployment (present while it is paused). */
  pause(name: string): string;
}

export const ROUTER = "router";

export function queueLayout(root: string): QueueLayout {
  const abs = path.resolve(root);
  const checked = (name: string): string => {
    if (name !== ROUTER && !DEPLOYMENT_NAME.test(name)) throw new TypeError(`not a queue name: ${JSON.stringify(name)}`);
    return name;
  };
  return {
    root: abs,
    tmp: path.join(abs, ".tmp"),
    router: path.join(abs, ROUTER),
    deployment: (name) => {
      if (checked(name) === ROUTER) throw new TypeError('"router" is not a deployment');
      return path.join(abs, "deployments", name);
    },
    deadLetter: (name) => path.join(abs, "dead-letter", checked(name)),
    pause: (name) => {
      if (checked(name) === ROUTER) throw new TypeError('"router" is not a deployment');
      return path.join(abs, "paused", `${name}.json`);
    },
  };
}
