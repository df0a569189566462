/**
 * A newer agent against today's control plane: reports carrying enum values this control plane
 * was built without (a new outcome, a new health-check kind) go over real gRPC and Connect JSON
 * to the real server. They are accepted and stored as their number, shown as UNKNOWN(n), and
 * the rollout gate counts an unknown outcome as not healthy and an unknown kind's result by its
 * pass/fail — instead of the report being refused and the gate timing out.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import https from "node:https";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { enumWord } from "../../src/cli/output.js";
import {
  BatchStatus,
  MachineGateState,
  RolloutEventType,
  RolloutStatus,
  RolloutStrategy,
} from "../../src/gen/nixfleet/v1/fleet_pb.js";
import { type HealthCheckKind, Outcome, OutcomeSchema } from "../../src/gen/nixfleet/v1/types_pb.js";
import { createPki, type Pki } from "../fixtures/pki.js";
import { makeTempDir, removeTempDir } from "../fixtures/tmp.js";
import { Harness } from "./harness.js";
import { storePath, waitFor } from "./helpers.js";
import { SimAgent } from "./sim-agent.js";

/** Values no released nixfleet defines: what a newer agent might send. */
const NEW_OUTCOME = 42 as Outcome;
const NEW_KIND = 9 as HealthCheckKind;

/** POSTs a Connect JSON request with the machine's client certificate (no generated client). */
function connectJson(h: Harness, machineId: string, method: string, body: unknown) {
  const cert = h.pki.client(machineId);
  const url = new URL(`/nixfleet.v1.AgentService/${method}`, h.url);
  return new Promise<{ status: number; body: string }>((resolve, reject) => {
    const req = https.request(
      url,
      {
        method: "POST",
        ca: readFileSync(h.pki.ca),
        cert: readFileSync(cert.cert),
        key: readFileSync(cert.key),
        headers: { "content-type": "application/json", "connect-protocol-version": "1" },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString() }));
      },
    );
    req.on("error", reject);
    req.end(JSON.stringify(body));
  });
}

describe("forward compatibility: enum values from a newer agent", () => {
  const dir = makeTempDir();
  let pki: Pki;
  let h: Harness;
  before(async () => {
    pki = createPki(join(dir, "pki"));
    h = await Harness.start(pki, { executorTickMs: 50 });
  });
  after(async () => {
    await h.close();
    removeTempDir(dir);
  });

  async function rolloutFor(agents: SimAgent[], failureThreshold: string) {
    const { release } = await h.fleet("deploy").createRelease({
      entries: agents.map((a) => ({ hostname: a.id, storePath: storePath(`sys-${a.id}`, 2) })),
      cacheUrl: "https://cache.example.org",
    });
    const { rollout } = await h.fleet("deploy").createRollout({
      releaseId: release!.id,
      target: { hosts: agents.map((a) => a.id) },
      strategy: RolloutStrategy.ALL_AT_ONCE,
      failureThreshold,
      healthTimeoutSeconds: 3600,
    });
    return rollout!.id;
  }

  const rollout = async (id: string) => h.fleet("readonly").getRollout({ rolloutId: id });

  it("an unknown outcome over gRPC is stored, shown as UNKNOWN(n), and fails the machine's gate", async () => {
    const a = new SimAgent("newer-01", storePath("sys-newer-01", 1), ["newer"], h);
    await a.register();
    const id = await rolloutFor([a], "0");
    const desired = await waitFor("an assignment", async () => (await a.desired()).generation ?? null);
    await a.client.report({
      machineId: a.id,
      currentGeneration: a.current,
      desiredGeneration: desired.hash,
      desiredRevision: desired.revision,
      outcome: NEW_OUTCOME,
      success: false,
      message: "something only a newer agent knows",
      deploymentId: "d-newer-01",
    });

    const { machine } = await h.fleet("readonly").getMachine({ machineId: a.id });
    assert.equal(machine!.lastOutcome, NEW_OUTCOME, "stored as its number");
    assert.equal(enumWord(OutcomeSchema, machine!.lastOutcome), "UNKNOWN(42)", "as the CLI shows it");
    assert.equal(machine!.lastMessage, "something only a newer agent knows");

    const paused = await waitFor("the rollout paused", async () => {
      const r = await rollout(id);
      return r.rollout!.status === RolloutStatus.PAUSED ? r : null;
    });
    const batch = paused.rollout!.batches[0]!;
    assert.equal(batch.status, BatchStatus.FAILED);
    assert.equal(batch.machines[0]!.state, MachineGateState.UNHEALTHY);
    assert.match(
      batch.machines[0]!.reason,
      /^UNKNOWN\(42\): outcome unknown to this control plane, counted as not healthy; upgrade the control plane \(something only a newer agent knows\)$/,
    );
    const unhealthy = paused.events.find((e) => e.type === RolloutEventType.MACHINE_UNHEALTHY);
    assert.match(unhealthy?.message ?? "", /^UNKNOWN\(42\): outcome unknown to this control plane/);
    assert.ok(
      h.logLines.some((l) => l.includes("stored outcome UNKNOWN(42) from newer-01")),
      "the control plane warns that an agent is newer",
    );
  });

  it("over Connect JSON the number is accepted and FleetService JSON carries it back", async () => {
    const g = storePath("sys-newer-02", 1);
    const res = await connectJson(h, "newer-02", "Report", {
      machineId: "newer-02",
      currentGeneration: g,
      outcome: 42,
      success: true,
    });
    assert.equal(res.status, 200, res.body);
    const health = await connectJson(h, "newer-02", "ReportHealth", {
      machineId: "newer-02",
      currentGeneration: g,
      allPassed: true,
      results: [{ name: "probe", kind: 9, passed: true }],
    });
    assert.equal(health.status, 200, health.body);
    const { machine } = await h.fleet("readonly", "connect").getMachine({ machineId: "newer-02" });
    assert.equal(machine!.lastOutcome, NEW_OUTCOME);
  });

  it("a result of an unknown health-check kind counts by its pass/fail", async () => {
    const ok = new SimAgent("newer-03", storePath("sys-newer-03", 1), ["newer"], h);
    const bad = new SimAgent("newer-04", storePath("sys-newer-04", 1), ["newer"], h);
    await ok.register();
    await bad.register();
    const id = await rolloutFor([ok, bad], "1");
    for (const [a, passed] of [
      [ok, true],
      [bad, false],
    ] as const) {
      const desired = await waitFor(`${a.id} assigned`, async () => (await a.desired()).generation ?? null);
      await a.client.report({
        machineId: a.id,
        currentGeneration: desired.hash,
        desiredGeneration: desired.hash,
        desiredRevision: desired.revision,
        outcome: Outcome.DEPLOYED,
        success: true,
      });
      await a.client.reportHealth({
        machineId: a.id,
        currentGeneration: desired.hash,
        allPassed: passed,
        postApply: true,
        results: [
          { name: "new-probe", kind: NEW_KIND, passed, durationMs: 1, message: passed ? "" : "down" },
        ],
      });
    }
    const done = await waitFor("the batch decided", async () => {
      const r = await rollout(id);
      return r.rollout!.batches[0]!.status === BatchStatus.SUCCEEDED ? r : null;
    });
    const states = Object.fromEntries(
      done.rollout!.batches[0]!.machines.map((m) => [m.machineId, [MachineGateState[m.state], m.reason]]),
    );
    assert.equal(states["newer-03"]![0], "HEALTHY");
    assert.equal(states["newer-04"]![0], "UNHEALTHY");
    assert.match(states["newer-04"]![1]!, /health checks failing on the target generation: new-probe/);
    assert.ok(h.logLines.some((l) => l.includes("stored health check kind UNKNOWN(9)")));
  });
});
