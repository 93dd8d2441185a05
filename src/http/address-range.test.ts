import { describe, expect, it } from "vitest";
import { AddressRanges, isProxyEntry, parseRange } from "./address-range.ts";

describe("address ranges", () => {
  it("reads addresses and CIDR ranges of both families", () => {
    expect(parseRange("192.30.252.0/22")).toEqual({ address: "192.30.252.0", prefix: 22, family: "ipv4" });
    expect(parseRange("2a0a:a440::/29")).toEqual({ address: "2a0a:a440::", prefix: 29, family: "ipv6" });
    expect(parseRange("127.0.0.1")).toEqual({ address: "127.0.0.1", prefix: 32, family: "ipv4" });
    expect(parseRange("::1")).toEqual({ address: "::1", prefix: 128, family: "ipv6" });
    for (const bad of ["192.30.252.0/33", "::/129", "192.30.252/22", "github.com", "1.2.3.4/x", "1.2.3.4/"]) expect(parseRange(bad), bad).toBeUndefined();
    expect(isProxyEntry("loopback")).toBe(true);
    expect(isProxyEntry("localhost")).toBe(false);
  });

  it("matches GitHub's ranges, IPv4, IPv6 and IPv4-mapped IPv6 (a dual-stack socket's view of an IPv4 client)", () => {
    const github = new AddressRanges(["192.30.252.0/22", "185.199.108.0/22", "2a0a:a440::/29"].map((r) => parseRange(r)!));
    expect(github.contains("192.30.252.1")).toBe(true);
    expect(github.contains("192.30.255.255")).toBe(true);
    expect(github.contains("192.30.256.0")).toBe(false);
    expect(github.contains("192.31.0.1")).toBe(false);
    expect(github.contains("::ffff:185.199.110.153")).toBe(true);
    expect(github.contains("::ffff:185.199.112.1")).toBe(false);
    expect(github.contains("2a0a:a447:ffff::1")).toBe(true);
    expect(github.contains("2a0a:a448::1")).toBe(false);
    expect(github.contains("")).toBe(false);
    expect(github.contains("not an address")).toBe(false);
  });
});
