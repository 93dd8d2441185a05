import type { Pm2Restart } from "../config/schema.ts";
import type { CommandContext } from "./command-context.ts";

export interface Pm2RestartOptions {
  pm2Home: string;
  /** The deployment's name: its apps carry DEPLOYQ_DEPLOYMENT=<name>, and only those are ever deleted. */
  deployment: string;
  /** The path the apps must run through: `<path>/current` (not resolved) or the in-place work tree. */
  appDir: string;
  restart: Pm2Restart;
  /** DEPLOYQ_* variables of this deploy, passed to the apps along with restart.env. */
  env: Record<string, string>;
}

/** Starts or reloads the ecosystem file's apps so that they run the release behind `appDir`; deletes this deployment's apps that are gone; `pm2 save`. */
export async function pm2Restart(_options: Pm2RestartOptions, _ctx: CommandContext): Promise<void> {
  throw new Error("pm2Restart: not implemented yet");
}

/** For `deployq check`, changing nothing: is pm2 usable with this PM2_HOME? */
export async function checkPm2(_pm2Home: string): Promise<{ ok: boolean; detail: string }> {
  return { ok: false, detail: "not implemented yet" };
}
