import { describe, expect, it } from "vitest";
import { branchMatches, isValidBranchName } from "./branch.ts";

describe("branch patterns", () => {
  it.each([
    ["main", "main", true],
    ["main", "mainline", false],
    ["deploy-*", "deploy-blue", true],
    ["deploy-*", "deploy-", true],
    ["deploy-*", "deploy-a/b", false],
    ["release/**", "release/1.2/hotfix", true],
    ["v?", "v1", true],
    ["v?", "v10", false],
    ["a.b", "axb", false],
    ["feat+(x)", "feat+(x)", true],
  ])("%s matches %s: %s", (pattern, branch, expected) => {
    expect(branchMatches(pattern, branch)).toBe(expected);
  });
});

describe("branch names (git check-ref-format)", () => {
  it.each(["main", "deploy-blue", "release/1.2", "feature/$(id)", "ünïcode"])("accepts %s", (name) => {
    expect(isValidBranchName(name)).toBe(true);
  });
  it.each(["-x", "--upload-pack=x", "a..b", "a b", "a\u0000b", "a~1", "a^", "a:b", "a?", "a*", "a[b", "a\\b", ".hidden", "x/.y", "a.lock", "a/", "/a", "a//b", "a.", "@", "a@{1}", ""])(
    "refuses %j",
    (name) => {
      expect(isValidBranchName(name)).toBe(false);
    },
  );
});
