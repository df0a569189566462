import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  batchSizesProblem,
  effectiveBatchSizes,
  parseBatchSize,
  planBatches,
} from "../../src/control-plane/rollouts/batch-plan.js";
import { allowedUnhealthy, parseFailureThreshold } from "../../src/control-plane/rollouts/threshold.js";

const machines = (n: number) => Array.from({ length: n }, (_, i) => `m${String(i).padStart(2, "0")}`);
const sizes = (batches: string[][]) => batches.map((b) => b.length);

describe("batch planning", () => {
  const table: [string, number, string[], number[]][] = [
    ["all at once", 5, effectiveBatchSizes("all_at_once", []), [5]],
    ["canary", 5, effectiveBatchSizes("canary", []), [1, 4]],
    ["canary with a single machine", 1, effectiveBatchSizes("canary", []), [1]],
    ["counts", 10, ["2", "3"], [2, 8]],
    ["counts, last takes the rest", 10, ["1", "2", "3"], [1, 2, 7]],
    ["percent of the remaining, rounded up", 10, ["25%", "50%", "100%"], [3, 4, 3]],
    ["percentages of few machines never make an empty batch", 3, ["10%", "10%", "10%"], [1, 1, 1]],
    ["sizes that find nobody left are dropped", 2, ["1", "1", "1", "1"], [1, 1]],
    ["a count larger than the fleet", 3, ["5", "1"], [3]],
    ["1 then 100%", 4, ["1", "100%"], [1, 3]],
  ];
  for (const [name, n, spec, expected] of table) {
    it(name, () => {
      const batches = planBatches(machines(n), spec);
      assert.deepEqual(sizes(batches), expected);
      // Every machine exactly once, in the given order.
      assert.deepEqual(batches.flat(), machines(n));
    });
  }

  it("keeps the order machines were given in (the canary is the first)", () => {
    assert.deepEqual(planBatches(["web-09", "web-01", "web-05"], ["1", "100%"]), [
      ["web-09"],
      ["web-01", "web-05"],
    ]);
  });

  it("parses counts and percentages and refuses everything else", () => {
    assert.deepEqual(parseBatchSize("3"), { kind: "count", count: 3 });
    assert.deepEqual(parseBatchSize("25%"), { kind: "percent", percent: 25 });
    assert.deepEqual(parseBatchSize("100%"), { kind: "percent", percent: 100 });
    for (const bad of [
      "0",
      "-1",
      "1.5",
      "01",
      "0%",
      "101%",
      "25 %",
      "%",
      "",
      "abc",
      "1e3",
      " 2",
      "2 ",
      "50%%",
    ]) {
      assert.equal(typeof parseBatchSize(bad), "string", `${JSON.stringify(bad)} should be refused`);
    }
  });

  it("validates STAGED batch_sizes, naming the bad index", () => {
    assert.equal(batchSizesProblem(["1", "25%"]), undefined);
    assert.deepEqual(batchSizesProblem([])?.index, null);
    assert.equal(batchSizesProblem(["1", "x", "2"])?.index, 1);
    assert.match(batchSizesProblem(["1", "150%"])!.reason, /more than 100%/);
    assert.match(batchSizesProblem(Array(101).fill("1"))!.reason, /at most 100/);
  });
});

describe("failure threshold", () => {
  it("parses counts and percentages; empty means 0", () => {
    assert.deepEqual(parseFailureThreshold(""), { kind: "count", count: 0 });
    assert.deepEqual(parseFailureThreshold("0"), { kind: "count", count: 0 });
    assert.deepEqual(parseFailureThreshold("2"), { kind: "count", count: 2 });
    assert.deepEqual(parseFailureThreshold("30%"), { kind: "percent", percent: 30 });
    assert.deepEqual(parseFailureThreshold("0%"), { kind: "percent", percent: 0 });
  });

  it("refuses garbage instead of coercing it", () => {
    for (const bad of ["foo", "-1", "1.5", "101%", "10 %", "%", "02", "ten", "1,5"]) {
      assert.equal(typeof parseFailureThreshold(bad), "string", JSON.stringify(bad));
    }
  });

  const table: [string, number, number][] = [
    ["0", 10, 0],
    ["2", 10, 2],
    ["30%", 10, 3],
    ["10%", 5, 0],
    ["50%", 5, 2],
    ["100%", 7, 7],
    ["25%", 4, 1],
  ];
  for (const [spec, size, allowed] of table) {
    it(`"${spec}" of a batch of ${size} tolerates ${allowed}`, () => {
      const t = parseFailureThreshold(spec);
      assert.notEqual(typeof t, "string");
      assert.equal(allowedUnhealthy(t as Exclude<typeof t, string>, size), allowed);
    });
  }
});
