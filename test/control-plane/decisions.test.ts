import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  type FinishBatchInput,
  gateChanges,
  gateEvidenceFor,
  type HealthRow,
  type OutcomeRow,
  passingSince,
  planEndRollout,
  planFinishBatch,
  planPause,
  planResume,
  revertSet,
  type TouchedMachine,
} from "../../src/control-plane/rollouts/decisions.js";
import { Outcome } from "../../src/gen/nixfleet/v1/types_pb.js";

const touched: TouchedMachine[] = [
  {
    machineId: "a",
    previousRecorded: true,
    previousGeneration: "/nix/store/a1",
    previousCacheUrl: "https://c",
    previousRolloutId: "r-0",
  },
  {
    machineId: "b",
    previousRecorded: true,
    previousGeneration: null,
    previousCacheUrl: null,
    previousRolloutId: null,
  },
  {
    machineId: "c",
    previousRecorded: false,
    previousGeneration: null,
    previousCacheUrl: null,
    previousRolloutId: null,
  },
];

function finish(over: Partial<FinishBatchInput> & { onFailure?: "pause" | "revert"; batchCount?: number }) {
  const { onFailure = "pause", batchCount = 2, ...rest } = over;
  return planFinishBatch({
    rollout: { status: "running", onFailure, batchCount },
    batch: { index: 0, status: "deploying", startedSeq: 7 },
    startedSeq: 7,
    passed: true,
    message: "2 healthy, 0 unhealthy",
    touched,
    ...rest,
  });
}

describe("finishing a batch", () => {
  const cases: {
    name: string;
    input: Parameters<typeof finish>[0];
    batch: string | null;
    status: string | null;
    events: string[];
    audits: string[];
    revert: string[];
    ends: boolean;
  }[] = [
    {
      name: "a passing batch that is not the last: only the batch ends",
      input: {},
      batch: "succeeded",
      status: null,
      events: ["batch_succeeded"],
      audits: ["rollout.batch_succeed"],
      revert: [],
      ends: false,
    },
    {
      name: "the last batch passing completes the rollout",
      input: { batch: { index: 1, status: "deploying", startedSeq: 7 } },
      batch: "succeeded",
      status: "completed",
      events: ["batch_succeeded", "completed"],
      audits: ["rollout.batch_succeed", "rollout.complete"],
      revert: [],
      ends: true,
    },
    {
      name: "failing with on_failure PAUSE pauses and reverts nothing",
      input: { passed: false },
      batch: "failed",
      status: "paused",
      events: ["batch_failed", "paused"],
      audits: ["rollout.batch_fail", "rollout.pause"],
      revert: [],
      ends: false,
    },
    {
      name: "failing with on_failure REVERT fails the rollout and reverts every touched machine",
      input: { passed: false, onFailure: "revert" },
      batch: "failed",
      status: "failed",
      events: ["batch_failed", "reverted", "failed"],
      audits: ["rollout.batch_fail", "rollout.revert", "rollout.fail"],
      revert: ["a", "b"],
      ends: true,
    },
    {
      name: "failing the last batch with PAUSE still pauses (a resume retries it)",
      input: { passed: false, batch: { index: 1, status: "deploying", startedSeq: 7 } },
      batch: "failed",
      status: "paused",
      events: ["batch_failed", "paused"],
      audits: ["rollout.batch_fail", "rollout.pause"],
      revert: [],
      ends: false,
    },
  ];
  for (const c of cases) {
    it(c.name, () => {
      const plan = finish(c.input)!;
      assert.ok(plan);
      assert.equal(plan.batch?.status ?? null, c.batch);
      assert.equal(plan.status?.status ?? null, c.status);
      assert.deepEqual(
        plan.events.map((e) => e.type),
        c.events,
      );
      assert.deepEqual(
        plan.audits.map((a) => a.action),
        c.audits,
      );
      assert.deepEqual(
        plan.revert.map((r) => r.machineId),
        c.revert,
      );
      assert.equal(plan.releaseMachines, c.ends);
      assert.equal(plan.cancelUnfinished, c.ends && c.status !== "completed");
    });
  }

  it("names the failed batch (1-based) and the verdict in the pause reason", () => {
    const plan = finish({
      passed: false,
      message: "1 healthy, 1 unhealthy, threshold allows 0: b (timeout)",
    })!;
    assert.equal(
      plan.status?.reason,
      "batch 1 failed its health gate: 1 healthy, 1 unhealthy, threshold allows 0: b (timeout)",
    );
  });

  const refused: [string, Parameters<typeof finish>[0]][] = [
    [
      "the rollout is no longer running (an operator paused it)",
      { rollout: { status: "paused", onFailure: "pause", batchCount: 2 } },
    ],
    ["the batch is not deploying", { batch: { index: 0, status: "succeeded", startedSeq: 7 } }],
    [
      "the batch was re-started since the verdict",
      { batch: { index: 0, status: "deploying", startedSeq: 9 } },
    ],
    ["the batch does not exist", { batch: undefined }],
  ];
  for (const [why, input] of refused)
    it(`decides nothing when ${why}`, () => assert.equal(finish(input), null));
});

describe("the revert set", () => {
  it("restores what touched machines had, clears where there was nothing, skips untouched ones", () => {
    assert.deepEqual(revertSet(touched), [
      { machineId: "a", previous: { storePath: "/nix/store/a1", cacheUrl: "https://c", rolloutId: "r-0" } },
      { machineId: "b", previous: null },
    ]);
  });

  it("the REVERTED event counts restored and cleared machines", () => {
    const plan = finish({ passed: false, onFailure: "revert" })!;
    assert.equal(
      plan.events.find((e) => e.type === "reverted")?.message,
      "restored the previous desired generation of 1 machine, cleared 1 that had none: a, b",
    );
  });
});

describe("operator actions", () => {
  const from = ["running", "paused"] as const;
  it("cancel: refused for a finished rollout, naming why; with revert, reverts", () => {
    const refused = planEndRollout({
      id: "r-1",
      status: "completed",
      options: { status: "cancelled", revert: true, reason: "x", actor: "apikey:ops", from },
      touched,
    });
    assert.deepEqual(refused, {
      problem:
        "rollout r-1 cannot be cancelled: it is already completed; only a RUNNING or PAUSED rollout can be cancelled",
    });
    const ok = planEndRollout({
      id: "r-1",
      status: "paused",
      options: { status: "cancelled", revert: true, reason: "oops", actor: "apikey:ops", from },
      touched,
    });
    assert.ok("plan" in ok);
    assert.deepEqual(
      ok.plan.events.map((e) => [e.type, e.actor]),
      [
        ["reverted", "apikey:ops"],
        ["cancelled", "apikey:ops"],
      ],
    );
    assert.equal(ok.plan.cancelUnfinished, true);
  });

  it("cancel without revert leaves desired generations alone", () => {
    const ok = planEndRollout({
      id: "r-1",
      status: "running",
      options: { status: "cancelled", revert: false, reason: "", actor: "x", from },
      touched,
    });
    assert.ok("plan" in ok);
    assert.deepEqual(ok.plan.revert, []);
  });

  it("pause: only a running rollout; the reason defaults to who paused it", () => {
    assert.ok("problem" in planPause("r-1", "paused", 0, "", "x"));
    const ok = planPause("r-1", "running", 1, "", "apikey:ops");
    assert.ok("plan" in ok);
    assert.deepEqual(ok.plan.status, { status: "paused", reason: "paused by apikey:ops" });
    assert.equal(ok.plan.events[0]?.batchIndex, 1);
  });

  const resumes = [
    ["failed", 2],
    ["deploying", 2],
    ["pending", null],
    ["succeeded", null],
  ] as const;
  for (const [batchStatus, reset] of resumes) {
    it(`resume: a ${batchStatus} current batch is ${reset === null ? "left alone" : "deployed again"}`, () => {
      const ok = planResume("r-1", "paused", 2, batchStatus, "apikey:ops");
      assert.ok("plan" in ok);
      assert.equal(ok.resetBatch, reset);
      assert.deepEqual(ok.plan.status, { status: "running", reason: "" });
    });
  }
  it("resume: refused unless paused", () =>
    assert.ok("problem" in planResume("r-1", "running", 0, "failed", "x")));
});

describe("gate state changes", () => {
  it("writes what changed; events only for a new healthy or unhealthy state", () => {
    const stored = new Map([
      ["a", { state: "pending" as const, reason: "waiting" }],
      ["b", { state: "pending" as const, reason: "waiting" }],
      ["c", { state: "unhealthy" as const, reason: "x" }],
      ["d", { state: "healthy" as const, reason: "ok" }],
    ]);
    const { writes, events } = gateChanges(
      stored,
      [
        { machineId: "a", state: "pending", reason: "soaking: 5s of 60s" },
        { machineId: "b", state: "healthy", reason: "ok" },
        { machineId: "c", state: "unhealthy", reason: "y" },
        { machineId: "d", state: "healthy", reason: "ok" },
        { machineId: "ghost", state: "healthy", reason: "ok" },
      ],
      3,
    );
    assert.deepEqual(
      writes.map((w) => w.machineId),
      ["a", "b", "c"],
    );
    assert.deepEqual(
      events.map((e) => [e.type, e.machineId, e.batchIndex]),
      [["machine_healthy", "b", 3]],
    );
  });
});

describe("gate evidence (soak)", () => {
  const h = (seq: number, allPassed: boolean, at = seq * 10, machineId = "a"): HealthRow => ({
    machineId,
    allPassed,
    receivedAt: at,
    seq,
    failing: allPassed ? [] : ["nginx"],
  });
  const cases: [string, HealthRow[], number | null][] = [
    ["no health reports", [], null],
    ["one passing report starts the streak", [h(5, true)], 50],
    ["an unbroken run starts at its first report", [h(5, true), h(6, true), h(7, true)], 50],
    ["a failure restarts the streak after it", [h(5, true), h(6, false), h(7, true), h(8, true)], 70],
    ["a failing latest report means no streak", [h(5, true), h(6, false)], null],
    [
      "order is by sequence, not by arrival in the list or by time",
      [h(8, true, 10), h(6, false, 90), h(7, true, 20)],
      20,
    ],
  ];
  for (const [name, rows, since] of cases) it(name, () => assert.equal(passingSince(rows), since));

  const o = (seq: number, outcome: Outcome, revision: number, machineId = "a"): OutcomeRow => ({
    machineId,
    outcome,
    message: "",
    desiredGeneration: "/nix/store/t",
    desiredRevision: revision,
    receivedAt: seq * 10,
    seq,
  });
  it("the latest outcome about this assignment counts; older revisions' and outcome-less reports do not", () => {
    const [ev] = gateEvidenceFor(
      [
        {
          machineId: "a",
          targetGeneration: "/nix/store/t",
          currentGeneration: "/nix/store/o",
          assignedRevision: 50,
        },
      ],
      [
        o(9, Outcome.QUARANTINED, 40),
        o(5, Outcome.DEPLOYED, 50),
        o(10, Outcome.UNSPECIFIED, 50),
        o(11, Outcome.QUARANTINED, 49),
      ],
      [],
    );
    assert.equal(ev?.latestOutcome?.outcome, Outcome.DEPLOYED);
    assert.equal(ev?.latestOutcome?.seq, 5);
  });
  it("revision 0 (an agent that does not say) counts; evidence is per machine", () => {
    const out = gateEvidenceFor(
      [
        { machineId: "a", targetGeneration: "/nix/store/t", currentGeneration: "", assignedRevision: 50 },
        { machineId: "b", targetGeneration: "/nix/store/t", currentGeneration: "", assignedRevision: 50 },
      ],
      [o(5, Outcome.ROLLED_BACK, 0, "a")],
      [h(6, true, 60, "b"), h(7, false, 70, "b")],
    );
    assert.equal(out[0]?.latestOutcome?.outcome, Outcome.ROLLED_BACK);
    assert.equal(out[0]?.latestHealth, null);
    assert.equal(out[1]?.latestOutcome, null);
    assert.deepEqual(out[1]?.latestHealth, { allPassed: false, receivedAt: 70, seq: 7, failing: ["nginx"] });
    assert.equal(out[1]?.passingSince, null);
  });
});
