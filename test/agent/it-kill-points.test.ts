/**
 * A real agent process stopped at exact points of the deploy cycle, not at random instants: the
 * test-only hook NIXFLEET_TEST_KILL_AFTER makes the agent SIGKILL itself right after the journal
 * write that leads to a named state of the transition table. A restarted agent must deliver the
 * outcome (same deployment id as its APPLYING) and never run the failed switch again at the same
 * revision.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { KILL_AFTER_ENV } from "../../src/agent/test-hooks.js";
import { Outcome } from "../../src/gen/nixfleet/v1/types_pb.js";
import { deploymentRows, type Scenario, setupScenario } from "./harness/scenario.js";

function starts(s: Scenario): string[] {
  return s.host
    .switchLog()
    .filter((e) => e.event === "start")
    .map((e) => e.label);
}

function journalRows(s: Scenario) {
  const db = s.journal();
  try {
    return {
      deployments: deploymentRows(db),
      quarantine: db.prepare("SELECT path, revision, outcome FROM quarantine").all() as Array<
        Record<string, unknown>
      >,
      outbox: db.prepare("SELECT outcome, deployment_id FROM outbox ORDER BY id").all() as Array<{
        outcome: string;
        deployment_id: string;
      }>,
    };
  } finally {
    db.close();
  }
}

/** Runs the agent with the hook until it kills itself; returns the APPLYING it reported. */
async function runUntilKilled(s: Scenario, label: string, at: string) {
  const from = s.cp.reports.length;
  const agent = s.startAgent({ env: { [KILL_AFTER_ENV]: at } });
  s.cp.setDesired(s.machineId, { hash: s.systems[label]!.path, cacheUrl: s.cacheUrl });
  const exit = await agent.exited;
  assert.equal(exit.signal, "SIGKILL", `the agent killed itself after ${at}`);
  assert.ok(agent.find({ event: "test_kill" }).length === 1, "at the named point");
  const applying = s.cp.reports.slice(from).find((r) => r.message.outcome === Outcome.APPLYING)?.message;
  const rows = journalRows(s);
  const dep = rows.deployments.at(-1)!;
  return { dep, rows, applyingId: applying?.deploymentId ?? String(dep["id"]) };
}

describe("agent process: killed at exact points of the cycle", () => {
  it("killed right after ROLLED_BACK is journaled: the outcome is delivered after the restart, the failed switch never re-run", async (t) => {
    const s = await setupScenario({ systems: [{ label: "bad", switch: "fail" }], cached: ["bad"] });
    t.after(() => s.cleanup());
    s.writeConfig();
    const { dep, rows, applyingId } = await runUntilKilled(s, "bad", "finish:ROLLED_BACK");
    assert.equal(dep["outcome"], "ROLLED_BACK");
    assert.equal(rows.quarantine.length, 1, "the quarantine entry committed with the outcome");
    assert.ok(
      rows.outbox.some((o) => o.outcome === "ROLLED_BACK" && o.deployment_id === dep["id"]),
      "the report committed with the outcome",
    );

    const agent = s.startAgent();
    const rolledBack = await s.cp.waitForReport((r) => r.outcome === Outcome.ROLLED_BACK);
    assert.equal(rolledBack.deploymentId, applyingId, "the outcome of the deployment that reported APPLYING");
    await s.cp.waitForReport((r) => r.outcome === Outcome.QUARANTINED);
    assert.deepEqual(starts(s), ["bad", "gen1"], "the failed switch ran once; the rollback once");
    assert.equal(s.host.current(), s.gen1.path);
    assert.deepEqual(await agent.stop(), { code: 0, signal: null });
  });

  it("killed between the rollback switch and the outcome that quarantines it: settled as ROLLED_BACK, never switched again", async (t) => {
    const s = await setupScenario({ systems: [{ label: "bad", switch: "fail" }], cached: ["bad"] });
    t.after(() => s.cleanup());
    s.writeConfig();
    const { dep, rows, applyingId } = await runUntilKilled(s, "bad", "rb-recorded");
    assert.equal(dep["phase"], "rolling_back", "killed mid-rollback");
    assert.equal(rows.quarantine.length, 0, "not yet quarantined");

    const agent = s.startAgent();
    const recovery = await agent.waitForLog({ event: "recovery" });
    assert.equal(recovery["phase"], "rolling_back");
    const rolledBack = await s.cp.waitForReport((r) => r.outcome === Outcome.ROLLED_BACK);
    assert.equal(rolledBack.deploymentId, applyingId);
    await s.cp.waitForReport((r) => r.outcome === Outcome.QUARANTINED);
    assert.deepEqual(starts(s), ["bad", "gen1"], "no second forward switch, no second rollback");
    const after = journalRows(s);
    assert.equal(after.deployments.length, 1, "one deployment, settled; not a second attempt");
    assert.equal(after.deployments[0]!["outcome"], "ROLLED_BACK");
    assert.equal(after.quarantine.length, 1);
    assert.deepEqual(await agent.stop(), { code: 0, signal: null });
  });

  it("killed right after DEPLOYED is journaled: DEPLOYED and its post-apply health are delivered after the restart", async (t) => {
    const s = await setupScenario({ systems: [{ label: "good" }], cached: ["good"] });
    t.after(() => s.cleanup());
    s.writeConfig();
    const { dep, applyingId } = await runUntilKilled(s, "good", "finish:DEPLOYED");
    assert.equal(dep["outcome"], "DEPLOYED");

    const agent = s.startAgent();
    const deployed = await s.cp.waitForReport((r) => r.outcome === Outcome.DEPLOYED);
    assert.equal(deployed.deploymentId, applyingId);
    await s.cp.waitForHealth((h) => h.postApply && h.deploymentId === applyingId);
    assert.deepEqual(starts(s), ["good"]);
    assert.deepEqual(await agent.stop(), { code: 0, signal: null });
  });
});
