import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  jittered,
  MIN_DELAY_MS,
  nextCycleDelayMs,
  nextCyclePeriodSeconds,
  reconnectDelayMs,
  type ScheduleInput,
} from "../../src/agent/schedule.js";

const base = { pollIntervalSeconds: 60, retryIntervalSeconds: 30 };

describe("next cycle", () => {
  const table: Array<[string, ScheduleInput, number]> = [
    ["ok, no hint → pollInterval", { ...base, verdict: "ok" }, 60],
    ["ok, hint → hint", { ...base, verdict: "ok", pollHintSeconds: 5 }, 5],
    ["ok, hint 0 → pollInterval (back to own interval)", { ...base, verdict: "ok", pollHintSeconds: 0 }, 60],
    ["failed → retryInterval", { ...base, verdict: "failed" }, 30],
    ["failed with a hint → still retryInterval", { ...base, verdict: "failed", pollHintSeconds: 5 }, 30],
    ["hint longer than pollInterval is honoured", { ...base, verdict: "ok", pollHintSeconds: 120 }, 120],
  ];
  for (const [name, input, seconds] of table) {
    it(name, () => assert.equal(nextCyclePeriodSeconds(input), seconds));
  }

  it("jitters ±10 % around the period, measured from now", () => {
    const input: ScheduleInput = { ...base, verdict: "ok" };
    assert.equal(
      nextCycleDelayMs(input, () => 0),
      54_000,
    );
    assert.equal(
      nextCycleDelayMs(input, () => 0.5),
      60_000,
    );
    assert.equal(
      nextCycleDelayMs(input, () => 1),
      66_000,
    );
    for (let i = 0; i < 200; i++) {
      const d = nextCycleDelayMs(input);
      assert.ok(d >= 54_000 && d <= 66_000, String(d));
    }
  });

  it("never schedules an immediate re-tick", () => {
    assert.equal(
      jittered(0, 0.1, () => 0),
      MIN_DELAY_MS,
    );
    assert.ok(
      nextCycleDelayMs(
        { verdict: "failed", pollIntervalSeconds: 0.001, retryIntervalSeconds: 0.001 },
        () => 0,
      ) >= MIN_DELAY_MS,
    );
  });
});

describe("reconnect back-off", () => {
  const opts = { baseMs: 1000, maxMs: 60_000 };
  it("doubles per attempt up to the cap, with equal jitter", () => {
    const lows = [0, 1, 2, 3, 4, 5, 6, 7, 10, 100].map((a) => reconnectDelayMs(a, opts, () => 0));
    const highs = [0, 1, 2, 3, 4, 5, 6, 7, 10, 100].map((a) => reconnectDelayMs(a, opts, () => 1));
    assert.deepEqual(lows, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000]);
    assert.deepEqual(highs, [1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000, 60000]);
  });

  it("spreads a fleet: many agents reconnecting at the same attempt do not coincide", () => {
    const delays = new Set(Array.from({ length: 100 }, () => reconnectDelayMs(5, opts)));
    assert.ok(delays.size > 50, `only ${delays.size} distinct delays`);
  });
});
