/**
 * The confirm window with a real agent process, real closures (whose switch-to-configuration
 * implements `test`, `boot` and `switch` the NixOS way) and a simulated reboot: the agent is
 * SIGKILLed right after it journaled the verification phase, and the "host reboots" — a new
 * kernel boot id (the agent reads it from `paths.bootId`) and current-system pointed at the boot
 * default, as the boot loader would. With the confirm order the host comes back on the previous
 * generation and the restarted agent reports ROLLED_BACK_BY_REBOOT; with the plain `switch`
 * order the boot default already was the new generation, so that expectation fails (asserted).
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { KILL_AFTER_ENV } from "../../src/agent/test-hooks.js";
import { Outcome } from "../../src/gen/nixfleet/v1/types_pb.js";
import { readBootDefault } from "../fixtures/nix.js";
import { setupScenario } from "./harness/scenario.js";

describe("agent process: a reboot during verification", () => {
  for (const order of ["confirm", "switch"] as const) {
    it(`${order} order: ${order === "confirm" ? "boots the previous generation, reported as ROLLED_BACK_BY_REBOOT and quarantined" : "boots the unproven generation (no confirm window)"}`, async (t) => {
      const s = await setupScenario({ systems: [{ label: "new" }], cached: ["new"] });
      t.after(() => s.cleanup());
      const bootIdFile = join(s.host.paths.root, "boot_id");
      writeFileSync(bootIdFile, `${randomUUID()}\n`);
      s.writeConfig({ activationOrder: order, paths: { bootId: bootIdFile } });
      const desired = s.systems["new"]!.path;

      const dying = s.startAgent({ env: { [KILL_AFTER_ENV]: "verify-persisted" } });
      s.cp.setDesired(s.machineId, { hash: desired, cacheUrl: s.cacheUrl });
      assert.equal((await dying.exited).signal, "SIGKILL", "killed right after journaling verifying");
      assert.equal(s.host.current(), desired, "the new generation was activated");
      const applying = s.cp.reports.find((r) => r.message.outcome === Outcome.APPLYING)!.message;

      // The reboot: a new boot id, and the host runs what the boot loader boots.
      const bootDefault = readBootDefault(s.host.paths.root) ?? s.gen1.path;
      assert.equal(
        bootDefault,
        order === "confirm" ? s.gen1.path : desired,
        "during verification the boot default is the previous generation only with the confirm order",
      );
      writeFileSync(bootIdFile, `${randomUUID()}\n`);
      s.host.setCurrent(bootDefault);

      const agent = s.startAgent();
      const outcome = await s.cp.waitForReport(
        (r) =>
          r.deploymentId === applying.deploymentId &&
          r.outcome !== Outcome.APPLYING &&
          r.outcome !== Outcome.UNSPECIFIED,
      );
      const byReboot =
        outcome.outcome === Outcome.ROLLED_BACK_BY_REBOOT &&
        outcome.currentGeneration === s.gen1.path &&
        s.host.current() === s.gen1.path;
      if (order === "confirm") {
        assert.ok(
          byReboot,
          `ROLLED_BACK_BY_REBOOT on the previous generation; got ${Outcome[outcome.outcome]}`,
        );
        assert.match(outcome.message, /rebooted .* confirm window/);
        await s.cp.waitForReport((r) => r.outcome === Outcome.QUARANTINED);
        assert.equal(s.host.profile(), s.gen1.path, "the profile never moved");
        const starts = s.host.switchLog().filter((e) => e.event === "start");
        assert.deepEqual(
          starts.map((e) => `${e.label} ${e.detail.split(" ")[0]}`),
          ["new test"],
          "the new generation was activated once with test; nothing else was switched",
        );
      } else {
        assert.equal(byReboot, false, "the switch order has no confirm window");
        assert.equal(
          outcome.outcome,
          Outcome.DEPLOYED,
          "the unproven generation booted and was verified again",
        );
      }
      assert.deepEqual(await agent.stop(), { code: 0, signal: null });
    });
  }
});
