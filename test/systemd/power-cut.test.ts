/**
 * A power cut in the middle of a deployment, on a machine that boots like NixOS: the confirm
 * window. The agent activates a new generation with `switch-to-configuration test` and makes it
 * the boot default (profile + `boot`) only after it proved healthy, so a power cut during
 * verification boots the previous generation; the agent, started at boot, sees the interrupted
 * deployment on a new boot id and reports it ROLLED_BACK_BY_REBOOT, and the rollout fails.
 * With the plain `switch` order (activationOrder = "switch") the unproven generation would boot
 * instead, and this test fails.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Outcome } from "../../src/gen/nixfleet/v1/types_pb.js";
import { AGENT_UNIT, AgentMachine } from "../fixtures/agent-machine.js";
import { Fleet, waitFor } from "../fixtures/fleet.js";
import { makeTempDir, removeTempDir } from "../fixtures/tmp.js";
import { tier } from "./tier.js";

describe("systemd tier: power cut during verification", tier, () => {
  const dir = makeTempDir("nixfleet-systemd-cut-");
  const cleanups: Array<() => Promise<void>> = [];
  let fleet: Fleet;
  let am: AgentMachine;

  before(async () => {
    fleet = await Fleet.create({ dir, hosts: [] });
    am = await AgentMachine.start(
      fleet,
      { after: (fn) => cleanups.push(fn) },
      {
        name: "sd-cut",
        tags: ["cut"],
        stateDir: join(dir, "sd-cut"),
        // Never healthy: verification keeps failing until verifyTimeout, then rolls back.
        systems: [{ label: "unproven", healthy: false }],
        settings: { verifyTimeout: 15 },
      },
    );
  });

  after(async () => {
    for (const fn of cleanups.reverse()) await fn();
    await fleet?.close();
    removeTempDir(dir);
  });

  it("boots the previous generation (the unproven one was never made the boot default); the agent reports ROLLED_BACK_BY_REBOOT", () =>
    am.explain(async () => {
      const m = am.machine;
      const base = am.path("base");
      const unproven = am.path("unproven");
      const deploying = am.deploy("unproven", "120s");
      await m.waitForLog(AGENT_UNIT, (l) => l["event"] === "verify_round", "a verification round", 90_000);
      assert.equal(await m.currentSystem(), unproven, "verifying the activated generation");

      await m.container.powerCut();
      // What the boot loader will run, read while the machine is off.
      assert.equal(m.bootDefault(), base, "the unproven generation is not the boot default");
      assert.equal(m.profile(), base, "nor the system profile's current generation");
      await m.container.boot();
      const booted = readFileSync(join(m.dirs.test, "boot.log"), "utf8").trim().split("\n").at(-1)!;
      assert.match(booted, new RegExp(`booted ${base}$`));

      // The agent (started at boot by multi-user.target) must leave the machine on the previous
      // generation, running and booting, and say so — switching nothing.
      const r = await deploying;
      assert.notEqual(r.code, 0, "the rollout fails: the generation never proved healthy");
      await waitFor(
        "the machine back on the previous generation, running and booting",
        async () => (await m.currentSystem()) === base && m.bootDefault() === base && m.profile() === base,
        90_000,
        250,
      );
      assert.equal(await m.isActive(AGENT_UNIT), "active");
      // The control plane agrees with the host: back on base, the generation refused from now on.
      const status = await waitFor(
        "the control plane to record the rollback",
        async () => {
          const s = await am.machineStatus();
          const refused =
            s?.lastOutcome === Outcome.ROLLED_BACK_BY_REBOOT || s?.lastOutcome === Outcome.QUARANTINED;
          return refused && s?.currentGeneration === base ? s : undefined;
        },
        60_000,
        250,
      );
      assert.equal(status.currentGeneration, await m.currentSystem());
      // The agent's journal: the one deployment is closed, as rolled back by the reboot.
      const rows = am.journal();
      assert.deepEqual(
        rows.map((row) => [row.desired, row.outcome]),
        [[unproven, "ROLLED_BACK_BY_REBOOT"]],
      );
    }));
});
