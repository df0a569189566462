/**
 * A power cut in the middle of a deployment, on a machine that boots like NixOS.
 *
 * DOCUMENTS THE CURRENT ACTIVATION ORDER (issue 13): today the agent sets the system profile
 * and runs `switch-to-configuration switch` — which installs the boot loader entry first — before
 * it verifies the new generation. So a power cut during verification boots the new, unproven
 * generation, and the agent has to notice and roll it back after the reboot. When the confirm
 * window lands (activate with `test`, verify, only then set the profile and run `boot`), the
 * machine must boot the previous generation instead: flip BOOTS_AFTER_CUT_IN_VERIFY to
 * "previous" and the assertions below follow.
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

/** Which generation the boot loader runs after a power cut during verification. */
const BOOTS_AFTER_CUT_IN_VERIFY: "desired" | "previous" = "desired"; // the current order

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

  it(`boots the ${BOOTS_AFTER_CUT_IN_VERIFY} generation (current order: profile and boot entry are set before verifying); the agent then rolls back`, () =>
    am.explain(async () => {
      const m = am.machine;
      const base = am.path("base");
      const unproven = am.path("unproven");
      const deploying = am.deploy("unproven", "120s");
      await m.waitForLog(AGENT_UNIT, (l) => l["event"] === "verify_round", "a verification round", 90_000);
      assert.equal(await m.currentSystem(), unproven, "verifying the activated generation");

      await m.container.powerCut();
      // What the boot loader will run, read while the machine is off.
      const expected = BOOTS_AFTER_CUT_IN_VERIFY === "desired" ? unproven : base;
      assert.equal(m.bootDefault(), expected);
      await m.container.boot();
      const booted = readFileSync(join(m.dirs.test, "boot.log"), "utf8").trim().split("\n").at(-1)!;
      assert.match(booted, new RegExp(`booted ${expected}$`));

      // Whatever booted, the agent (started at boot by multi-user.target) must end on the
      // previous generation, running and booting, and say so.
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
          const s = (await fleet.status()).machines.find((x) => x.machineId === "sd-cut");
          const refused = s?.lastOutcome === Outcome.ROLLED_BACK || s?.lastOutcome === Outcome.QUARANTINED;
          return refused && s?.currentGeneration === base ? s : undefined;
        },
        60_000,
        250,
      );
      assert.equal(status.currentGeneration, await m.currentSystem());
      // The agent's journal: the one deployment is closed, as rolled back.
      const rows = am.journal();
      assert.deepEqual(
        rows.map((row) => [row.desired, row.outcome]),
        [[unproven, "ROLLED_BACK"]],
      );
    }));
});
