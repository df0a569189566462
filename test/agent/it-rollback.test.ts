/**
 * The agent process rolling back, for real: a failing switch, a hanging switch (activation
 * timeout), exit code 4 with healthy and failing checks, failing command and HTTP checks, a check
 * that recovers within verifyTimeout, quarantine (no re-apply; re-apply on a newer revision), and
 * a rollback that itself fails (ROLLBACK_FAILED, loud and reported again).
 *
 * Every rollback is checked to have run the *previous* generation's own switch-to-configuration
 * and to leave current-system on the exact previous path.
 */
import assert from "node:assert/strict";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { describe, it } from "node:test";
import { Outcome } from "../../src/gen/nixfleet/v1/types_pb.js";
import { deploymentRows, phaseRows, type Scenario, setupScenario } from "./harness/scenario.js";

function switchStarts(s: Scenario): string[] {
  return s.host
    .switchLog()
    .filter((e) => e.event === "start")
    .map((e) => e.label);
}

function quarantineRows(s: Scenario): Array<Record<string, unknown>> {
  const db = s.journal();
  try {
    return db.prepare("SELECT * FROM quarantine").all() as Array<Record<string, unknown>>;
  } finally {
    db.close();
  }
}

describe("agent process: rollback", () => {
  it("a failing switch (switch order) is rolled back to the exact previous generation by its own script, the profile restored, then quarantined", async (t) => {
    const s = await setupScenario({ systems: [{ label: "bad", switch: "fail" }], cached: ["bad"] });
    t.after(() => s.cleanup());
    const gen1 = s.gen1.path;
    const bad = s.systems["bad"]!.path;
    // The switch order moves the profile first: this test is about putting it back.
    s.writeConfig({ activationOrder: "switch" });
    const agent = s.startAgent();
    const assigned = s.cp.setDesired(s.machineId, { hash: bad, cacheUrl: s.cacheUrl })!;
    const rolledBack = await s.cp.waitForReport((r) => r.outcome === Outcome.ROLLED_BACK);
    assert.equal(rolledBack.success, false);
    assert.equal(rolledBack.currentGeneration, gen1);
    assert.equal(rolledBack.desiredGeneration, bad);
    assert.equal(rolledBack.desiredRevision, assigned.revision);
    assert.match(rolledBack.message, /switch-to-configuration exited with code 1/);
    assert.match(rolledBack.message, /error: activation of bad failed/, "the switch's own stderr, trimmed");
    assert.match(
      rolledBack.message,
      new RegExp(`rolled back to ${gen1} with its own switch-to-configuration`),
    );

    assert.equal(s.host.current(), gen1, "current-system is the exact previous path");
    assert.equal(
      s.host.profile(),
      gen1,
      "the profile points at the previous generation again (boot default)",
    );
    assert.deepEqual(
      switchStarts(s),
      ["bad", "gen1"],
      "the rollback ran gen1's own script, not the failed one's",
    );
    const rollbackRun = s.host.switchLog().find((e) => e.event === "start" && e.label === "gen1")!;
    assert.equal(rollbackRun.path, gen1);
    assert.deepEqual(
      s.host.profileGenerations().map((g) => [g.path, g.current]),
      [
        [gen1, true],
        [bad, false],
      ],
      "the profile is back on generation 1 itself",
    );

    const db = s.journal();
    try {
      const [row] = deploymentRows(db);
      assert.equal(row!["outcome"], "ROLLED_BACK");
      assert.equal(row!["previous"], gen1);
      assert.equal(row!["rollback_attempts"], 1);
      assert.match(String(row!["rollback_reason"]), /exited with code 1/);
      assert.deepEqual(
        phaseRows(db, String(row!["id"])).map((p) => p["phase"]),
        ["fetching", "applying", "switching", "rolling_back"],
      );
    } finally {
      db.close();
    }
    const q = quarantineRows(s);
    assert.equal(q.length, 1);
    assert.equal(q[0]!["path"], bad);
    assert.equal(q[0]!["revision"], assigned.revision.toString());

    // Quarantined: the next polls report QUARANTINED and switch nothing.
    const quarantined = await s.cp.waitForReport((r) => r.outcome === Outcome.QUARANTINED);
    assert.match(quarantined.message, /failed here before/);
    await s.cp.waitFor(() => agent.find({ event: "next_cycle" }).length >= 4, 30_000, "more cycles");
    assert.deepEqual(switchStarts(s), ["bad", "gen1"], "no re-apply of the quarantined path");

    // A newer revision of the same path is the control plane asking again: it is retried.
    const from = s.cp.reports.length;
    s.cp.setDesired(s.machineId, { hash: bad, cacheUrl: s.cacheUrl });
    await s.cp.waitForReport((r) => r.outcome === Outcome.ROLLED_BACK, 60_000, from);
    assert.deepEqual(switchStarts(s), ["bad", "gen1", "bad", "gen1"]);
    await agent.waitForLog({ event: "quarantine_lifted" });
    assert.deepEqual(await agent.stop(), { code: 0, signal: null });
  });

  it("a hanging switch is killed at activationTimeout and rolled back", async (t) => {
    const s = await setupScenario({ systems: [{ label: "hang", switch: "hang" }], cached: ["hang"] });
    t.after(() => s.cleanup());
    s.writeConfig({ activationTimeout: 3 });
    const agent = s.startAgent();
    s.cp.setDesired(s.machineId, { hash: s.systems["hang"]!.path, cacheUrl: s.cacheUrl });
    const rolledBack = await s.cp.waitForReport((r) => r.outcome === Outcome.ROLLED_BACK);
    assert.match(rolledBack.message, /did not finish within activationTimeout \(3 s\) and was killed/);
    assert.equal(
      s.host.current(),
      s.gen1.path,
      "the hung switch had flipped the link; the rollback put it back",
    );
    assert.deepEqual(switchStarts(s), ["hang", "gen1"]);
    assert.ok(s.host.switchLog().some((e) => e.event === "hang"));
    const hanging = s.host.strayProcesses().filter((pid) => pid !== agent.pid);
    assert.deepEqual(hanging, [], "the hung switch's process group is gone");
    assert.deepEqual(await agent.stop(), { code: 0, signal: null });
  });

  it("exit code 4 with passing health checks is DEPLOYED; with failing checks it is rolled back", async (t) => {
    const s = await setupScenario({
      systems: [
        { label: "four-ok", switch: "exit4" },
        { label: "four-bad", switch: "exit4", healthy: false },
      ],
      cached: ["four-ok", "four-bad"],
    });
    t.after(() => s.cleanup());
    s.writeConfig({ verifyTimeout: 2 });
    const agent = s.startAgent();
    s.cp.setDesired(s.machineId, { hash: s.systems["four-ok"]!.path, cacheUrl: s.cacheUrl });
    const deployed = await s.cp.waitForReport((r) => r.outcome === Outcome.DEPLOYED);
    assert.match(deployed.message, /exited 4: some units failed, but every health check passed/);
    assert.equal(s.host.current(), s.systems["four-ok"]!.path);
    await agent.waitForLog({ event: "switch_exit_4" });

    s.cp.setDesired(s.machineId, { hash: s.systems["four-bad"]!.path, cacheUrl: s.cacheUrl });
    const rolledBack = await s.cp.waitForReport((r) => r.outcome === Outcome.ROLLED_BACK);
    assert.match(rolledBack.message, /health checks failed .*switch-to-configuration exited 4.*marker/);
    assert.equal(s.host.current(), s.systems["four-ok"]!.path, "back on the generation before, exactly");
    assert.deepEqual(
      switchStarts(s),
      ["four-ok", "four-bad", "four-ok"],
      "the rollback used four-ok's own script",
    );
    assert.deepEqual(await agent.stop(), { code: 0, signal: null });
  });

  it("failing command check: rollback, failing post-apply health reported, quarantine until a newer revision", async (t) => {
    const s = await setupScenario({ systems: [{ label: "sick", healthy: false }], cached: ["sick"] });
    t.after(() => s.cleanup());
    const sick = s.systems["sick"]!.path;
    s.writeConfig({ verifyTimeout: 2 });
    const agent = s.startAgent();
    s.cp.setDesired(s.machineId, { hash: sick, cacheUrl: s.cacheUrl });
    const rolledBack = await s.cp.waitForReport((r) => r.outcome === Outcome.ROLLED_BACK);
    assert.match(
      rolledBack.message,
      /health checks failed for 2 s after the switch: marker \(exited with code 1\)/,
    );
    const failingHealth = await s.cp.waitForHealth((h) => h.postApply && !h.allPassed);
    assert.equal(
      failingHealth.currentGeneration,
      sick,
      "the failing results are bound to the generation they observed",
    );
    assert.equal(failingHealth.deploymentId, rolledBack.deploymentId);
    assert.equal(s.host.current(), s.gen1.path);
    const rounds = agent.find({ event: "verify_round" });
    assert.ok(rounds.length >= 2, "the failing check was retried during verifyTimeout");

    await s.cp.waitForReport((r) => r.outcome === Outcome.QUARANTINED);
    await s.cp.waitFor(() => agent.find({ event: "next_cycle" }).length >= 4, 30_000, "more cycles");
    assert.deepEqual(switchStarts(s), ["sick", "gen1"], "not re-applied");
    assert.equal(quarantineRows(s).length, 1);

    const from = s.cp.reports.length;
    s.cp.setDesired(s.machineId, { hash: sick, cacheUrl: s.cacheUrl });
    await s.cp.waitForReport((r) => r.outcome === Outcome.APPLYING, 60_000, from);
    await s.cp.waitForReport((r) => r.outcome === Outcome.ROLLED_BACK, 60_000, from);
    assert.deepEqual(switchStarts(s), ["sick", "gen1", "sick", "gen1"]);
    assert.deepEqual(await agent.stop(), { code: 0, signal: null });
  });

  it("failing HTTP check rolls back; an HTTP check that recovers within verifyTimeout deploys", async (t) => {
    const s = await setupScenario({
      systems: [{ label: "gen2" }, { label: "gen3" }],
      cached: ["gen2", "gen3"],
    });
    t.after(() => s.cleanup());
    // "/flaky" answers 503 to the first three requests once gen2 runs (a service warming up),
    // then 200 (and 200 before: periodic checks on gen1 must not use up the failures);
    // "/down" always 500.
    let flakyCount = 0;
    const server = createServer((req, res) => {
      if (req.url === "/flaky") {
        if (s.host.current() !== s.systems["gen2"]!.path) res.writeHead(200).end();
        else res.writeHead(++flakyCount > 3 ? 200 : 503).end();
      } else {
        res.writeHead(500).end();
      }
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
    t.after(() => new Promise<void>((r) => server.close(() => r())));
    const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

    s.writeConfig({
      verifyTimeout: 15,
      healthChecks: { http: [{ url: `${base}/flaky`, timeout: 2, interval: 1 }] },
    });
    let agent = s.startAgent();
    s.cp.setDesired(s.machineId, { hash: s.systems["gen2"]!.path, cacheUrl: s.cacheUrl });
    const deployed = await s.cp.waitForReport((r) => r.outcome === Outcome.DEPLOYED);
    assert.ok(flakyCount >= 4, `retried until it passed (${flakyCount} requests)`);
    assert.equal(deployed.currentGeneration, s.systems["gen2"]!.path);
    assert.ok(
      agent.find({ event: "verify_round" }).some((l) => /HTTP 503, expected 200/.test(String(l["failing"]))),
    );
    assert.deepEqual(await agent.stop(), { code: 0, signal: null });

    s.writeConfig({
      verifyTimeout: 2,
      healthChecks: { http: [{ url: `${base}/down`, timeout: 2, interval: 1 }] },
    });
    agent = s.startAgent();
    s.cp.setDesired(s.machineId, { hash: s.systems["gen3"]!.path, cacheUrl: s.cacheUrl });
    const rolledBack = await s.cp.waitForReport((r) => r.outcome === Outcome.ROLLED_BACK);
    assert.match(rolledBack.message, new RegExp(`${base}/down \\(HTTP 500, expected 200\\)`));
    assert.equal(s.host.current(), s.systems["gen2"]!.path);
    assert.deepEqual(await agent.stop(), { code: 0, signal: null });
  });

  it("a rollback that fails is ROLLBACK_FAILED: loud, metered, and reported again", async (t) => {
    // gen1's own switch fails, so rolling back to it cannot succeed.
    const s = await setupScenario({
      gen1: { switch: "fail", exitCode: 2 },
      systems: [{ label: "bad", switch: "fail" }],
      cached: ["bad"],
    });
    t.after(() => s.cleanup());
    s.writeConfig({ metricsPort: 0, metricsAddress: "127.0.0.1", healthInterval: 1 });
    const agent = s.startAgent();
    const port = Number((await agent.waitForLog({ event: "metrics_listening" }))["port"]);
    s.cp.setDesired(s.machineId, { hash: s.systems["bad"]!.path, cacheUrl: s.cacheUrl });
    const failed = await s.cp.waitForReport((r) => r.outcome === Outcome.ROLLBACK_FAILED);
    assert.equal(failed.success, false);
    assert.match(
      failed.message,
      /ROLLBACK FAILED: the previous generation's switch-to-configuration exited with code 2/,
    );
    assert.match(failed.message, /The host needs an operator/);
    assert.deepEqual(
      switchStarts(s),
      ["bad", "gen1", "gen1"],
      "the rollback was attempted twice, never re-applying the bad one",
    );
    const loud = agent.find((l) => l.level === "error" && l.event === "deployment_finished");
    assert.equal(loud.length, 1);
    assert.equal(loud[0]!["outcome"], "ROLLBACK_FAILED");
    const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    assert.match(metrics, /nixfleet_agent_rollback_failed 1/);
    assert.match(metrics, /nixfleet_agent_rollbacks_total\{result="failed"\} 1/);
    // Keeps reporting it (every healthInterval), never a silent success.
    const from = s.cp.reports.findIndex((r) => r.message.outcome === Outcome.ROLLBACK_FAILED) + 1;
    const repeated = await s.cp.waitForReport((r) => r.outcome === Outcome.ROLLBACK_FAILED, 60_000, from);
    assert.equal(repeated.desiredGeneration, s.systems["bad"]!.path);
    assert.ok(!s.cp.outcomes(s.machineId).includes("DEPLOYED"));
    assert.deepEqual(switchStarts(s), ["bad", "gen1", "gen1"], "and does not try again by itself");
    assert.deepEqual(await agent.stop(), { code: 0, signal: null });
  });
});
