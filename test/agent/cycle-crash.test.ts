/**
 * Crash injection at every persisted state, in-process (after Mender's state_test.cpp, which
 * injects a reboot at every state). For each scenario the cycle runs once to list its journal
 * writes; then, for each write, a fresh host and journal run the cycle until just after that
 * write and "die" (the interpreter is dropped mid-cycle). A new agent over the same journal file
 * and the same host (a World keeps what really happened) recovers and runs the cycle again, as
 * the control plane keeps asking. The settled end state and the reports the control plane would
 * receive (the outbox) are then checked:
 * - nothing is left unfinished; the host runs what the outcome says; a failure is quarantined;
 * - every outcome is queued, an APPLYING is always followed by an outcome for the same id;
 * - a switch to the failed generation never runs twice at the same revision.
 * Both activation orders run every scenario, and each also with a reboot (power cut) right
 * after the write: the host then boots its boot default, and the boot default must agree with
 * the outcome.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { describe, it } from "node:test";
import { TABLE } from "../../src/agent/cycle/table.js";
import type { StateName } from "../../src/agent/cycle/types.js";
import { MAX_ROLLBACK_ATTEMPTS } from "../../src/agent/deployer.js";
import { type ActivationOrder, type FinalOutcome, Journal } from "../../src/agent/journal/journal.js";
import { tempDir } from "../fixtures/tmp.js";
import { agentOver, GEN1, GEN2, GEN3, World } from "./harness/fake-host.js";

class Crash extends Error {}

interface Scenario {
  name: string;
  setup(w: World): void;
  outcome: FinalOutcome;
  /** Where the host ends: current-system (and the profile, unless null). */
  host: { current: string; profile: string | null };
}

const SCENARIOS: Scenario[] = [
  {
    name: "a good generation",
    setup: (w) => {
      w.cache.add(GEN2);
      w.healthy.add(GEN2);
    },
    outcome: "DEPLOYED",
    host: { current: GEN2, profile: GEN2 },
  },
  {
    name: "a switch that fails",
    setup: (w) => {
      w.cache.add(GEN2);
      w.behaviours.set(GEN2, { code: 1 });
    },
    outcome: "ROLLED_BACK",
    host: { current: GEN1, profile: GEN1 },
  },
  {
    name: "health checks that fail",
    setup: (w) => w.cache.add(GEN2),
    outcome: "ROLLED_BACK",
    host: { current: GEN1, profile: GEN1 },
  },
  {
    name: "a switch that hangs past activationTimeout",
    setup: (w) => {
      w.cache.add(GEN2);
      w.behaviours.set(GEN2, { hang: true });
    },
    outcome: "ROLLED_BACK",
    host: { current: GEN1, profile: GEN1 },
  },
  {
    name: "a rollback that fails too",
    setup: (w) => {
      w.cache.add(GEN2);
      w.behaviours.set(GEN2, { code: 0 });
      w.behaviours.set(GEN1, { code: 1 });
    },
    outcome: "ROLLBACK_FAILED",
    host: { current: GEN2, profile: null },
  },
  {
    name: "another switch taking the host",
    setup: (w) => {
      w.cache.add(GEN2);
      w.behaviours.set(GEN2, { lands: GEN3 });
    },
    outcome: "FOREIGN_GENERATION",
    host: { current: GEN3, profile: null },
  },
  {
    name: "a closure the cache does not have",
    setup: () => {},
    outcome: "FETCH_FAILED",
    host: { current: GEN1, profile: GEN1 },
  },
];

// "a rollback that fails too" needs GEN2 unhealthy so that the rollback is tried.
const desired = { path: GEN2, cacheUrl: "", revision: 5n, rolloutId: "r1" };
const signal = () => new AbortController().signal;

const ORDERS: ActivationOrder[] = ["confirm", "switch"];

/** The states each journal write of one uninterrupted run leads to. */
async function persistPoints(s: Scenario, dir: string, order: ActivationOrder): Promise<StateName[]> {
  const world = new World();
  s.setup(world);
  const { journal } = Journal.open(join(dir, `probe-${order}.db`));
  const points: StateName[] = [];
  try {
    await agentOver(world, journal, {
      afterPersist: (st) => points.push(st.at),
      config: { activationOrder: order },
    }).runCycle(desired, signal());
  } finally {
    journal.close();
  }
  return points;
}

/**
 * The end state when the agent dies at `at`. Two rules of recovery.ts make it differ from the
 * uninterrupted run: a switch journaled as planned but never started is indistinguishable from
 * one that vanished, and a vanished switch is rolled back, never blindly retried; and a host
 * found on neither generation after a restart while verifying is rolled back (the agent cannot
 * tell whose switch that was).
 */
function expected(s: Scenario, at: StateName): Pick<Scenario, "outcome" | "host"> {
  const rolledBack = { outcome: "ROLLED_BACK" as const, host: { current: GEN1, profile: GEN1 } };
  if (at === "switch-planned") {
    if (s.outcome === "DEPLOYED" || s.outcome === "FOREIGN_GENERATION") return rolledBack;
    // The failing rollback switch leaves the host where it was: on the previous generation.
    if (s.outcome === "ROLLBACK_FAILED")
      return { outcome: "ROLLBACK_FAILED", host: { current: GEN1, profile: null } };
  }
  if (at === "verify-persisted" && s.outcome === "FOREIGN_GENERATION") return rolledBack;
  return s;
}

/** Dies after write `k` (and, with `reboot`, the host reboots); then a new agent settles. */
async function dieAndSettle(
  s: Scenario,
  order: ActivationOrder,
  path: string,
  k: number,
  at: StateName,
  reboot: boolean,
): Promise<{ world: World; journal: Journal }> {
  const world = new World();
  s.setup(world);
  if (s.outcome === "ROLLBACK_FAILED") world.healthy.delete(GEN2);
  const config = { activationOrder: order };
  const first = Journal.open(path).journal;
  let writes = 0;
  const dying = agentOver(world, first, {
    config,
    afterPersist: () => {
      if (writes++ === k) throw new Crash(`killed after write ${k} (${at})`);
    },
  });
  await assert.rejects(dying.runCycle(desired, signal()), Crash, `dies after ${at}`);
  first.close();
  if (reboot) world.reboot();

  const journal = Journal.open(path).journal;
  const agent = agentOver(world, journal, { config });
  await agent.recover(signal());
  await agent.runCycle(desired, signal());
  await agent.runCycle(desired, signal());
  return { world, journal };
}

/** What the control plane receives: every outcome, one per deployment, APPLYING always answered. */
function checkReports(journal: Journal, where: string): void {
  const reports = journal.outbox().filter((i) => i.kind === "report");
  for (const dep of journal.recent(10)) {
    const mine = reports.filter((r) => r.deploymentId === dep.id).map((r) => r.outcome);
    if (dep.outcome === "INTERRUPTED") {
      if (mine.includes("APPLYING"))
        assert.deepEqual(
          mine,
          ["APPLYING", "FETCH_FAILED"],
          `${where}: an abandoned APPLYING gets an outcome`,
        );
      else assert.deepEqual(mine, [], `${where}: nothing to say for an abandoned fetch`);
    } else {
      assert.equal(mine.at(-1), dep.outcome, `${where}: ${dep.outcome} is queued for the control plane`);
      // ROLLBACK_FAILED is re-reported while it stands (a reboot may change current_generation).
      const outcomes = new Set(mine.filter((o) => o !== "APPLYING"));
      assert.ok(outcomes.size === 1, `${where}: one outcome per deployment`);
    }
  }
}

describe("crash injection at every persisted state (in-process, fake host)", () => {
  it("the scenarios together die after every kind of journal write the table has", async (t) => {
    const covered = new Set<string>();
    for (const order of ORDERS)
      for (const s of SCENARIOS) for (const at of await persistPoints(s, tempDir(t), order)) covered.add(at);
    const persisting = new Set(TABLE.filter((r) => r.action === "persist").map((r) => r.to));
    assert.deepEqual(
      [...persisting].filter((at) => !covered.has(at)),
      [],
    );
  });

  for (const order of ORDERS)
    for (const s of SCENARIOS) {
      it(`${order} order, ${s.name}: settles truthfully whichever write the agent dies after`, async (t) => {
        const dir = tempDir(t);
        const points = await persistPoints(s, dir, order);
        assert.ok(points.length >= 2, `the scenario persists (${points.join(", ")})`);
        for (const [k, at] of points.entries()) {
          const { world, journal } = await dieAndSettle(s, order, join(dir, `crash-${k}.db`), k, at, false);
          try {
            const where = `${order} order, ${s.name}, killed after ${at} (write ${k})`;
            const want = expected(s, at);

            assert.deepEqual(journal.unfinished(), [], `${where}: nothing left unfinished`);
            const last = journal.recent(1)[0]!;
            assert.equal(last.outcome, want.outcome, `${where}: the outcome`);
            assert.equal(world.current, want.host.current, `${where}: current-system`);
            if (want.host.profile) {
              assert.equal(world.profile(), want.host.profile, `${where}: the profile`);
              assert.equal(world.bootDefault, want.host.profile, `${where}: the boot default`);
            }
            if (["ROLLED_BACK", "ROLLBACK_FAILED", "FOREIGN_GENERATION"].includes(want.outcome))
              assert.equal(
                journal.quarantineEntry(GEN2)?.revision,
                5n,
                `${where}: quarantined at its revision`,
              );
            checkReports(journal, where);
            if (last.outcome === "DEPLOYED")
              assert.ok(
                journal.outbox().some((i) => i.kind === "health" && i.deploymentId === last.id),
                `${where}: the post-apply health report is queued`,
              );

            // Never a failed switch again at the same revision; rollbacks stay bounded.
            assert.ok(world.switchesTo(GEN2).length <= 1, `${where}: GEN2's switch ran at most once`);
            assert.ok(world.switchesTo(GEN1).length <= MAX_ROLLBACK_ATTEMPTS, `${where}: bounded rollbacks`);
            if (order === "confirm" && want.outcome !== "DEPLOYED")
              assert.ok(
                world.switchesTo(GEN1).every((x) => x.verb === "test"),
                `${where}: the confirm window's rollback re-activates previous with test`,
              );
          } finally {
            journal.close();
          }
        }
      });

      it(`${order} order, ${s.name}: a reboot right after any write boots a generation the outcome agrees with`, async (t) => {
        const dir = tempDir(t);
        const points = await persistPoints(s, dir, order);
        for (const [k, at] of points.entries()) {
          const { world, journal } = await dieAndSettle(s, order, join(dir, `reboot-${k}.db`), k, at, true);
          try {
            const where = `${order} order, ${s.name}, power cut after ${at} (write ${k})`;
            assert.deepEqual(journal.unfinished(), [], `${where}: nothing left unfinished`);
            const last = journal.recent(1)[0]!;
            if (last.outcome === "DEPLOYED") {
              assert.equal(world.current, GEN2, `${where}: runs the deployed generation`);
              assert.equal(world.bootDefault, GEN2, `${where}: and boots it`);
            }
            if (last.outcome === "ROLLED_BACK" || last.outcome === "ROLLED_BACK_BY_REBOOT") {
              assert.equal(world.current, GEN1, `${where}: runs the previous generation`);
              assert.equal(world.bootDefault, GEN1, `${where}: and boots it`);
              assert.equal(journal.quarantineEntry(GEN2)?.revision, 5n, `${where}: quarantined`);
            }
            if (last.outcome === "ROLLED_BACK_BY_REBOOT")
              assert.equal(order, "confirm", `${where}: only the confirm order has a confirm window`);
            // The reboot during the confirm window is recognised as what rolled the host back.
            if (s.name === "a good generation" && (at === "switch-recorded" || at === "verify-persisted"))
              assert.equal(
                last.outcome,
                order === "confirm" ? "ROLLED_BACK_BY_REBOOT" : "DEPLOYED",
                `${where}: the outcome`,
              );
            checkReports(journal, where);
            assert.ok(world.switchesTo(GEN2).length <= 1, `${where}: GEN2's switch ran at most once`);
          } finally {
            journal.close();
          }
        }
      });
    }
});
