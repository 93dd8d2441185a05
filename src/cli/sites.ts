import path from "node:path";
import type { Writable } from "node:stream";
import type { Settings } from "../config/load.ts";
import { DEPLOYMENT_NAME } from "../config/schema.ts";
import { DeployqError } from "../errors.ts";
import { NGINX_LOCK, lockName, usingWhenFree, withLockPrefix } from "../lock/lock.ts";
import { createRedlockLocks } from "../lock/redlock.ts";
import { silentLogger } from "../log.ts";
import { acquirePidLock } from "../pid-lock.ts";
import { queueLayout } from "../queue/layout.ts";
import { certificateStateDir, readCertificateState } from "../steps/certbot.ts";
import { nginxStateDir, ownedSiteFiles } from "../steps/nginx/manifest.ts";
import { removeSites } from "../steps/nginx/sites.ts";

/** Each nginx command (test, reload) is killed after this long. */
const COMMAND_TIMEOUT_MS = 120_000;

/**
 * `deployq sites remove <deployment>`: takes out the nginx site files a deployment owns
 * once its [nginx] table (or the whole deployment) is gone from the configuration. A
 * deploy never does this by itself: a table that disappears by mistake must not take
 * live sites down. Runs under the nginx lock (<lock_prefix>:nginx), like a deploy's sites step, and the same
 * way: test, reload, verify, and on failure the files go back byte for byte.
 */
export async function sitesRemove(settings: Settings, name: string, out: Writable = process.stdout): Promise<number> {
  if (!DEPLOYMENT_NAME.test(name)) throw new DeployqError("CONFIG", `${JSON.stringify(name)} is not a deployment name (letters, digits, - and _, at most 64)`);
  if (settings.deployments.get(name)?.nginx) {
    throw new DeployqError(
      "CONFIG",
      `${name} still deploys nginx sites (its nginx key in ${settings.configPath}), so its next deploy would put them back: ` +
        "remove that key and restart the workers first, then run this again",
    );
  }
  const stateDir = nginxStateDir(settings.dataDir);
  if ((await ownedSiteFiles(stateDir, name)).length === 0) {
    out.write(`${name} owns no nginx site files: nothing to remove\n`);
    return 0;
  }
  const result = await withNginxLock(settings, out, async () => {
    // Read again under the lock: a deploy may have changed the manifest meanwhile.
    const owned = await ownedSiteFiles(stateDir, name);
    const { removed } = await removeSites({ deployment: name, host: settings.nginx, stateDir }, { log: out, timeoutMs: COMMAND_TIMEOUT_MS });
    return owned.filter((o) => removed.includes(o.site));
  });
  for (const { site, file } of result) {
    const cert = await readCertificateState(certificateStateDir(settings.dataDir), site);
    out.write(`removed ${site}: ${file}${cert ? ` (its certificate stays; \`certbot delete --cert-name ${site}\` as root removes it)` : ""}\n`);
  }
  out.write(result.length > 0 ? "nginx tested, reloaded and verified without them\n" : `${name} owns no nginx site files: nothing to remove\n`);
  return 0;
}

/**
 * Runs fn holding <lock_prefix>:nginx. With REDIS_URL the lock is shared: wait for it. With
 * in-process locks it lives inside the workers process, so this command runs only while
 * no workers process does, and keeps one from starting meanwhile.
 */
async function withNginxLock<T>(settings: Settings, out: Writable, fn: () => Promise<T>): Promise<T> {
  const stop = new AbortController();
  const onSignal = () => stop.abort();
  process.once("SIGINT", onSignal).once("SIGTERM", onSignal);
  try {
    if (settings.secrets.redisUrls.length > 0) {
      const locks = withLockPrefix(createRedlockLocks({ urls: settings.secrets.redisUrls, ttlMs: settings.lockTtlMs, logger: silentLogger() }), settings.lockPrefix);
      try {
        out.write(`taking ${lockName(settings.lockPrefix, NGINX_LOCK)} (waits while a deploy changes nginx sites; Ctrl-C gives up)\n`);
        // Once held, the work is not cancelled: a half-done removal is worse than a late one.
        return await usingWhenFree(locks, NGINX_LOCK, stop.signal, () => fn());
      } finally {
        await locks.close();
      }
    }
    const held = acquirePidLock(
      path.join(queueLayout(settings.queuesDir).root, ".workers.lock"),
      (owner) =>
        `deployq process ${owner} runs the workers with in-process locks (REDIS_URL is unset), so ${lockName(settings.lockPrefix, NGINX_LOCK)} lives inside it: ` +
        "stop it (pm2 stop deployq-workers, or stop `deployq serve`), run this again, then start it; or set REDIS_URL so that the lock is shared",
    );
    try {
      return await fn();
    } finally {
      held.release();
    }
  } finally {
    process.off("SIGINT", onSignal).off("SIGTERM", onSignal);
  }
}
