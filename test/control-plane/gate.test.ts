import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  batchVerdict,
  classifyMachine,
  type MachineGateInput,
} from "../../src/control-plane/rollouts/gate.js";
import { nextStep, operatorActionProblem } from "../../src/control-plane/rollouts/state-machine.js";
import { parseFailureThreshold } from "../../src/control-plane/rollouts/threshold.js";
import { Outcome } from "../../src/gen/nixfleet/v1/types_pb.js";
import { storePath } from "./helpers.js";

const OLD = storePath("nixos-system-web-01", 1);
const TARGET = storePath("nixos-system-web-01", 2);
const OTHER = storePath("nixos-system-web-01", 3);
const START = 1_000_000;
const S = 1000;

function input(over: Partial<MachineGateInput>): MachineGateInput {
  return {
    machineId: "web-01",
    target: TARGET,
    startedAt: START,
    startedSeq: START,
    healthTimeoutMs: 300 * S,
    soakMs: 0,
    currentGeneration: OLD,
    latestOutcome: null,
    latestHealth: null,
    passingSince: null,
    ...over,
  };
}

// Evidence is stamped with a wall time and a sequence position; here the sequence follows the time
// (seq = at, the batch start at START in both) except in the rows that pull them apart.
const pass = (at: number, seq = at) => ({ allPassed: true, receivedAt: at, seq, failing: [] });
const fail = (at: number, ...failing: string[]) => ({ allPassed: false, receivedAt: at, seq: at, failing });
const outcome = (o: Outcome, at: number, desired = TARGET, message = "", seq = at) => ({
  outcome: o,
  message,
  desiredGeneration: desired,
  receivedAt: at,
  seq,
});

describe("gate: per-machine classification", () => {
  const table: [string, Partial<MachineGateInput>, number, "pending" | "healthy" | "unhealthy", RegExp?][] = [
    ["nothing heard yet", {}, START + 5 * S, "pending", /waiting for the switch/],
    [
      "on target with a passing health report after the start",
      { currentGeneration: TARGET, latestHealth: pass(START + 2 * S) },
      START + 3 * S,
      "healthy",
    ],
    [
      "on target but no health report yet",
      { currentGeneration: TARGET, latestOutcome: outcome(Outcome.DEPLOYED, START + S) },
      START + 3 * S,
      "pending",
      /waiting for a passing health report/,
    ],
    [
      "passing health on target, but the latest report says it runs something else",
      { currentGeneration: OLD, latestHealth: pass(START + 2 * S) },
      START + 3 * S,
      "pending",
    ],
    [
      "a health report at the start's sequence position does not count (strictly after)",
      { currentGeneration: TARGET, latestHealth: pass(START) },
      START + 3 * S,
      "pending",
    ],
    [
      "a health report stored after the start counts even within the start's millisecond",
      { currentGeneration: TARGET, latestHealth: pass(START, START + 1) },
      START + 3 * S,
      "healthy",
    ],
    [
      "a report stored before the start never counts, whatever its time (the wall clock stepped back)",
      { latestOutcome: outcome(Outcome.ROLLED_BACK, START + 5 * S, TARGET, "", START - 1) },
      START + 6 * S,
      "pending",
    ],
    [
      "a failure stored after the start counts even when its time is before the start's",
      { latestOutcome: outcome(Outcome.ROLLED_BACK, START - 5 * S, TARGET, "", START + 1) },
      START + S,
      "unhealthy",
    ],
    [
      "ROLLED_BACK for the target after the start",
      { latestOutcome: outcome(Outcome.ROLLED_BACK, START + S, TARGET, "health check nginx failed") },
      START + 2 * S,
      "unhealthy",
      /ROLLED_BACK: health check nginx failed/,
    ],
    [
      "ROLLED_BACK_BY_REBOOT for the target (a reboot in the confirm window) is a failure",
      {
        latestOutcome: outcome(
          Outcome.ROLLED_BACK_BY_REBOOT,
          START + S,
          TARGET,
          "the host rebooted during the confirm window",
        ),
      },
      START + 2 * S,
      "unhealthy",
      /ROLLED_BACK_BY_REBOOT: the host rebooted during the confirm window/,
    ],
    [
      "FETCH_FAILED for the target is not definitive: pending while the agent retries",
      { latestOutcome: outcome(Outcome.FETCH_FAILED, START + S, TARGET, "cache unreachable") },
      START + 2 * S,
      "pending",
      /fetching the target generation failed; the agent retries: cache unreachable/,
    ],
    [
      "FETCH_FAILED until the health timeout makes the machine unhealthy, with the fetch error",
      { latestOutcome: outcome(Outcome.FETCH_FAILED, START + S, TARGET, "cache unreachable") },
      START + 400 * S,
      "unhealthy",
      /health timeout \(fetching the target generation failed; the agent retries: cache unreachable\)/,
    ],
    [
      "ROLLBACK_FAILED",
      { latestOutcome: outcome(Outcome.ROLLBACK_FAILED, START + S) },
      START + 2 * S,
      "unhealthy",
    ],
    ["APPLY_FAILED", { latestOutcome: outcome(Outcome.APPLY_FAILED, START + S) }, START + 2 * S, "unhealthy"],
    ["QUARANTINED", { latestOutcome: outcome(Outcome.QUARANTINED, START + S) }, START + 2 * S, "unhealthy"],
    [
      "FOREIGN_GENERATION",
      { latestOutcome: outcome(Outcome.FOREIGN_GENERATION, START + S, TARGET) },
      START + 2 * S,
      "unhealthy",
    ],
    [
      "a failure from before the start (stale, e.g. before a resume) does not count",
      { latestOutcome: outcome(Outcome.ROLLED_BACK, START - S) },
      START + 2 * S,
      "pending",
    ],
    [
      "a failure about another generation does not count",
      { latestOutcome: outcome(Outcome.FETCH_FAILED, START + S, OTHER) },
      START + 2 * S,
      "pending",
    ],
    [
      "a legacy failure that names no generation counts",
      { latestOutcome: outcome(Outcome.ROLLED_BACK, START + S, "") },
      START + 2 * S,
      "unhealthy",
    ],
    [
      "an outcome unknown to this control plane (a newer agent's) about the target is not healthy",
      { currentGeneration: TARGET, latestOutcome: outcome(77 as Outcome, START + S, TARGET, "verifying") },
      START + 2 * S,
      "unhealthy",
      /^UNKNOWN\(77\): outcome unknown to this control plane, counted as not healthy; upgrade the control plane \(verifying\)$/,
    ],
    [
      "an unknown outcome is not healthy even with passing health checks on the target",
      {
        currentGeneration: TARGET,
        latestOutcome: outcome(77 as Outcome, START + S, ""),
        latestHealth: pass(START + 2 * S),
      },
      START + 3 * S,
      "unhealthy",
      /^UNKNOWN\(77\)/,
    ],
    [
      "an unknown outcome from before the start does not count",
      { latestOutcome: outcome(77 as Outcome, START - S) },
      START + 2 * S,
      "pending",
    ],
    [
      "an unknown outcome about another generation does not count",
      { latestOutcome: outcome(77 as Outcome, START + S, OTHER) },
      START + 2 * S,
      "pending",
    ],
    [
      "APPLYING is never success",
      { currentGeneration: OLD, latestOutcome: outcome(Outcome.APPLYING, START + S) },
      START + 2 * S,
      "pending",
    ],
    [
      "a later DEPLOYED outcome supersedes an earlier FETCH_FAILED",
      {
        currentGeneration: TARGET,
        latestOutcome: outcome(Outcome.DEPLOYED, START + 3 * S),
        latestHealth: pass(START + 4 * S),
      },
      START + 5 * S,
      "healthy",
    ],
    [
      "failing health checks on the target",
      { currentGeneration: TARGET, latestHealth: fail(START + S, "nginx.service", "http://localhost/") },
      START + 2 * S,
      "unhealthy",
      /nginx\.service, http:\/\/localhost\//,
    ],
    [
      "a failing health report from before the start is ignored",
      { currentGeneration: TARGET, latestHealth: fail(START - 1) },
      START + 2 * S,
      "pending",
    ],
    [
      "health timeout elapsed without a decision",
      { currentGeneration: OLD },
      START + 300 * S,
      "unhealthy",
      /within the 300s health timeout/,
    ],
    [
      "health timeout while on target without health",
      { currentGeneration: TARGET },
      START + 301 * S,
      "unhealthy",
      /waiting for a passing health report/,
    ],
    ["just before the health timeout", { currentGeneration: OLD }, START + 300 * S - 1, "pending"],
    [
      "soak: passing, but not long enough yet",
      {
        currentGeneration: TARGET,
        soakMs: 60 * S,
        latestHealth: pass(START + 20 * S),
        passingSince: START + 10 * S,
      },
      START + 30 * S,
      "pending",
      /soaking: healthy for 20s of 60s/,
    ],
    [
      "soak: passing for the whole soak period",
      {
        currentGeneration: TARGET,
        soakMs: 60 * S,
        latestHealth: pass(START + 70 * S),
        passingSince: START + 10 * S,
      },
      START + 70 * S,
      "healthy",
    ],
    [
      "soak: a streak that began in time may finish after the health timeout",
      {
        currentGeneration: TARGET,
        healthTimeoutMs: 30 * S,
        soakMs: 60 * S,
        latestHealth: pass(START + 40 * S),
        passingSince: START + 20 * S,
      },
      START + 50 * S,
      "pending",
      /soaking/,
    ],
    [
      "soak: a streak that began after the health timeout fails",
      {
        currentGeneration: TARGET,
        healthTimeoutMs: 30 * S,
        soakMs: 60 * S,
        latestHealth: pass(START + 40 * S),
        passingSince: START + 35 * S,
      },
      START + 50 * S,
      "unhealthy",
      /began after the health timeout/,
    ],
    [
      "soak: a failing report during the soak is unhealthy",
      { currentGeneration: TARGET, soakMs: 60 * S, latestHealth: fail(START + 30 * S, "db") },
      START + 31 * S,
      "unhealthy",
    ],
  ];
  for (const [name, over, now, state, reason] of table) {
    it(name, () => {
      const gate = classifyMachine(input(over), now);
      assert.equal(gate.state, state, gate.reason);
      if (reason) assert.match(gate.reason, reason);
    });
  }

  it("a health report from the old generation never passes a batch (it is not evidence for the target)", () => {
    // The store only hands in health reports bound to the target; a machine still on OLD with no
    // target health stays pending, then times out.
    const gate = classifyMachine(input({ currentGeneration: OLD, latestHealth: null }), START + 10 * S);
    assert.equal(gate.state, "pending");
    assert.equal(classifyMachine(input({ currentGeneration: OLD }), START + 400 * S).state, "unhealthy");
  });
});

describe("gate: batch verdict", () => {
  const g = (...states: ("pending" | "healthy" | "unhealthy")[]) =>
    states.map((state, i) => ({ machineId: `m${i}`, state, reason: "" }));
  const t = (spec: string) =>
    parseFailureThreshold(spec) as Exclude<ReturnType<typeof parseFailureThreshold>, string>;

  it("waits while any machine is pending and the threshold still holds", () => {
    assert.equal(batchVerdict(g("healthy", "pending"), t("0")).kind, "pending");
    assert.equal(batchVerdict(g("unhealthy", "pending", "healthy"), t("1")).kind, "pending");
  });
  it("passes when all are decided and unhealthy ≤ threshold", () => {
    assert.equal(batchVerdict(g("healthy", "healthy"), t("0")).kind, "passed");
    assert.equal(batchVerdict(g("healthy", "unhealthy"), t("1")).kind, "passed");
  });
  it("fails as soon as more are unhealthy than allowed, without waiting for the rest", () => {
    assert.equal(batchVerdict(g("unhealthy", "pending", "pending"), t("0")).kind, "failed");
  });
  it("threshold 30% pauses at 4 of 10 unhealthy but not at 3", () => {
    const three = g(...Array(7).fill("healthy"), ...Array(3).fill("unhealthy"));
    const four = g(...Array(6).fill("healthy"), ...Array(4).fill("unhealthy"));
    assert.equal(batchVerdict(three, t("30%")).kind, "passed");
    const v = batchVerdict(four, t("30%"));
    assert.equal(v.kind, "failed");
    assert.equal(v.unhealthy, 4);
  });
});

describe("rollout state machine", () => {
  const threshold = parseFailureThreshold("0") as Exclude<ReturnType<typeof parseFailureThreshold>, string>;
  const rollout = (status: "running" | "paused" | "completed", current: number, ...batches: string[]) => ({
    status,
    currentBatch: current,
    onFailure: "pause" as const,
    batches: batches.map((s) => ({ status: s as "pending" })),
  });
  const healthy = [{ machineId: "a", state: "healthy" as const, reason: "" }];
  const unhealthy = [{ machineId: "a", state: "unhealthy" as const, reason: "" }];

  it("starts a pending batch", () => {
    assert.deepEqual(nextStep(rollout("running", 0, "pending", "pending"), undefined, threshold), {
      kind: "start-batch",
      index: 0,
    });
  });
  it("does nothing unless running", () => {
    assert.equal(nextStep(rollout("paused", 0, "deploying"), healthy, threshold).kind, "none");
    assert.equal(
      nextStep(rollout("completed", 1, "succeeded", "succeeded"), undefined, threshold).kind,
      "none",
    );
  });
  it("moves to the next batch when one passes, completes after the last", () => {
    const mid = nextStep(rollout("running", 0, "deploying", "pending"), healthy, threshold);
    assert.equal(mid.kind, "batch-passed");
    assert.equal(mid.kind === "batch-passed" && mid.next, 1);
    const last = nextStep(rollout("running", 1, "succeeded", "deploying"), healthy, threshold);
    assert.equal(last.kind === "batch-passed" && last.next, null);
  });
  it("fails a batch with the rollout's on_failure", () => {
    const step = nextStep(
      { ...rollout("running", 0, "deploying"), onFailure: "revert" },
      unhealthy,
      threshold,
    );
    assert.equal(step.kind, "batch-failed");
    assert.equal(step.kind === "batch-failed" && step.onFailure, "revert");
  });
  it("re-deploys a failed batch of a running (resumed) rollout", () => {
    assert.deepEqual(nextStep(rollout("running", 1, "succeeded", "failed"), undefined, threshold), {
      kind: "start-batch",
      index: 1,
    });
  });

  it("allows operator actions only from the right status", () => {
    assert.equal(operatorActionProblem("running", "pause"), undefined);
    assert.match(operatorActionProblem("paused", "pause")!, /only a RUNNING rollout can be paused/);
    assert.equal(operatorActionProblem("paused", "resume"), undefined);
    assert.match(operatorActionProblem("running", "resume")!, /only a PAUSED rollout can be resumed/);
    assert.equal(operatorActionProblem("running", "cancel"), undefined);
    assert.equal(operatorActionProblem("paused", "cancel"), undefined);
    for (const s of ["completed", "failed", "cancelled"] as const)
      assert.ok(operatorActionProblem(s, "cancel"));
  });
});
