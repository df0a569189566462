/**
 * Issue 13, item 6, in the tier: seven power-cut and kill trials that cover every phase of a
 * deployment (test/fixtures/power-cut-trials.ts says what each checks; `npm run trials` runs a
 * hundred). Three machines run side by side, each reused across its trials, so the file takes
 * about two to three trials' time: a trial mostly waits (a boot, RestartSec, verifyTimeout).
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
  runTrials,
  trialSystems,
  trialTable,
} from "../fixtures/power-cut-trials.js";
import { makeTempDir, removeTempDir } from "../fixtures/tmp.js";
import { tier } from "./tier.js";

/**
 * Each machine's trials, in order. Every phase is covered: the confirm window (power cuts while
 * switching and verifying: ROLLED_BACK_BY_REBOOT), the commit (a power cut and a kill), a kill
 * before the switch (applying) and during a rollback, and a power cut while fetching. The two
 * that need an unhealthy generation (verifying, rolling_back) wait out verifyTimeout and sit on
 * different machines; the third machine takes three short ones.
 */
const MACHINES: Record<string, ReadonlyArray<[Disruption, CutPoint]>> = {
  "sd-trial-window": [
    ["power-cut", "switching"],
    ["power-cut", "verifying"],
  ],
  "sd-trial-commit": [
    ["power-cut", "committing"],
    ["kill", "committing"],
    ["power-cut", "fetching"],
  ],
  "sd-trial-kill": [
    ["kill", "applying"],
    ["kill", "rolling_back"],
  ],
};

describe("systemd tier: power-cut and kill trials", tier, () => {
  const dir = makeTempDir("nixfleet-systemd-trials-");
  const cleanups: Array<() => Promise<void>> = [];
  let fleet: Fleet;
  const machines: Array<{ am: AgentMachine; plan: PlannedTrial[] }> = [];

  before(async () => {
    fleet = await Fleet.create({ dir, hosts: [] });
    // Booted in parallel: each container has a cgroup of its own (test/fixtures/nspawn.ts).
    const started = await Promise.all(
      Object.entries(MACHINES).map(async ([name, trials]) => {
        const plan = trials.map(([disruption, point], i) => ({ disruption, point, label: `t${i + 1}` }));
        const am = await AgentMachine.start(
          fleet,
          { after: (fn) => cleanups.push(fn) },
          {
            name,
            tags: [name],
            stateDir: join(dir, name),
            systems: trialSystems(plan),
            settings: { verifyTimeout: 6 },
          },
        );
        return { am, plan };
      }),
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
