/**
 * The agent killed with SIGKILL in the middle of its switch, for real. The switch (detached) runs
 * on; a restarted agent settles the journaled deployment before anything else and reports the
 * truth: commit when the switch succeeded, roll back when it failed, wait when it still runs,
 * and roll back (never blindly retry) when it vanished without a status as after a power loss.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Outcome } from "../../src/gen/nixfleet/v1/types_pb.js";
import { waitFor } from "../fixtures/host.js";
import { deploymentRows, type Scenario, setupScenario } from "./harness/scenario.js";

function starts(s: Scenario): string[] {
  return s.host
    .switchLog()
    .filter((e) => e.event === "start")
    .map((e) => e.label);
}

async function killMidSwitch(s: Scenario, label: string) {
  const agent = s.startAgent();
  s.cp.setDesired(s.machineId, { hash: s.systems[label]!.path, cacheUrl: s.cacheUrl });
  const applying = await s.cp.waitForReport((r) => r.outcome === Outcome.APPLYING);
  await waitFor(`the ${label} switch to start`, () => starts(s).includes(label));
  await agent.waitForLog({ event: "switch_started" });
  await agent.kill9();
  return applying;
}

function onlyDeployment(s: Scenario): Record<string, unknown> {
  const db = s.journal();
  try {
    const rows = deploymentRows(db);
    assert.equal(rows.length, 1, "one deployment, settled; not a second attempt");
    return rows[0]!;
  } finally {
    db.close();
  }
}

describe("agent process: crash recovery after SIGKILL mid-switch", () => {
  it("the switch succeeds while the agent is dead: the restarted agent verifies and commits", async (t) => {
    const s = await setupScenario({ systems: [{ label: "gated", gate: true }], cached: ["gated"] });
    t.after(() => s.cleanup());
    s.writeConfig();
    const applying = await killMidSwitch(s, "gated");
    s.host.releaseGate("gated");
    await waitFor("the orphaned switch to finish", () =>
      s.host.switchLog().some((e) => e.event === "end" && e.label === "gated"),
    );
    assert.equal(s.host.current(), s.systems["gated"]!.path);

    const agent = s.startAgent();
    const recovery = await agent.waitForLog({ event: "recovery" });
    assert.equal(recovery["phase"], "switching");
    assert.equal(recovery["forward"], "exited");
    assert.equal(recovery["action"], "after-switch");
    const deployed = await s.cp.waitForReport((r) => r.outcome === Outcome.DEPLOYED);
    assert.equal(deployed.deploymentId, applying.deploymentId, "the same deployment, settled");
    assert.equal(deployed.currentGeneration, s.systems["gated"]!.path);
    await s.cp.waitForHealth((h) => h.postApply && h.deploymentId === applying.deploymentId);
    assert.deepEqual(starts(s), ["gated"], "no second switch");
    assert.equal(onlyDeployment(s)["outcome"], "DEPLOYED");
    assert.deepEqual(await agent.stop(), { code: 0, signal: null });
  });

  it("the switch fails while the agent is dead: the restarted agent rolls back and reports it", async (t) => {
    const s = await setupScenario({
      systems: [{ label: "gated-bad", gate: true, switch: "fail" }],
      cached: ["gated-bad"],
    });
    t.after(() => s.cleanup());
    s.writeConfig();
    const applying = await killMidSwitch(s, "gated-bad");
    s.host.releaseGate("gated-bad");
    await waitFor("the orphaned switch to fail", () =>
      s.host.switchLog().some((e) => e.event === "end" && e.label === "gated-bad"),
    );

    const agent = s.startAgent();
    const rolledBack = await s.cp.waitForReport((r) => r.outcome === Outcome.ROLLED_BACK);
    assert.equal(rolledBack.deploymentId, applying.deploymentId);
    assert.match(rolledBack.message, /exited with code 1/);
    assert.equal(s.host.current(), s.gen1.path);
    assert.deepEqual(starts(s), ["gated-bad", "gen1"], "rolled back with gen1's own script");
    const row = onlyDeployment(s);
    assert.equal(row["outcome"], "ROLLED_BACK");
    assert.equal(row["previous"], s.gen1.path);
    await s.cp.waitForReport((r) => r.outcome === Outcome.QUARANTINED);
    assert.deepEqual(await agent.stop(), { code: 0, signal: null });
  });

  it("the switch is still running when the agent restarts: it waits for it, then commits", async (t) => {
    const s = await setupScenario({ systems: [{ label: "gated", gate: true }], cached: ["gated"] });
    t.after(() => s.cleanup());
    s.writeConfig();
    const applying = await killMidSwitch(s, "gated");
    const agent = s.startAgent();
    const recovery = await agent.waitForLog({ event: "recovery" });
    assert.equal(recovery["action"], "wait-switch");
    s.host.releaseGate("gated");
    const deployed = await s.cp.waitForReport((r) => r.outcome === Outcome.DEPLOYED);
    assert.equal(deployed.deploymentId, applying.deploymentId);
    assert.deepEqual(starts(s), ["gated"]);
    assert.deepEqual(await agent.stop(), { code: 0, signal: null });
  });

  it("the switch vanished without a status (power loss): rolled back and quarantined, never retried blindly", async (t) => {
    const s = await setupScenario({ systems: [{ label: "gated", gate: true }], cached: ["gated"] });
    t.after(() => s.cleanup());
    s.writeConfig();
    const applying = await killMidSwitch(s, "gated");
    // "Power loss": the switch dies too, before it could flip the link or record a status.
    for (const pid of s.host.strayProcesses()) {
      try {
        process.kill(-pid, "SIGKILL");
      } catch {
        // not a group leader, or gone
      }
    }
    await waitFor("the switch to be gone", () => s.host.strayProcesses().length === 0);
    const agent = s.startAgent();
    const recovery = await agent.waitForLog({ event: "recovery" });
    assert.equal(recovery["forward"], "vanished");
    assert.equal(recovery["action"], "rollback");
    const rolledBack = await s.cp.waitForReport((r) => r.outcome === Outcome.ROLLED_BACK);
    assert.equal(rolledBack.deploymentId, applying.deploymentId);
    assert.match(rolledBack.message, /interrupted before it finished/);
    assert.equal(s.host.current(), s.gen1.path);
    assert.equal(s.host.profile(), s.gen1.path, "the boot default is the previous generation again");
    await s.cp.waitForReport((r) => r.outcome === Outcome.QUARANTINED);
    assert.deepEqual(starts(s), ["gated", "gen1"]);
    assert.deepEqual(await agent.stop(), { code: 0, signal: null });
  });
});
