import type { CertbotHost } from "../config/schema.ts";
import type { CommandContext } from "./command-context.ts";

/** Every name in the `server_name` directives of an nginx site file. */
export function serverNames(_confText: string): string[] {
  return [];
}

export interface EnsureCertificateOptions {
  /** The site, used as `--cert-name`. */
  site: string;
  /** The site file's server names (filtered here to those certbot can prove over HTTP). */
  names: string[];
  certbot: CertbotHost;
  /** `<dataDir>/certificates`: the domain list last obtained per certificate. */
  stateDir: string;
}

/** Obtains (or reissues, same --cert-name) the site's certificate when its domain list changed; does nothing otherwise. The caller holds deployq:nginx. */
export async function ensureCertificate(_options: EnsureCertificateOptions, _ctx: CommandContext): Promise<"unchanged" | "obtained" | "none"> {
  throw new Error("ensureCertificate: not implemented yet");
}

/** For `deployq check`, changing nothing. */
export async function checkCertbot(_certbot: CertbotHost): Promise<Array<{ name: string; ok: boolean; detail: string }>> {
  return [];
}
