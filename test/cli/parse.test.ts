import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { UsageError } from "../../src/cli/errors.js";
import {
  hostMatcher,
  parseBatchSizes,
  parseEntry,
  parseSeconds,
  parseTags,
  parseThreshold,
  splitList,
} from "../../src/cli/parse.js";

const PATH = "/nix/store/0c8vxs2ja1k5f5v0r4zm0h4y3hs7a0fj-nixos-system-web-01";

describe("CLI value parsing", () => {
  it("splits comma lists, dropping blanks", () => {
    assert.deepEqual(splitList(" a, b,,c "), ["a", "b", "c"]);
    assert.deepEqual(splitList(undefined), []);
  });

  it("accepts batch sizes as counts and percentages", () => {
    assert.deepEqual(parseBatchSizes("1,25%,100%"), ["1", "25%", "100%"]);
  });

  for (const bad of ["", "0", "-1", "1.5", "0%", "101%", "abc", "10 %", "1,,x"]) {
    it(`rejects batch size ${JSON.stringify(bad)}`, () => {
      assert.throws(
        () => parseBatchSizes(bad),
        (e: Error) => e instanceof UsageError && /--batch-size/.test(e.message),
      );
    });
  }

  it("accepts thresholds as counts or percentages and rejects the rest", () => {
    assert.equal(parseThreshold("0"), "0");
    assert.equal(parseThreshold("10%"), "10%");
    for (const bad of ["-1", "x", "101%", "1.5", ""])
      assert.throws(() => parseThreshold(bad), /--failure-threshold/, bad);
  });

  it("parses durations in seconds, minutes and hours with a bound", () => {
    assert.equal(parseSeconds("300", "--health-timeout"), 300);
    assert.equal(parseSeconds("5m", "--health-timeout"), 300);
    assert.equal(parseSeconds("1h", "--health-timeout"), 3600);
    assert.throws(() => parseSeconds("2d", "--health-timeout"), /--health-timeout must be/);
    assert.throws(() => parseSeconds("100000", "--health-timeout"), /up to 86400s/);
    assert.throws(() => parseSeconds("1.5", "--soak"), /--soak/);
  });

  it("parses host=path entries and names what is wrong", () => {
    assert.deepEqual(parseEntry(`web-01=${PATH}`), { hostname: "web-01", storePath: PATH });
    assert.throws(() => parseEntry(PATH), /--entry must look like host=/);
    assert.throws(() => parseEntry(`web 01=${PATH}`), /--entry host "web 01"/);
    assert.throws(() => parseEntry("web-01=/nix/store/nope"), /--entry web-01: store path/);
    assert.throws(() => parseEntry(`web-01=${PATH};reboot`), /shell metacharacters/);
  });

  it("validates tags", () => {
    assert.deepEqual(parseTags("web,prod"), ["web", "prod"]);
    assert.throws(() => parseTags("web,bad tag"), /--tags: tag "bad tag"/);
  });

  it("matches hosts with globs", () => {
    const m = hostMatcher("web-*,db-0?");
    assert.deepEqual(["web-01", "web-10", "db-01", "db-100", "cache"].filter(m), [
      "web-01",
      "web-10",
      "db-01",
    ]);
    assert.ok(hostMatcher("a.b")("a.b"));
    assert.ok(!hostMatcher("a.b")("axb"), "a dot is literal, not a regex wildcard");
  });
});
