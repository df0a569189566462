/**
 * Edge cases through the agent process: someone else switches the host while the agent's switch
 * runs (FOREIGN_GENERATION: reported, not fought), a closure that is not a system (refused
 * before anything changes), and poll_hint honoured while polling.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Outcome } from "../../src/gen/nixfleet/v1/types_pb.js";
import { waitFor } from "../fixtures/host.js";
import { deploymentRows, setupScenario } from "./harness/scenario.js";

describe("agent process: edge cases", () => {
  it("another switch during ours (a third path): FOREIGN_GENERATION, the host is left alone, no re-apply", async (t) => {
    const s = await setupScenario({
      systems: [{ label: "mine", gate: true, flip: false }, { label: "theirs" }],
      cached: ["mine"],
    });
    t.after(() => s.cleanup());
    const theirs = s.systems["theirs"]!.path;
    s.writeConfig();
    const agent = s.startAgent();
    s.cp.setDesired(s.machineId, { hash: s.systems["mine"]!.path, cacheUrl: s.cacheUrl });
    await agent.waitForLog({ event: "switch_started" });
    // An operator's manual nixos-rebuild lands on "theirs" while our switch is still running.
    s.host.setCurrent(theirs);
    s.host.releaseGate("mine");
    const foreign = await s.cp.waitForReport((r) => r.outcome === Outcome.FOREIGN_GENERATION);
    assert.equal(foreign.currentGeneration, theirs);
    assert.match(foreign.message, /another switch changed the host/);
    assert.match(foreign.message, /does not fight it/);
    assert.equal(s.host.current(), theirs, "not rolled back over the operator's switch");
    assert.deepEqual(
      s.host
        .switchLog()
        .filter((e) => e.event === "start")
        .map((e) => e.label),
      ["mine"],
      "no rollback switch ran",
    );
    await s.cp.waitForReport((r) => r.outcome === Outcome.QUARANTINED);
    await waitFor("more cycles", () => agent.find({ event: "next_cycle" }).length >= 4);
    assert.equal(s.host.switchLog().filter((e) => e.event === "start").length, 1, "and it does not re-apply");
    assert.deepEqual(await agent.stop(), { code: 0, signal: null });
  });

  it("a manual switch after a finished deployment is reported, not undone; a newer revision re-applies", async (t) => {
    const s = await setupScenario({ systems: [{ label: "gen2" }], cached: ["gen2"] });
    t.after(() => s.cleanup());
    const gen2 = s.systems["gen2"]!.path;
    s.writeConfig({ pollInterval: 1 });
    const agent = s.startAgent();
    s.cp.setDesired(s.machineId, { hash: gen2, cacheUrl: s.cacheUrl });
    await s.cp.waitForReport((r) => r.outcome === Outcome.DEPLOYED);
    // An operator rolls the host back by hand (nixos-rebuild switch --rollback, in effect).
    s.host.setCurrent(s.gen1.path);
    const drift = await s.cp.waitForReport((r) => r.outcome === Outcome.FOREIGN_GENERATION);
    assert.equal(drift.currentGeneration, s.gen1.path);
    assert.equal(drift.desiredGeneration, gen2);
    assert.match(drift.message, /switched this host by hand/);
    assert.match(drift.message, /assign the generation again/);
    await waitFor("a few more polls", () => agent.find({ event: "next_cycle" }).length >= 6);
    assert.equal(s.host.current(), s.gen1.path, "the operator's choice stands");
    assert.equal(s.host.switchLog().filter((e) => e.event === "start").length, 1, "no switch back");

    // The control plane assigns it again (a new revision): the agent applies it.
    s.cp.setDesired(s.machineId, { hash: gen2, cacheUrl: s.cacheUrl });
    await waitFor("gen2 again", () => s.host.current() === gen2, 30_000);
    await s.cp.waitForReport(
      (r) => r.outcome === Outcome.DEPLOYED && r.desiredRevision > drift.desiredRevision,
    );
    const db = s.journal();
    try {
      const rows = deploymentRows(db);
      assert.equal(rows.length, 2, "two deployments: the first and the re-assignment");
      assert.equal(rows.at(-1)?.["outcome"], "DEPLOYED");
    } finally {
      db.close();
    }
    assert.deepEqual(await agent.stop(), { code: 0, signal: null });
  });

  it("a closure without switch-to-configuration is refused before anything changes, and not retried", async (t) => {
    const s = await setupScenario({
      systems: [{ label: "notasystem", noSwitchScript: true }],
      cached: ["notasystem"],
    });
    t.after(() => s.cleanup());
    s.writeConfig();
    const agent = s.startAgent();
    s.cp.setDesired(s.machineId, { hash: s.systems["notasystem"]!.path, cacheUrl: s.cacheUrl });
    const failed = await s.cp.waitForReport((r) => r.outcome === Outcome.APPLY_FAILED);
    assert.match(failed.message, /bin\/switch-to-configuration does not exist/);
    assert.equal(s.host.current(), s.gen1.path);
    assert.equal(s.host.profileGenerations().length, 1);
    await s.cp.waitForReport((r) => r.outcome === Outcome.QUARANTINED);
    const db = s.journal();
    try {
      assert.deepEqual(
        deploymentRows(db).map((r) => r["outcome"]),
        ["APPLY_FAILED"],
      );
    } finally {
      db.close();
    }
    assert.deepEqual(await agent.stop(), { code: 0, signal: null });
  });

  it("follows poll_hint while polling (an active rollout) instead of pollInterval", async (t) => {
    const s = await setupScenario({ systems: [{ label: "gen2" }], cached: ["gen2"] });
    t.after(() => s.cleanup());
    s.cp.refuseStreams = true;
    s.cp.setDesired(s.machineId, undefined, { push: false, pollHint: 1 });
    s.writeConfig({ pollInterval: 300 });
    const agent = s.startAgent();
    await s.cp.waitForReport((r) => r.desiredGeneration === "");
    const hinted = await agent.waitForLog((l) => l.event === "next_cycle" && l["verdict"] === "ok");
    assert.equal(hinted["pollHint"], 1);
    const delay = Number(hinted["delayMs"]);
    assert.ok(delay >= 900 && delay <= 1100, `poll_hint 1 s ±10 %, got ${delay}`);
    // Not pushed: only the hinted poll can find it within the test's time.
    s.cp.setDesired(
      s.machineId,
      { hash: s.systems["gen2"]!.path, cacheUrl: s.cacheUrl },
      { push: false, pollHint: 1 },
    );
    await s.cp.waitForReport((r) => r.outcome === Outcome.DEPLOYED);
    // The hint ends with the rollout: back to pollInterval.
    s.cp.setDesired(
      s.machineId,
      { hash: s.systems["gen2"]!.path, cacheUrl: s.cacheUrl },
      { push: false, pollHint: 0 },
    );
    const back = await agent.waitForLog((l) => l.event === "next_cycle" && l["pollHint"] === null, 30_000);
    assert.ok(Number(back["delayMs"]) >= 270_000, "pollInterval again");
    assert.deepEqual(await agent.stop(), { code: 0, signal: null });
  });
});
