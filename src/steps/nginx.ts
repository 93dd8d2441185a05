import type { NginxHost, NginxSites } from "../config/schema.ts";
import type { CommandContext } from "./command-context.ts";

export interface SiteFile {
  /** `<site>` of `<site>.conf`. */
  name: string;
  /** The file's content, as it will be written into conf_dir. */
  text: string;
}

export interface DeploySitesOptions {
  deployment: string;
  /** The release (or in-place work tree) holding `sites.sites_dir`. */
  sourceDir: string;
  sites: NginxSites;
  host: NginxHost;
  /** `<dataDir>/nginx`: which files of conf_dir each deployment owns. */
  stateDir: string;
  /** Called with the sites that are new or changed, before any file in conf_dir changes (certbot). */
  beforeActivate?: (sites: SiteFile[]) => Promise<void>;
}

export interface DeploySitesResult {
  /** Sites written (new or changed). */
  changed: string[];
  /** Sites removed because the release no longer has them. */
  removed: string[];
}

/**
 * Deploys the release's sites into conf_dir, tests and reloads nginx and verifies that the
 * reload took effect; on any failure puts the previous files back byte for byte, reloads
 * again and throws with nginx's own message. The caller holds the deployq:nginx lock.
 */
export async function deploySites(_options: DeploySitesOptions, _ctx: CommandContext): Promise<DeploySitesResult> {
  throw new Error("deploySites: not implemented yet");
}

/** For `deployq check`, changing nothing. */
export async function checkNginx(_host: NginxHost, _confDirs: string[]): Promise<Array<{ name: string; ok: boolean; detail: string }>> {
  return [];
}
