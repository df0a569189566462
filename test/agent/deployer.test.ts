/**
 * The deploy cycle over fakes of its ports (harness/fake-host.ts), with crash injection: the
 * journal is wrapped so the agent "dies" right after a chosen write; a new agent over the same
 * journal file and the same World must settle the deployment truthfully, with every outcome
 * queued for the control plane and no failed switch run again at the same revision.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { describe, it } from "node:test";
import { Journal } from "../../src/agent/journal/journal.js";
import { decodeRow } from "../../src/agent/transport/outbox-row.js";
import { Outcome } from "../../src/gen/nixfleet/v1/types_pb.js";
import { tempDir } from "../fixtures/tmp.js";
import { agentOver as agent, GEN1, GEN2, World } from "./harness/fake-host.js";

class Crash extends Error {}

/** The journal, failing (like a killed process) right after the `nth` call of `method` returns. */
function crashing(journal: Journal, method: keyof Journal, nth = 1): Journal {
  let calls = 0;
  return new Proxy(journal, {
    get(target, prop, receiver) {
      const value = Reflect.get(target, prop, receiver);
      if (typeof value !== "function") return value;
      return (...args: unknown[]) => {
        const result = value.apply(target, args);
        if (prop === method && ++calls === nth) throw new Crash(`killed after ${String(method)}`);
        return result;
      };
    },
  });
}

const desired = (path: string, revision = 1n) => ({ path, cacheUrl: "", revision, rolloutId: "" });

/** What the control plane would receive for `deploymentId`: outcome names in order. */
function reportsFor(journal: Journal, deploymentId: string): string[] {
  return journal
    .outbox()
    .filter((i) => i.kind === "report" && i.deploymentId === deploymentId)
    .map((i) => i.outcome);
}

describe("deploy cycle over fake ports", () => {
  it("a DEPLOYED outcome journaled just before a crash still reaches the control plane, with its health", async (t) => {
    const world = new World();
    world.cache.add(GEN2);
    world.healthy.add(GEN2);
    const path = join(tempDir(t), "state.db");
    const { journal } = Journal.open(path);
    await assert.rejects(
      agent(world, crashing(journal, "finish")).runCycle(desired(GEN2), new AbortController().signal),
      Crash,
    );
    journal.close();

    const again = Journal.open(path).journal;
    t.after(() => again.close());
    await agent(world, again).recover(new AbortController().signal);
    const dep = again.recent(1)[0]!;
    assert.equal(dep.outcome, "DEPLOYED");
    assert.deepEqual(reportsFor(again, dep.id), ["APPLYING", "DEPLOYED"]);
    const health = again.outbox().filter((i) => i.kind === "health" && i.deploymentId === dep.id);
    assert.equal(health.length, 1, "the post-apply health report is queued with the outcome");
  });

  it("a crash between a rollback and its quarantine never runs the failed switch again at that revision", async (t) => {
    const world = new World();
    world.cache.add(GEN2);
    world.behaviours.set(GEN2, { code: 1 });
    const path = join(tempDir(t), "state.db");
    const { journal } = Journal.open(path);
    await assert.rejects(
      agent(world, crashing(journal, "finish")).runCycle(desired(GEN2, 7n), new AbortController().signal),
      Crash,
    );
    journal.close();
    assert.equal(world.current, GEN1, "rolled back");

    const again = Journal.open(path).journal;
    t.after(() => again.close());
    const a = agent(world, again);
    await a.recover(new AbortController().signal);
    await a.runCycle(desired(GEN2, 7n), new AbortController().signal);
    assert.equal(world.switchesTo(GEN2).length, 1, "the failed switch ran once");
    const dep = again.recent(1)[0]!;
    assert.equal(dep.outcome, "ROLLED_BACK");
    assert.deepEqual(reportsFor(again, dep.id), ["APPLYING", "ROLLED_BACK"]);
    const last = again.outbox().at(-1)!;
    assert.equal(last.outcome, "QUARANTINED");
    assert.equal(again.quarantineEntry(GEN2)?.revision, 7n);
  });

  it("a stop while fetching ends the deployment INTERRUPTED; nothing is reported, nothing changed", async (t) => {
    const world = new World();
    world.cache.add(GEN2);
    let release!: () => void;
    world.fetchGate = new Promise((r) => (release = r));
    const { journal } = Journal.open(join(tempDir(t), "state.db"));
    t.after(() => journal.close());
    const stop = new AbortController();
    const cycle = agent(world, journal).runCycle(desired(GEN2), stop.signal);
    stop.abort();
    release();
    await assert.rejects(cycle, { name: "Parked" });
    const dep = journal.recent(1)[0]!;
    assert.equal(dep.outcome, "INTERRUPTED");
    assert.equal(journal.unfinished().length, 0);
    assert.deepEqual(reportsFor(journal, dep.id), [], "no APPLYING was sent, so no outcome is owed");
    assert.equal(world.current, GEN1);
  });

  it("an APPLYING is followed by an outcome for the same deployment even when it is abandoned before its switch", async (t) => {
    const world = new World();
    world.cache.add(GEN2);
    const path = join(tempDir(t), "state.db");
    const { journal } = Journal.open(path);
    await assert.rejects(
      agent(world, crashing(journal, "beginApply")).runCycle(desired(GEN2), new AbortController().signal),
      Crash,
    );
    journal.close();
    const again = Journal.open(path).journal;
    t.after(() => again.close());
    const first = again.unfinished()[0]!;
    await agent(world, again).recover(new AbortController().signal);
    const reports = again.outbox().filter((i) => i.deploymentId === first.id);
    assert.deepEqual(
      reports.map((i) => i.outcome),
      ["APPLYING", "FETCH_FAILED"],
    );
    const outcome = decodeRow(reports[1]!);
    assert.equal(outcome.$typeName === "nixfleet.v1.ReportRequest" && outcome.outcome, Outcome.FETCH_FAILED);
    assert.equal(again.get(first.id)?.outcome, "INTERRUPTED");
  });

  it("a switch that cannot start and a profile that cannot be put back (switch order): APPLY_FAILED, the profile problem left as is and logged", async (t) => {
    const world = new World();
    world.cache.add(GEN2);
    world.failing.add("startSwitch");
    world.failing.add("switchProfileGeneration");
    const { journal } = Journal.open(join(tempDir(t), "state.db"));
    t.after(() => journal.close());
    const verdict = await agent(world, journal, { config: { activationOrder: "switch" } }).runCycle(
      desired(GEN2),
      new AbortController().signal,
    );
    assert.equal(verdict, "failed");
    const dep = journal.recent(1)[0]!;
    assert.equal(dep.outcome, "APPLY_FAILED");
    assert.match(dep.message ?? "", /could not start switch-to-configuration/);
    assert.equal(world.current, GEN1, "nothing switched");
    assert.equal(world.profile(), GEN2, "the profile could not be restored (the next boot would pick it)");
    assert.deepEqual(reportsFor(journal, dep.id), ["APPLYING", "APPLY_FAILED"]);
  });

  it("a switch that cannot start (confirm order): APPLY_FAILED, the profile never moved", async (t) => {
    const world = new World();
    world.cache.add(GEN2);
    world.failing.add("startSwitch");
    world.failing.add("switchProfileGeneration");
    const { journal } = Journal.open(join(tempDir(t), "state.db"));
    t.after(() => journal.close());
    const verdict = await agent(world, journal).runCycle(desired(GEN2), new AbortController().signal);
    assert.equal(verdict, "failed");
    assert.equal(journal.recent(1)[0]!.outcome, "APPLY_FAILED");
    assert.equal(world.current, GEN1, "nothing switched");
    assert.deepEqual(world.profileGenerations, [GEN1], "the profile was never touched");
    assert.equal(world.bootDefault, GEN1);
  });

  it("a restart after the profile moved but before the switch puts the profile back and owes an outcome", async (t) => {
    const world = new World();
    world.cache.add(GEN2);
    const path = join(tempDir(t), "state.db");
    const { journal } = Journal.open(path);
    await assert.rejects(
      agent(world, crashing(journal, "beginApply")).runCycle(desired(GEN2), new AbortController().signal),
      Crash,
    );
    journal.close();
    // What the dead agent did after the intent and before it died: the profile moved.
    await world.nix().setProfile("/profile", GEN2);
    const again = Journal.open(path).journal;
    t.after(() => again.close());
    const first = again.unfinished()[0]!;
    await agent(world, again).recover(new AbortController().signal);
    assert.equal(world.profile(), GEN1, "the profile is back on the previous generation");
    assert.equal(world.profileAt, 1, "the very generation it was on");
    assert.equal(again.get(first.id)?.outcome, "INTERRUPTED");
    assert.deepEqual(reportsFor(again, first.id), ["APPLYING", "FETCH_FAILED"]);
  });

  it("a rollback switch still running at restart is waited for, then the deployment is ROLLED_BACK", async (t) => {
    const world = new World();
    world.cache.add(GEN2);
    world.behaviours.set(GEN2, { code: 1 });
    world.behaviours.set(GEN1, { hang: true, endsAfterPolls: 3 });
    const path = join(tempDir(t), "state.db");
    const { journal } = Journal.open(path);
    // Dies right after journaling the started rollback switch (the 2nd recordActivation).
    await assert.rejects(
      agent(world, crashing(journal, "recordActivation", 2)).runCycle(
        desired(GEN2),
        new AbortController().signal,
      ),
      Crash,
    );
    journal.close();
    const again = Journal.open(path).journal;
    t.after(() => again.close());
    const dep = again.unfinished()[0]!;
    assert.equal(dep.phase, "rolling_back");
    await agent(world, again).recover(new AbortController().signal);
    assert.equal(again.get(dep.id)?.outcome, "ROLLED_BACK");
    assert.equal(world.switchesTo(GEN1).length, 1, "waited for, not started again");
    assert.equal(world.current, GEN1);
    assert.deepEqual(reportsFor(again, dep.id), ["APPLYING", "ROLLED_BACK"]);
  });
  it("a switch whose state cannot be read for a while is waited for, not taken for vanished", async (t) => {
    const world = new World();
    world.cache.add(GEN2);
    world.healthy.add(GEN2);
    world.behaviours.set(GEN2, { queryFailures: 3 });
    const { journal } = Journal.open(join(tempDir(t), "state.db"));
    t.after(() => journal.close());
    await agent(world, journal).runCycle(desired(GEN2), new AbortController().signal);
    const dep = journal.recent(1)[0]!;
    assert.equal(dep.outcome, "DEPLOYED", dep.message ?? "");
    assert.equal(world.switchesTo(GEN2).length, 1);
  });

  it("a switch unit that failed without a status file rolls back with systemd's exit and reason", async (t) => {
    const world = new World();
    world.cache.add(GEN2);
    world.healthy.add(GEN2);
    const reason = "the switch unit failed (Result=signal, killed by SIGKILL)";
    world.behaviours.set(GEN2, { code: 137, failedUnit: reason });
    const { journal } = Journal.open(join(tempDir(t), "state.db"));
    t.after(() => journal.close());
    await agent(world, journal).runCycle(desired(GEN2), new AbortController().signal);
    const dep = journal.recent(1)[0]!;
    assert.equal(dep.outcome, "ROLLED_BACK");
    assert.ok(dep.message?.includes(`exited with code 137 (${reason})`), dep.message ?? "");
    assert.equal(world.current, GEN1);
  });
});
