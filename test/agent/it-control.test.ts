/**
 * The agent process and its control plane and host around it: a control plane that is down (or
 * answers UNAVAILABLE) at start, a push that starts a cycle without waiting for the poll, a
 * stream that drops while polling carries on, a switch lock held by someone else, and SIGTERM —
 * once (park and resume), twice (exit at once).
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Code } from "@connectrpc/connect";
import { Outcome } from "../../src/gen/nixfleet/v1/types_pb.js";
import { waitFor } from "../fixtures/host.js";
import { deploymentRows, type Scenario, setupScenario } from "./harness/scenario.js";

function starts(s: Scenario): string[] {
  return s.host
    .switchLog()
    .filter((e) => e.event === "start")
    .map((e) => e.label);
}

describe("agent process: control plane, switch lock, signals", () => {
  it("a control plane that is down or cold at start is retried every retryInterval; the agent registers when it is up", async (t) => {
    const s = await setupScenario({
      startControlPlane: false,
      systems: [{ label: "gen2" }],
      cached: ["gen2"],
    });
    t.after(() => s.cleanup());
    s.writeConfig({ retryInterval: 1, pollInterval: 1 });
    const agent = s.startAgent();
    const refused = await agent.waitForLog({ event: "poll_failed" });
    assert.equal(refused["code"], "Unavailable");
    await waitFor("a second attempt", () => agent.find({ event: "poll_failed" }).length >= 2);
    for (const l of agent.find((x) => x.event === "next_cycle" && x["verdict"] === "failed")) {
      const delay = Number(l["delayMs"]);
      assert.ok(delay >= 900 && delay <= 1100, `retryInterval after a failed poll, got ${delay}`);
    }
    assert.ok(agent.running, "connection refused is never fatal");

    // Up, but cold: UNAVAILABLE is retried the same way.
    s.cp.failWith = Code.Unavailable;
    await s.cp.start();
    const before = agent.find({ event: "poll_failed" }).length;
    await waitFor("UNAVAILABLE answers", () => agent.find({ event: "poll_failed" }).length > before + 1);
    assert.equal(s.cp.reports.length, 0);

    s.cp.failWith = undefined;
    const registered = await s.cp.waitForReport((r) => r.machineId === s.machineId);
    assert.deepEqual(registered.tags, ["test", "web"]);
    s.cp.setDesired(s.machineId, { hash: s.systems["gen2"]!.path, cacheUrl: s.cacheUrl });
    await s.cp.waitForReport((r) => r.outcome === Outcome.DEPLOYED);
    assert.deepEqual(await agent.stop(), { code: 0, signal: null });
  });

  it("a push over Session starts a cycle at once; when the stream drops, polling carries on", async (t) => {
    const s = await setupScenario({
      systems: [{ label: "gen2" }, { label: "gen3" }],
      cached: ["gen2", "gen3"],
    });
    t.after(() => s.cleanup());
    // pollInterval 300 s: without the push, nothing would happen for minutes.
    s.writeConfig({ pollInterval: 300 });
    let agent = s.startAgent();
    await s.cp.waitForReport((r) => r.desiredGeneration === "");
    await s.cp.waitFor(() => s.cp.connectedStreams(s.machineId) > 0, 30_000, "the Session stream");
    const pollsBefore = s.cp.calls["getDesiredGeneration"]!;
    const pushed = s.cp.setDesired(s.machineId, { hash: s.systems["gen2"]!.path, cacheUrl: s.cacheUrl })!;
    const deployed = await s.cp.waitForReport((r) => r.outcome === Outcome.DEPLOYED);
    assert.equal(deployed.desiredRevision, pushed.revision);
    assert.equal(
      s.cp.calls["getDesiredGeneration"],
      pollsBefore,
      "the pushed value was used, no poll needed",
    );
    await agent.waitForLog({ event: "pushed" });
    assert.deepEqual(await agent.stop(), { code: 0, signal: null });

    // Streams refused and dropped: the agent falls back to polling GetDesiredGeneration.
    s.writeConfig({ pollInterval: 1 });
    agent = s.startAgent();
    await s.cp.waitFor(() => s.cp.connectedStreams(s.machineId) > 0, 30_000, "the Session stream");
    s.cp.refuseStreams = true;
    s.cp.dropStreams();
    await agent.waitForLog({ event: "stream_error" });
    const polls = s.cp.calls["getDesiredGeneration"]!;
    s.cp.setDesired(s.machineId, { hash: s.systems["gen3"]!.path, cacheUrl: s.cacheUrl }, { push: false });
    const viaPoll = await s.cp.waitForReport(
      (r) => r.outcome === Outcome.DEPLOYED && r.currentGeneration === s.systems["gen3"]!.path,
    );
    assert.ok(viaPoll);
    assert.ok(s.cp.calls["getDesiredGeneration"]! > polls, "learned by polling");
    assert.deepEqual(await agent.stop(), { code: 0, signal: null });
  });

  it("a switch lock held by another process: SWITCH_LOCKED, no second switch stacked; applied once released", async (t) => {
    const s = await setupScenario({ systems: [{ label: "gen2" }], cached: ["gen2"] });
    t.after(() => s.cleanup());
    s.writeConfig();
    const holder = await s.host.holdSwitchLock();
    const agent = s.startAgent();
    s.cp.setDesired(s.machineId, { hash: s.systems["gen2"]!.path, cacheUrl: s.cacheUrl });
    const locked = await s.cp.waitForReport((r) => r.outcome === Outcome.SWITCH_LOCKED);
    assert.match(locked.message, new RegExp(`held by pid ${holder.pid}`));
    assert.match(locked.message, /not stacking a second switch/);
    await s.cp.waitForReport(
      (r) => r.outcome === Outcome.SWITCH_LOCKED && r.deploymentId !== locked.deploymentId,
    );
    assert.deepEqual(starts(s), [], "no switch started while the lock is held");
    assert.equal(s.host.profileGenerations().length, 1, "the profile was not touched");
    assert.equal(s.host.current(), s.gen1.path);
    await holder.release();
    await s.cp.waitForReport((r) => r.outcome === Outcome.DEPLOYED);
    assert.deepEqual(starts(s), ["gen2"]);
    assert.deepEqual(await agent.stop(), { code: 0, signal: null });
  });

  it("SIGTERM during the switch parks the deployment; the next start finishes it", async (t) => {
    const s = await setupScenario({ systems: [{ label: "gated", gate: true }], cached: ["gated"] });
    t.after(() => s.cleanup());
    s.writeConfig();
    let agent = s.startAgent();
    s.cp.setDesired(s.machineId, { hash: s.systems["gated"]!.path, cacheUrl: s.cacheUrl });
    const applying = await s.cp.waitForReport((r) => r.outcome === Outcome.APPLYING);
    await agent.waitForLog({ event: "switch_started" });
    assert.deepEqual(await agent.stop("SIGTERM"), { code: 0, signal: null }, "a clean, prompt exit");
    const parked = agent.find({ event: "parked" });
    assert.equal(parked.length, 1);
    assert.match(String(parked[0]!["where"]), /switching/);
    const db = s.journal();
    try {
      const [row] = deploymentRows(db);
      assert.equal(row!["phase"], "switching", "parked where it was, for the next start");
      assert.equal(row!["outcome"], null);
    } finally {
      db.close();
    }
    assert.ok(s.host.strayProcesses().length > 0, "the switch itself was not killed");

    s.host.releaseGate("gated");
    agent = s.startAgent();
    const deployed = await s.cp.waitForReport((r) => r.outcome === Outcome.DEPLOYED);
    assert.equal(deployed.deploymentId, applying.deploymentId);
    assert.deepEqual(starts(s), ["gated"]);
    assert.deepEqual(await agent.stop(), { code: 0, signal: null });
  });

  it("a second SIGTERM exits at once; the journal still settles the deployment on the next start", async (t) => {
    // A switch that hangs and ignores SIGTERM: at activationTimeout the agent must wait a few
    // seconds before SIGKILLing it — a step that cannot be parked.
    const s = await setupScenario({
      systems: [{ label: "stuck", switch: "hang", ignoreTerm: true }],
      cached: ["stuck"],
    });
    t.after(() => s.cleanup());
    s.writeConfig({ activationTimeout: 2 });
    let agent = s.startAgent();
    s.cp.setDesired(s.machineId, { hash: s.systems["stuck"]!.path, cacheUrl: s.cacheUrl });
    await agent.waitForLog({ event: "switch_timeout" });
    agent.proc.kill("SIGTERM");
    await agent.waitForLog({ event: "stopping" });
    agent.proc.kill("SIGTERM");
    const exit = await agent.exited;
    assert.deepEqual(exit, { code: 143, signal: null });
    assert.equal(agent.find({ event: "forced_exit" }).length, 1);
    const db = s.journal();
    try {
      const [row] = deploymentRows(db);
      // The rollback decision was journaled before the kill began.
      assert.equal(row!["phase"], "rolling_back");
      assert.match(String(row!["rollback_reason"]), /activationTimeout/);
    } finally {
      db.close();
    }

    agent = s.startAgent();
    const recovery = await agent.waitForLog({ event: "recovery" });
    assert.equal(recovery["phase"], "rolling_back");
    assert.equal(recovery["action"], "rollback", "never mistaken for a finished switch");
    const rolledBack = await s.cp.waitForReport((r) => r.outcome === Outcome.ROLLED_BACK);
    assert.match(rolledBack.message, /activationTimeout/);
    assert.equal(s.host.current(), s.gen1.path);
    assert.deepEqual(await agent.stop(), { code: 0, signal: null });
  });
});
