import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { parseDuration } from "../../src/common/duration.js";

describe("parseDuration", () => {
  const cases: [string | number, number | undefined][] = [
    ["30", 30],
    [30, 30],
    [0, 0],
    ["0", 0],
    ["1.5s", 1.5],
    ["500ms", 0.5],
    ["5m", 300],
    ["2h", 7200],
    ["1d", 86400],
    ["1.5h", 5400],
    ["2 days", 172800],
    [" 45s ", 45],
    ["", undefined],
    ["abc", undefined],
    ["-5s", undefined],
    [-1, undefined],
    [Number.NaN, undefined],
    [Number.POSITIVE_INFINITY, undefined],
    ["5 parsecs", undefined],
    ["s5", undefined],
    ["1e3", undefined],
  ];
  for (const [input, expected] of cases) {
    it(`${JSON.stringify(input)} → ${expected}`, () => assert.equal(parseDuration(input), expected));
  }
});
