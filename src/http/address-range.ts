import net from "node:net";

/**
 * IP addresses and CIDR ranges, as [server] trust_proxy and GitHub's `GET /meta` `hooks`
 * write them, matched with node's net.BlockList (which also matches an IPv4-mapped IPv6
 * address, ::ffff:1.2.3.4, against the IPv4 ranges: what a dual-stack socket reports).
 */
export interface AddressRange {
  address: string;
  prefix: number;
  family: "ipv4" | "ipv6";
}

/**
 * The names proxy-addr (express's `trust proxy`) understands besides addresses: loopback
 * (127.0.0.1/8, ::1/128), linklocal (169.254.0.0/16, fe80::/10), uniquelocal (10.0.0.0/8,
 * 172.16.0.0/12, 192.168.0.0/16, fc00::/7). https://github.com/jshttp/proxy-addr#proxyaddrreq-trust
 */
export const PROXY_NAMES = ["loopback", "linklocal", "uniquelocal"] as const;

/** "1.2.3.4", "1.2.3.0/24", "2a0a:a440::/29", "::1": the range (prefix 1 to 32 or 128), or undefined when it is none. */
export function parseRange(text: string): AddressRange | undefined {
  const slash = text.indexOf("/");
  const address = slash === -1 ? text : text.slice(0, slash);
  const version = net.isIP(address);
  if (version === 0) return undefined;
  const max = version === 4 ? 32 : 128;
  let prefix = max;
  if (slash !== -1) {
    const bits = text.slice(slash + 1);
    // Not /0 either: proxy-addr refuses it (a proxy "everywhere" would let anyone claim any address).
    if (!/^\d{1,3}$/.test(bits) || Number(bits) < 1 || Number(bits) > max) return undefined;
    prefix = Number(bits);
  }
  return { address, prefix, family: version === 4 ? "ipv4" : "ipv6" };
}

/** A trust_proxy entry: an address, a CIDR range, or one of proxy-addr's names. */
export function isProxyEntry(text: string): boolean {
  return (PROXY_NAMES as readonly string[]).includes(text) || parseRange(text) !== undefined;
}

/** A set of ranges to test addresses against. */
export class AddressRanges {
  private readonly list = new net.BlockList();

  constructor(readonly ranges: readonly AddressRange[]) {
    for (const r of ranges) this.list.addSubnet(r.address, r.prefix, r.family);
  }

  /** Whether `address` (as req.ip gives it: v4, v6, or v4-mapped v6) is within one of the ranges. */
  contains(address: string): boolean {
    const version = net.isIP(address);
    if (version === 0) return false;
    return this.list.check(address, version === 4 ? "ipv4" : "ipv6");
  }
}
