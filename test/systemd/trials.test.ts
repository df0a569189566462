/**
 * Issue 13, item 6, in the tier: six power-cut and kill trials across the phases of a
 * deployment (test/fixtures/power-cut-trials.ts says what each checks; `npm run trials` runs a
 * hundred). Two machines run side by side to keep the tier short: one takes the power cuts,
 * the other the kills (`systemctl kill -s KILL nixfleet-agent`), each reused across its trials.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { AgentMachine } from "../fixtures/agent-machine.js";
import { Fleet } from "../fixtures/fleet.js";
import {
  type CutPoint,
  type Disruption,
  type PlannedTrial,
  planTrials,
  runTrials,
  trialSystems,
  trialTable,
} from "../fixtures/power-cut-trials.js";
import { makeTempDir, removeTempDir } from "../fixtures/tmp.js";
import { tier } from "./tier.js";

/**
 * Which phases each disruption is tried in: three trials a machine, so that the file takes about
 * as long as the tier's others (ten trials took 215 s in the tier on 2 busy cores and pushed it
 * to 4 min). `fetching` (nothing on the host changed yet) is left to `npm run trials`.
 */
const PLAN: Record<Disruption, readonly CutPoint[]> = {
  "power-cut": ["switching", "verifying", "committing"],
  kill: ["applying", "committing", "rolling_back"],
};

describe("systemd tier: power-cut and kill trials", tier, () => {
  const dir = makeTempDir("nixfleet-systemd-trials-");
  const cleanups: Array<() => Promise<void>> = [];
  let fleet: Fleet;
  const machines: Array<{ am: AgentMachine; plan: PlannedTrial[] }> = [];

  before(async () => {
    fleet = await Fleet.create({ dir, hosts: [] });
    const cuts = planTrials(PLAN["power-cut"].length, 0, PLAN["power-cut"]);
    const kills = planTrials(0, PLAN.kill.length, PLAN.kill);
    // Booted in parallel: each container has a cgroup of its own (test/fixtures/nspawn.ts).
    const started = await Promise.all(
      (
        [
          ["sd-trial-cut", cuts],
          ["sd-trial-kill", kills],
        ] as const
      ).map(async ([name, plan]) => ({
        am: await AgentMachine.start(
          fleet,
          { after: (fn) => cleanups.push(fn) },
          {
            name,
            tags: [name],
            stateDir: join(dir, name),
            systems: trialSystems(plan),
            settings: { verifyTimeout: 6 },
          },
        ),
        plan,
      })),
    );
    machines.push(...started);
  });

  after(async () => {
    for (const fn of cleanups.reverse()) await fn();
    await fleet?.close();
    removeTempDir(dir);
  });

  it("every trial is truthful: previous or desired generation, boot and profile agree, the control plane agrees, nothing open, the agent runs, no second activation of a rolled-back generation", async () => {
    const results = (
      await Promise.all(
        machines.map(({ am, plan }) =>
          runTrials(am, plan, (line) => process.stderr.write(`${am.name}: ${line}\n`)),
        ),
      )
    ).flat();
    const untruthful = results.filter((r) => r.violations.length > 0);
    const diagnostics = untruthful.length
      ? (await Promise.all(machines.map(({ am }) => am.diagnostics().catch((e: Error) => e.message)))).join(
          "\n",
        )
      : "";
    assert.equal(
      untruthful.length,
      0,
      `${trialTable(results)}\n${untruthful.map((r) => `${r.disruption} at ${r.point}: ${r.violations.join("; ")}`).join("\n")}\n${diagnostics}`,
    );
  });
});
