/**
 * Fetch failures through the agent process: a path missing from the cache, a cache that is down,
 * a wrongly signed path. Each is FETCH_FAILED with the reason, leaves the host untouched (no
 * switch, no profile generation, no journal intent), is retried after retryInterval — and heals
 * into a deployment once the cache is fixed.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Outcome } from "../../src/gen/nixfleet/v1/types_pb.js";
import { deploymentRows, type Scenario, setupScenario } from "./harness/scenario.js";

function assertUntouched(s: Scenario): void {
  assert.equal(s.host.current(), s.gen1.path, "current-system unchanged");
  assert.equal(s.host.profileGenerations().length, 1, "no profile generation added");
  assert.equal(s.host.switchLog().length, 0, "no switch script ran");
  const db = s.journal();
  try {
    for (const row of deploymentRows(db)) {
      assert.equal(row["outcome"], "FETCH_FAILED");
      assert.equal(row["previous"], null, "no apply intent was ever written");
    }
  } finally {
    db.close();
  }
}

describe("agent process: fetch failures", () => {
  it("a path missing from the cache: FETCH_FAILED, retried after retryInterval, deployed once pushed", async (t) => {
    // Over HTTP: Nix's negative narinfo cache must not hide the path once it is pushed.
    const s = await setupScenario({ systems: [{ label: "gen2" }], httpCache: true });
    t.after(() => s.cleanup());
    const gen2 = s.systems["gen2"]!.path;
    // In the cache's files but without its narinfo: "not pushed yet". Not in the local store.
    await s.cache.push([gen2], { deleteLocal: true });
    s.cache.hide(gen2);
    s.writeConfig();
    const agent = s.startAgent();
    s.cp.setDesired(s.machineId, { hash: gen2, cacheUrl: s.cacheUrl });
    const first = await s.cp.waitForReport((r) => r.outcome === Outcome.FETCH_FAILED);
    assert.equal(first.success, false);
    assert.equal(first.desiredGeneration, gen2);
    assert.match(first.message, /there is no substituter/);
    assert.match(first.message, /the running system was not touched/);
    const second = await s.cp.waitForReport(
      (r) => r.outcome === Outcome.FETCH_FAILED && r.deploymentId !== first.deploymentId,
    );
    assert.notEqual(second.deploymentId, first.deploymentId, "each attempt is its own journaled deployment");
    const retry = agent.find((l) => l.event === "next_cycle" && l["verdict"] === "failed");
    assert.ok(retry.length > 0);
    for (const l of retry) {
      const delay = Number(l["delayMs"]);
      assert.ok(delay >= 900 && delay <= 1100, `retryInterval (1 s ±10 %) after a failure, got ${delay}`);
    }
    assertUntouched(s);

    // The CI pushes it at last: the next retry deploys it.
    s.cache.unhide(gen2);
    const deployed = await s.cp.waitForReport((r) => r.outcome === Outcome.DEPLOYED);
    assert.equal(deployed.currentGeneration, gen2);
    assert.equal(s.host.current(), gen2);
    assert.deepEqual(await agent.stop(), { code: 0, signal: null });
  });

  it("a cache that is down: FETCH_FAILED, host untouched, deployed when the cache comes back", async (t) => {
    const s = await setupScenario({ systems: [{ label: "gen2" }], cached: ["gen2"], httpCache: true });
    t.after(() => s.cleanup());
    await s.cacheServer!.stop();
    s.writeConfig();
    const agent = s.startAgent();
    s.cp.setDesired(s.machineId, { hash: s.systems["gen2"]!.path, cacheUrl: s.cacheUrl });
    const failed = await s.cp.waitForReport((r) => r.outcome === Outcome.FETCH_FAILED);
    assert.match(failed.message, /unable to download|Couldn't connect/);
    assert.match(failed.message, /check that the cache is up/);
    await s.cp.waitForReport(
      (r) => r.outcome === Outcome.FETCH_FAILED && r.deploymentId !== failed.deploymentId,
    );
    assertUntouched(s);
    await s.cacheServer!.start();
    const deployed = await s.cp.waitForReport((r) => r.outcome === Outcome.DEPLOYED);
    assert.equal(deployed.currentGeneration, s.systems["gen2"]!.path);
    assert.ok(s.cacheServer!.count(/\.narinfo$/) > 0);
    assert.deepEqual(await agent.stop(), { code: 0, signal: null });
  });

  it("a wrongly signed path: FETCH_FAILED naming the signature, nothing unsigned enters the host", async (t) => {
    const s = await setupScenario({ systems: [{ label: "gen2" }], cached: ["gen2"] });
    t.after(() => s.cleanup());
    s.cache.corruptSignature(s.systems["gen2"]!.path);
    s.writeConfig();
    const agent = s.startAgent();
    s.cp.setDesired(s.machineId, { hash: s.systems["gen2"]!.path, cacheUrl: s.cacheUrl });
    const failed = await s.cp.waitForReport((r) => r.outcome === Outcome.FETCH_FAILED);
    assert.match(failed.message, /lacks a valid signature/);
    assert.match(failed.message, /trusted-public-keys/);
    assertUntouched(s);
    assert.deepEqual(await agent.stop(), { code: 0, signal: null });
  });
});
