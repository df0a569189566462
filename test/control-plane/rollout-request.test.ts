import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ValidationError } from "../../src/common/validation.js";
import {
  type RolloutRequestInput,
  resolveTargets,
  validateRolloutRequest,
} from "../../src/control-plane/rollouts/rollout-request.js";
import type { MachineRecord, ReleaseRecord } from "../../src/control-plane/store/records.js";
import { OnFailure, RolloutStrategy } from "../../src/gen/nixfleet/v1/fleet_pb.js";
import { storePath } from "./helpers.js";

const base: RolloutRequestInput = {
  releaseId: "rel-00000000-0000-0000-0000-000000000000",
  target: { tags: ["web"], hosts: [] },
  strategy: RolloutStrategy.STAGED,
  batchSizes: ["1", "25%"],
  failureThreshold: "",
  onFailure: OnFailure.UNSPECIFIED,
  healthTimeoutSeconds: 0,
  soakSeconds: 0,
  cacheUrl: "",
};

function field(over: Partial<RolloutRequestInput>): string {
  try {
    validateRolloutRequest({ ...base, ...over });
  } catch (err) {
    assert.ok(err instanceof ValidationError, String(err));
    return err.field;
  }
  assert.fail(`accepted ${JSON.stringify(over)}`);
}

describe("CreateRollout validation", () => {
  it("fills the documented defaults", () => {
    const v = validateRolloutRequest(base);
    assert.equal(v.healthTimeoutSeconds, 300);
    assert.equal(v.failureThreshold, "0");
    assert.equal(v.onFailure, "pause");
    assert.deepEqual(v.target, { kind: "tags", tags: ["web"] });
    assert.deepEqual(
      validateRolloutRequest({ ...base, strategy: RolloutStrategy.CANARY, batchSizes: [] }).batchSizes,
      ["1", "100%"],
    );
    assert.equal(validateRolloutRequest({ ...base, onFailure: OnFailure.REVERT }).onFailure, "revert");
  });

  const bad: [string, Partial<RolloutRequestInput>, string][] = [
    ["no target", { target: { tags: [], hosts: [] } }, "target"],
    ["missing target message", { target: undefined }, "target"],
    ["both tags and hosts", { target: { tags: ["a"], hosts: ["b"] } }, "target"],
    ["a bad tag", { target: { tags: ["web", "bad tag"], hosts: [] } }, "target.tags[1]"],
    ["a bad host", { target: { tags: [], hosts: ["web-01", "../etc"] } }, "target.hosts[1]"],
    ["a duplicate host", { target: { tags: [], hosts: ["a", "b", "a"] } }, "target.hosts[2]"],
    ["no strategy", { strategy: RolloutStrategy.UNSPECIFIED }, "strategy"],
    ["unknown strategy number", { strategy: 42 }, "strategy"],
    ["STAGED without sizes", { batchSizes: [] }, "batch_sizes"],
    ["a bad size", { batchSizes: ["1", "lots"] }, "batch_sizes[1]"],
    ["sizes with CANARY", { strategy: RolloutStrategy.CANARY, batchSizes: ["1"] }, "batch_sizes"],
    ["a garbage threshold", { failureThreshold: "foo" }, "failure_threshold"],
    ["a threshold over 100%", { failureThreshold: "150%" }, "failure_threshold"],
    ["unknown on_failure", { onFailure: 7 }, "on_failure"],
    ["health timeout over a day", { healthTimeoutSeconds: 86_401 }, "health_timeout_seconds"],
    ["soak over a day", { soakSeconds: 100_000 }, "soak_seconds"],
    ["a cache URL that is not one", { cacheUrl: "not a url" }, "cache_url"],
    ["a cache URL with a newline", { cacheUrl: "https://cache.example.org/\nx" }, "cache_url"],
  ];
  for (const [name, over, expected] of bad) {
    it(`refuses ${name} (field ${expected})`, () => assert.equal(field(over), expected));
  }
});

function machine(id: string, over: Partial<MachineRecord> = {}): MachineRecord {
  return {
    id,
    lifecycle: "active",
    tags: ["web"],
    registeredAt: 0,
    lastSeen: null,
    currentGeneration: "",
    agentVersion: "",
    uptimeSeconds: 0,
    lastOutcome: 0,
    lastMessage: "",
    lastReportAt: null,
    health: null,
    desired: null,
    activeRollout: null,
    ...over,
  };
}

function release(...hosts: string[]): ReleaseRecord {
  return {
    id: "rel-1",
    entries: hosts.map((h) => ({ hostname: h, storePath: storePath(h), platform: "", tags: [] })),
    cacheUrl: "",
    flakeRef: "",
    flakeRev: "",
    createdAt: 0,
    createdBy: "",
    hostCount: hosts.length,
  };
}

describe("rollout target resolution", () => {
  const tags = validateRolloutRequest({ ...base, strategy: RolloutStrategy.CANARY, batchSizes: [] });
  const hosts = (...h: string[]) =>
    validateRolloutRequest({
      ...base,
      target: { tags: [], hosts: h },
      strategy: RolloutStrategy.ALL_AT_ONCE,
      batchSizes: [],
    });

  it("tag targets: only ACTIVE machines, sorted by id, each with its own store path", () => {
    const r = resolveTargets(
      tags,
      [
        machine("web-02"),
        machine("web-01"),
        machine("web-03", { lifecycle: "maintenance" }),
        machine("web-04", { lifecycle: "decommissioned" }),
      ],
      release("web-01", "web-02", "web-03", "web-04"),
    );
    assert.ok(r.ok);
    assert.deepEqual(r.batches, [
      [{ machineId: "web-01", targetGeneration: storePath("web-01") }],
      [{ machineId: "web-02", targetGeneration: storePath("web-02") }],
    ]);
  });

  it("tag targets: machines the release does not cover are skipped and reported", () => {
    const r = resolveTargets(tags, [machine("web-01"), machine("web-09")], release("web-01"));
    assert.ok(r.ok);
    assert.deepEqual(r.skipped, ["web-09"]);
  });

  it("says which tags matched no active machine", () => {
    const r = resolveTargets(
      validateRolloutRequest({ ...base, target: { tags: ["prod", "web"], hosts: [] } }),
      [machine("web-01", { lifecycle: "maintenance" })],
      release("web-01"),
    );
    assert.deepEqual(r, {
      ok: false,
      code: "failed_precondition",
      message: "no active machines match tags prod,web",
    });
  });

  it("says when no matching machine is in the release", () => {
    const r = resolveTargets(tags, [machine("web-01")], release("db-01"));
    assert.ok(
      !r.ok &&
        /none of the 1 active machines matching tags web has an entry in release rel-1/.test(r.message),
    );
  });

  it("host targets keep the operator's order and refuse unknown, inactive or uncovered hosts", () => {
    const ok = resolveTargets(
      hosts("web-02", "web-01"),
      [machine("web-01"), machine("web-02")],
      release("web-01", "web-02"),
    );
    assert.ok(ok.ok);
    assert.deepEqual(
      ok.batches[0]!.map((m) => m.machineId),
      ["web-02", "web-01"],
    );
    const unknown = resolveTargets(hosts("web-01", "ghost"), [machine("web-01")], release("web-01", "ghost"));
    assert.deepEqual(unknown.ok ? null : [unknown.code, /ghost is not registered/.test(unknown.message)], [
      "not_found",
      true,
    ]);
    const inactive = resolveTargets(
      hosts("web-01"),
      [machine("web-01", { lifecycle: "maintenance" })],
      release("web-01"),
    );
    assert.ok(
      !inactive.ok && inactive.code === "failed_precondition" && /maintenance/.test(inactive.message),
    );
    const uncovered = resolveTargets(hosts("web-01"), [machine("web-01")], release("db-01"));
    assert.ok(!uncovered.ok && /has no entry for host web-01/.test(uncovered.message));
  });

  it("refuses a machine already in an active rollout, naming it and the rollout", () => {
    const busy = machine("web-02", { activeRollout: { rolloutId: "r-x", batchIndex: 0, status: "paused" } });
    const r = resolveTargets(tags, [machine("web-01"), busy], release("web-01", "web-02"));
    assert.ok(!r.ok);
    assert.equal(r.code, "failed_precondition");
    assert.match(r.message, /machine web-02 is already in active rollout r-x \(paused\)/);
  });
});
