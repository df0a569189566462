/**
 * The whole agent process against the scripted control plane: the happy path over an HTTP cache
 * with every observable checked (current-system, profile generations, switch log, journal rows,
 * reports, health reports, log lines, metrics), then steady state (no re-apply, UP_TO_DATE on
 * change only, a fresh health report on a new revision), a cleared assignment, dryRun, and a
 * malformed store path from the server.
 */

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Outcome } from "../../src/gen/nixfleet/v1/types_pb.js";
import { readBootDefault } from "../fixtures/nix.js";
import { deploymentRows, phaseRows, setupScenario } from "./harness/scenario.js";

async function scrape(port: number): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${port}/metrics`);
  assert.equal(res.status, 200);
  return res.text();
}

function metricValue(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split("\n")) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    const labelText = line.startsWith(`${name}{`) ? line.slice(name.length + 1, line.indexOf("}")) : "";
    const ok = Object.entries(labels).every(([k, v]) => labelText.includes(`${k}="${v}"`));
    if (ok) return Number(line.slice(line.lastIndexOf(" ") + 1));
  }
  return undefined;
}

describe("agent process: deploy", { concurrency: false }, () => {
  it("deploys a generation from an HTTP cache, verifies it, reports it, and meters it", async (t) => {
    const s = await setupScenario({ systems: [{ label: "gen2" }], cached: ["gen2"], httpCache: true });
    t.after(() => s.cleanup());
    const gen1 = s.gen1.path;
    const gen2 = s.systems["gen2"]!.path;
    s.writeConfig({ metricsPort: 0, metricsAddress: "127.0.0.1", healthInterval: 2 });
    const agent = s.startAgent();
    const port = Number((await agent.waitForLog({ event: "metrics_listening" }))["port"]);

    // Registration: with nothing assigned the agent still reports (idle), with its tags.
    const idle = await s.cp.waitForReport((r) => r.desiredGeneration === "");
    assert.equal(idle.outcome, Outcome.UP_TO_DATE);
    assert.equal(idle.currentGeneration, gen1);
    assert.deepEqual(idle.tags, ["test", "web"]);
    assert.equal(idle.agentVersion, "0.1.0");
    await s.cp.waitFor(() => s.cp.hellos.length > 0, 30_000, "Session Hello");

    const assigned = s.cp.setDesired(s.machineId, { hash: gen2, cacheUrl: s.cacheUrl })!;
    const deployed = await s.cp.waitForReport((r) => r.outcome === Outcome.DEPLOYED);
    assert.equal(deployed.success, true);
    assert.equal(deployed.currentGeneration, gen2);
    assert.equal(deployed.desiredGeneration, gen2);
    assert.equal(deployed.desiredRevision, assigned.revision);
    assert.ok(deployed.deploymentId);
    const applying = s.cp.reportsFor(s.machineId).find((r) => r.outcome === Outcome.APPLYING);
    assert.ok(applying, "APPLYING was reported before the switch");
    assert.equal(applying.currentGeneration, gen1, "APPLYING still shows the previous generation");
    assert.equal(applying.deploymentId, deployed.deploymentId);
    const health = await s.cp.waitForHealth((h) => h.postApply && h.deploymentId === deployed.deploymentId);
    assert.equal(
      health.currentGeneration,
      gen2,
      "the post-apply health report is bound to the new generation",
    );
    assert.equal(health.allPassed, true);
    assert.deepEqual(
      health.results.map((r) => [r.name, r.passed]),
      [["marker", true]],
    );
    assert.ok(
      s.cp.acks.some((a) => a.revision === assigned.revision),
      "the push was acknowledged",
    );

    // The host.
    assert.equal(s.host.current(), gen2);
    assert.deepEqual(
      s.host.profileGenerations().map((g) => [g.generation, g.path, g.current]),
      [
        [1, gen1, false],
        [2, gen2, true],
      ],
    );
    const switches = s.host.switchLog().filter((e) => e.event === "start");
    assert.deepEqual(
      switches.map((e) => `${e.path} ${e.detail.split(" ")[0]}`),
      [`${gen2} test`],
      "exactly one switch, by the new generation's own script: `test` (the confirm window)",
    );
    assert.equal(readBootDefault(s.host.paths.root), gen2, "verified, then made the boot default (`boot`)");
    assert.ok(s.cacheServer!.count(/\.narinfo$/) > 0, "fetched over HTTP");

    // The journal.
    const db = s.journal();
    try {
      const rows = deploymentRows(db);
      assert.equal(rows.length, 1);
      const row = rows[0]!;
      assert.equal(row["id"], deployed.deploymentId);
      assert.equal(row["outcome"], "DEPLOYED");
      assert.equal(row["phase"], "done");
      assert.equal(row["previous"], gen1, "the exact previous store path was journaled");
      assert.equal(row["desired"], gen2);
      assert.equal(row["desired_revision"], assigned.revision.toString());
      assert.equal(row["previous_profile_generation"], 1);
      const phases = phaseRows(db, String(row["id"]));
      assert.deepEqual(
        phases.map((p) => p["phase"]),
        ["fetching", "applying", "switching", "verifying", "committing"],
      );
      for (const p of phases)
        assert.ok(Number(p["ended_at"]) >= Number(p["started_at"]), "every phase closed");
    } finally {
      db.close();
    }

    // One log line per phase transition, with the deployment, both generations and a duration.
    const transitions = agent.find((l) => l.event === "phase" && l["deploymentId"] === deployed.deploymentId);
    assert.deepEqual(
      transitions.map((l) => l["phase"]),
      ["fetching", "applying", "switching", "verifying", "committing"],
    );
    for (const l of transitions.slice(1)) {
      assert.equal(l["desired"], gen2);
      assert.equal(l["previous"], gen1);
      assert.equal(typeof l["durationMs"], "number");
    }
    const finished = agent.find({ event: "deployment_finished", outcome: "DEPLOYED" });
    assert.equal(finished.length, 1);

    // Metrics after a real cycle.
    await s.cp.waitFor(() => agent.find({ event: "next_cycle" }).length >= 3, 30_000, "a few more cycles");
    const text = await scrape(port);
    assert.equal(metricValue(text, "nixfleet_agent_generation_info", { generation: gen2 }), 1);
    assert.equal(
      metricValue(text, "nixfleet_agent_generation_info", { generation: gen1 }),
      undefined,
      "old series removed",
    );
    assert.equal(metricValue(text, "nixfleet_agent_deploys_total", { outcome: "DEPLOYED" }), 1);
    assert.equal(metricValue(text, "nixfleet_agent_session_connected"), 1);
    assert.equal(metricValue(text, "nixfleet_agent_health_check_status", { check_name: "marker" }), 1);
    assert.ok((metricValue(text, "nixfleet_agent_last_successful_deploy_timestamp_seconds") ?? 0) > 1e9);
    assert.ok((metricValue(text, "nixfleet_agent_last_poll_timestamp_seconds") ?? 0) > 1e9);
    const certExpiry = metricValue(text, "nixfleet_agent_certificate_expiry_timestamp_seconds") ?? 0;
    assert.ok(certExpiry > Date.now() / 1000, "the client certificate's expiry, in the future");
    assert.ok(
      (metricValue(text, "nixfleet_agent_phase_duration_seconds_count", { phase: "fetching" }) ?? 0) >= 1,
    );
    assert.ok(
      (metricValue(text, "nixfleet_agent_health_check_duration_seconds_count", {
        check_name: "marker",
        check_type: "command",
      }) ?? 0) >= 1,
    );
    assert.equal(metricValue(text, "nixfleet_agent_quarantined_paths"), 0);
    assert.equal(metricValue(text, "nixfleet_agent_rollback_failed"), 0);
    const states = text.split("\n").filter((l) => l.startsWith("nixfleet_agent_state{"));
    assert.equal(states.length, 7, "every state has a series");
    assert.equal(states.filter((l) => l.endsWith(" 1")).length, 1, "exactly one state is 1");

    // Steady state: no second switch, and UP_TO_DATE not on every tick — consecutive reports of
    // the same state are at least healthInterval apart (by the agent's own timestamps).
    assert.equal(s.host.switchLog().filter((e) => e.event === "start").length, 1);
    const upToDate = s.cp
      .reportsFor(s.machineId)
      .filter((r) => r.outcome === Outcome.UP_TO_DATE && r.desiredGeneration === gen2);
    const cycles = agent.find({ event: "next_cycle" }).length;
    assert.ok(
      upToDate.length < cycles,
      `fewer UP_TO_DATE reports (${upToDate.length}) than cycles (${cycles})`,
    );
    const stamps = upToDate.map((r) => Number(r.timestamp!.seconds) * 1000 + r.timestamp!.nanos / 1e6);
    for (let i = 1; i < stamps.length; i++) {
      assert.ok(stamps[i]! - stamps[i - 1]! >= 2000 - 50, `spaced by healthInterval: ${stamps.join(", ")}`);
    }
    // Periodic health reports keep coming, bound to the running generation.
    const periodic = await s.cp.waitForHealth((h) => !h.postApply && h.currentGeneration === gen2);
    assert.equal(periodic.allPassed, true);

    // The same path assigned again (a new rollout): UP_TO_DATE with the new revision and a
    // fresh health report at once, so a rollout gate sees health newer than its batch start.
    const fromReports = s.cp.reports.length;
    const fromHealth = s.cp.healthReports.length;
    const reassigned = s.cp.setDesired(s.machineId, { hash: gen2, cacheUrl: s.cacheUrl })!;
    const again = await s.cp.waitForReport(
      (r) => r.outcome === Outcome.UP_TO_DATE && r.desiredRevision === reassigned.revision,
      60_000,
      fromReports,
    );
    assert.equal(again.currentGeneration, gen2);
    await s.cp.waitForHealth((h) => h.currentGeneration === gen2 && !h.postApply, 60_000, fromHealth);
    assert.equal(s.host.switchLog().filter((e) => e.event === "start").length, 1, "still no re-apply");

    // Cleared assignment: idle again, nothing touched.
    const fromIdle = s.cp.reports.length;
    s.cp.setDesired(s.machineId, undefined);
    const cleared = await s.cp.waitForReport(
      (r) => r.desiredGeneration === "" && r.outcome === Outcome.UP_TO_DATE,
      60_000,
      fromIdle,
    );
    assert.match(cleared.message, /no desired generation/);
    assert.equal(s.host.current(), gen2);

    const exit = await agent.stop();
    assert.deepEqual(exit, { code: 0, signal: null });
    assert.ok(agent.find({ event: "stopped" }).length === 1);
  });

  it("dryRun fetches and reports DRY_RUN but never switches", async (t) => {
    const s = await setupScenario({ systems: [{ label: "gen2" }], cached: ["gen2"] });
    t.after(() => s.cleanup());
    // healthInterval 60 s: within this test a steady state is reported exactly once.
    s.writeConfig({ dryRun: true, healthInterval: 60 });
    const agent = s.startAgent();
    s.cp.setDesired(s.machineId, { hash: s.systems["gen2"]!.path, cacheUrl: s.cacheUrl });
    const dry = await s.cp.waitForReport((r) => r.outcome === Outcome.DRY_RUN);
    assert.equal(dry.success, true);
    assert.equal(dry.currentGeneration, s.gen1.path);
    assert.match(dry.message, /dryRun: not applied/);
    const after = agent.find({ event: "next_cycle" }).length;
    await s.cp.waitFor(() => agent.find({ event: "next_cycle" }).length >= after + 3, 30_000, "more cycles");
    assert.equal(s.host.current(), s.gen1.path, "never switched");
    assert.equal(s.host.switchLog().length, 0, "no switch script ran");
    assert.equal(s.host.profileGenerations().length, 1, "the profile was not touched");
    assert.equal(
      s.cp.outcomes(s.machineId).filter((o) => o === "DRY_RUN").length,
      1,
      "reported once, not every tick",
    );
    assert.deepEqual(await agent.stop(), { code: 0, signal: null });
  });

  it("refuses a malformed store path from the server: reported, nothing executed", async (t) => {
    const s = await setupScenario();
    t.after(() => s.cleanup());
    s.writeConfig();
    const agent = s.startAgent();
    s.cp.setDesired(s.machineId, { hash: "/nix/store/not-a-hash; rm -rf /", cacheUrl: s.cacheUrl });
    const refused = await s.cp.waitForReport((r) => r.outcome === Outcome.FETCH_FAILED);
    assert.equal(refused.success, false);
    assert.match(refused.message, /refused the desired generation/);
    assert.match(refused.message, /nothing was fetched or executed/);
    assert.equal(refused.desiredGeneration, "", "the bad value is not echoed back as a generation");
    await agent.waitForLog({ event: "desired_refused" });
    assert.equal(s.host.current(), s.gen1.path);
    assert.equal(s.host.switchLog().length, 0);
    const db = s.journal();
    try {
      assert.equal(deploymentRows(db).length, 0, "no deployment was even started");
    } finally {
      db.close();
    }
    // A cache URL that would turn off signature checking is refused the same way.
    const from = s.cp.reports.length;
    s.cp.setDesired(s.machineId, {
      hash: s.gen1.path.replace(/gen1$/, "gen9"),
      cacheUrl: `${s.cacheUrl}?trusted=1`,
    });
    const badCache = await s.cp.waitForReport((r) => r.outcome === Outcome.FETCH_FAILED, 60_000, from);
    assert.match(badCache.message, /refused the cache URL/);
    assert.deepEqual(await agent.stop(), { code: 0, signal: null });
  });

  it("works end to end over connect-json (HTTP/1.1): polling, Watch pushes, reports", async (t) => {
    const s = await setupScenario({ systems: [{ label: "gen2" }], cached: ["gen2"] });
    t.after(() => s.cleanup());
    s.writeConfig({ protocol: "connect-json", pollInterval: 300 });
    const agent = s.startAgent();
    await s.cp.waitForReport((r) => r.desiredGeneration === "");
    await s.cp.waitFor(() => s.cp.connectedStreams(s.machineId) > 0, 30_000, "the Watch stream");
    assert.equal(s.cp.calls["session"], 0, "no bidi Session over HTTP/1.1");
    // pollInterval is 300 s: only the Watch push can start this deployment in time.
    s.cp.setDesired(s.machineId, { hash: s.systems["gen2"]!.path, cacheUrl: s.cacheUrl });
    const deployed = await s.cp.waitForReport((r) => r.outcome === Outcome.DEPLOYED);
    assert.equal(deployed.currentGeneration, s.systems["gen2"]!.path);
    await s.cp.waitForHealth((h) => h.postApply);
    assert.ok(s.cp.calls["getDesiredGeneration"]! >= 1, "the first cycle polled");
    assert.deepEqual(await agent.stop(), { code: 0, signal: null });
  });
});
