import { describe, expect, it } from "vitest";
import { entryName, isDeliveryId, isEntryName, monotonicEpochNs, parseEntryName } from "./entry-name.ts";

const GUID = "72d3162e-cc78-11e3-81ab-4c9367dc0958";

describe("entry names", () => {
  it("are <19-digit epoch ns>-<delivery id>.json and parse back", () => {
    const name = entryName(GUID, 1_700_000_000_123_456_789n);
    expect(name).toBe(`1700000000123456789-${GUID}.json`);
    expect(isEntryName(name)).toBe(true);
    expect(parseEntryName(name)).toEqual({ epochMs: 1_700_000_000_123, deliveryId: GUID });
  });

  it("zero-pads the epoch so that name order is time order", () => {
    const early = entryName(GUID, 5n);
    expect(early.startsWith("0000000000000000005-")).toBe(true);
    expect([entryName(GUID, 10n), early].sort()[0]).toBe(early);
  });

  it("keep increasing when the clock steps back", () => {
    const a = monotonicEpochNs(2_000_000_000_000_000_000n);
    const b = monotonicEpochNs(1_000_000_000_000_000_000n); // NTP stepped the clock back
    const c = monotonicEpochNs(1_000_000_000_000_000_000n);
    expect(b).toBeGreaterThan(a);
    expect(c).toBeGreaterThan(b);
    const names = [a, b, c].map((t) => entryName(GUID, t));
    expect([...names].sort()).toEqual(names);
  });

  it("never repeat in a tight loop", () => {
    const names = Array.from({ length: 10_000 }, () => entryName(GUID));
    expect(new Set(names).size).toBe(names.length);
    expect([...names].sort()).toEqual(names);
  });

  it("refuse anything but a GUID as the delivery ID", () => {
    for (const bad of ["../../etc/passwd", `${GUID}/..`, `${GUID}\u0000`, "", "x".repeat(5000), `${GUID}.json`, `-${GUID}`]) {
      expect(isDeliveryId(bad)).toBe(false);
      expect(() => entryName(bad)).toThrow(TypeError);
    }
  });

  it("recognise only complete entries", () => {
    const name = entryName(GUID, 1n);
    for (const other of [`.${name}`, `${name}~`, `${name}.123.abcd.tmp`, `${name}.error`, "README.md", name.replace(".json", ".txt")]) {
      expect(isEntryName(other)).toBe(false);
    }
  });
});
