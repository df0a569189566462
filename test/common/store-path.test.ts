import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { isStorePath, parseStorePath, storePathProblem } from "../../src/common/store-path.js";

const HASH = "0c8vxs2ja1k5f5v0r4zm0h4y3hs7a0fj";

const good: [string, string][] = [
  ["typical system closure", `/nix/store/${HASH}-nixos-system-web-01-25.05.20250101.abcdef0`],
  ["short name", `/nix/store/${HASH}-a`],
  ["name with plus and underscore", `/nix/store/${HASH}-gtk+3_x`],
  ["name with equals", `/nix/store/${HASH}-foo=bar`],
  ["name with dots inside", `/nix/store/${HASH}-hello-2.12.1`],
  ["name of maximal length", `/nix/store/${HASH}-${"n".repeat(211)}`],
  ["all base32 digits", "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-x"],
];

const bad: [string, string, RegExp][] = [
  ["empty", "", /empty/],
  ["relative path", `nix/store/${HASH}-x`, /must start with \/nix\/store\//],
  ["other store dir", `/gnu/store/${HASH}-x`, /must start with/],
  ["the store itself", "/nix/store/", /must be \/nix\/store\/<32/],
  ["file inside a closure", `/nix/store/${HASH}-x/bin/switch-to-configuration`, /not a file inside it/],
  ["trailing slash", `/nix/store/${HASH}-x/`, /not a file inside it/],
  ["dot-dot traversal", `/nix/store/${HASH}-x/../../etc/passwd`, /not a file inside it|'\.\.'/],
  ["dot-dot in the name", `/nix/store/${HASH}-..`, /'\.\.'/],
  ["name starting with a dot", `/nix/store/${HASH}-.hidden`, /must not start with '\.'/],
  ["hash too short", "/nix/store/0c8vxs2ja1k5f5v0r4zm0h4y3hs7a0f-x", /32-character hash/],
  ["hash too long", `/nix/store/${HASH}a-x`, /32-character hash/],
  ["uppercase hash", `/nix/store/${HASH.toUpperCase()}-x`, /Nix base32/],
  ["hash with e (not base32)", "/nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-x", /Nix base32/],
  ["hash with u (not base32)", "/nix/store/uuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuu-x", /Nix base32/],
  ["no name", `/nix/store/${HASH}-`, /must not be empty/],
  ["no dash", `/nix/store/${HASH}`, /32-character hash/],
  ["space in name", `/nix/store/${HASH}-a b`, /no whitespace/],
  ["newline in name", `/nix/store/${HASH}-a\nb`, /no whitespace/],
  ["tab in name", `/nix/store/${HASH}-a\tb`, /no whitespace/],
  ["semicolon", `/nix/store/${HASH}-x;reboot`, /shell metacharacters/],
  ["command substitution", `/nix/store/${HASH}-$(reboot)`, /shell metacharacters/],
  ["backtick", `/nix/store/${HASH}-\`id\``, /shell metacharacters/],
  ["pipe", `/nix/store/${HASH}-a|b`, /shell metacharacters/],
  ["ampersand", `/nix/store/${HASH}-a&b`, /shell metacharacters/],
  ["redirection", `/nix/store/${HASH}-a>b`, /shell metacharacters/],
  ["glob question mark", `/nix/store/${HASH}-a?`, /shell metacharacters/],
  ["glob star", `/nix/store/${HASH}-a*`, /shell metacharacters/],
  ["quote", `/nix/store/${HASH}-a'b`, /shell metacharacters/],
  ["NUL byte", `/nix/store/${HASH}-a\u0000b`, /shell metacharacters/],
  ["non-ASCII name", `/nix/store/${HASH}-café`, /shell metacharacters/],
  ["name over 211 characters", `/nix/store/${HASH}-${"n".repeat(212)}`, /at most 255/],
  ["megabyte of input", `/nix/store/${HASH}-${"n".repeat(1 << 20)}`, /at most 255/],
  ["leading whitespace", ` /nix/store/${HASH}-x`, /must start with/],
];

describe("store path validation", () => {
  for (const [label, value] of good) {
    it(`accepts ${label}`, () => {
      assert.equal(storePathProblem(value), undefined);
      assert.ok(isStorePath(value));
    });
  }
  for (const [label, value, reason] of bad) {
    it(`rejects ${label}`, () => {
      const problem = storePathProblem(value);
      assert.ok(problem, `${JSON.stringify(value.slice(0, 60))} was accepted`);
      assert.match(problem, reason);
      assert.equal(isStorePath(value), false);
    });
  }

  it("splits a valid path into hash and name", () => {
    assert.deepEqual(parseStorePath(`/nix/store/${HASH}-nixos-system-x`), {
      path: `/nix/store/${HASH}-nixos-system-x`,
      hash: HASH,
      name: "nixos-system-x",
    });
  });

  it("parse errors quote the input and say why", () => {
    assert.throws(
      () => parseStorePath("/etc/passwd"),
      /invalid store path "\/etc\/passwd": must start with \/nix\/store\//,
    );
  });
});
