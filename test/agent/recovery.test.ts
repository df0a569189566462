import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { decideRecovery, type RecoveryInput, switchedExitCode } from "../../src/agent/recovery.js";

const PREV = "/nix/store/0c8vxs2ja1k5f5v0r4zm0h4y3hs7a0fj-nixos-system-web-01-a";
const NEW = "/nix/store/1c8vxs2ja1k5f5v0r4zm0h4y3hs7a0fj-nixos-system-web-01-b";
const OTHER = "/nix/store/2c8vxs2ja1k5f5v0r4zm0h4y3hs7a0fj-nixos-system-web-01-c";

function input(over: Partial<RecoveryInput>): RecoveryInput {
  return {
    phase: "switching",
    desired: NEW,
    previous: PREV,
    current: PREV,
    forward: { state: "not-started" },
    rollback: { state: "not-started" },
    rollbackAttempts: 0,
    maxRollbackAttempts: 2,
    order: "switch",
    bootDefaultMoved: false,
    rebooted: false,
    ...over,
  };
}

describe("crash recovery decision table", () => {
  const table: Array<[string, Partial<RecoveryInput>, string, Record<string, unknown>?]> = [
    // fetching: nothing changed
    [
      "fetching → abandon, no profile change",
      { phase: "fetching", previous: null },
      "abandon",
      { restoreProfile: false },
    ],
    // applying: intent written, no switch started
    [
      "applying, current == previous → abandon and restore the profile",
      { phase: "applying" },
      "abandon",
      { restoreProfile: true },
    ],
    [
      "applying, no previous recorded → abandon",
      { phase: "applying", previous: null, current: OTHER },
      "abandon",
    ],
    ["applying, current == desired → verify", { phase: "applying", current: NEW }, "verify"],
    ["applying, a third path → roll back", { phase: "applying", current: OTHER }, "rollback"],
    ["applying, current-system missing → roll back", { phase: "applying", current: null }, "rollback"],
    // switching
    ["switching, switch still running → wait for it", { forward: { state: "running" } }, "wait-switch"],
    [
      "switching, switch exited 0 while the agent was down → continue with exit 0",
      { forward: { state: "exited", code: 0 }, current: NEW },
      "after-switch",
      { exitCode: 0 },
    ],
    [
      "switching, switch exited 1 → continue with exit 1 (the live path rolls back)",
      { forward: { state: "exited", code: 1 } },
      "after-switch",
      { exitCode: 1 },
    ],
    [
      "switching, exited 4 → continue with exit 4",
      { forward: { state: "exited", code: 4 }, current: NEW },
      "after-switch",
      { exitCode: 4 },
    ],
    [
      "switching, vanished, current == desired (reboot into new) → verify",
      { forward: { state: "vanished" }, current: NEW },
      "verify",
    ],
    [
      "switching, vanished, current == previous → roll back, never retry",
      { forward: { state: "vanished" } },
      "rollback",
    ],
    [
      "switching, vanished, third path → roll back",
      { forward: { state: "vanished" }, current: OTHER },
      "rollback",
    ],
    [
      "switching, never started, current == previous → roll back",
      { forward: { state: "not-started" } },
      "rollback",
    ],
    // verifying
    ["verifying, current == desired → verify again", { phase: "verifying", current: NEW }, "verify"],
    [
      "verifying, current == previous (undone) → roll back",
      { phase: "verifying", current: PREV },
      "rollback",
    ],
    ["verifying, third path → roll back", { phase: "verifying", current: OTHER }, "rollback"],
    // the confirm order: what a reboot at each phase leaves (the boot default is previous until
    // the commit) — a reboot is a new boot id; the host boots its boot default
    [
      "confirm, applying, rebooted (nothing activated yet) → abandon",
      { order: "confirm", rebooted: true, phase: "applying" },
      "abandon",
    ],
    [
      "confirm, switching, rebooted onto previous → rolled back by reboot",
      { order: "confirm", rebooted: true, phase: "switching", forward: { state: "vanished" } },
      "rolled-back-by-reboot",
    ],
    [
      "confirm, verifying, rebooted onto previous → rolled back by reboot",
      { order: "confirm", rebooted: true, phase: "verifying" },
      "rolled-back-by-reboot",
    ],
    [
      "switch order, verifying, rebooted onto previous → an ordinary rollback (not the reboot's doing)",
      { order: "switch", rebooted: true, phase: "verifying" },
      "rollback",
    ],
    [
      "confirm, verifying, restarted without a reboot, on previous → roll back (previous' test)",
      { order: "confirm", rebooted: false, phase: "verifying" },
      "rollback",
    ],
    [
      "confirm, committing, on desired (after a reboot the boot default was already moved) → verify, commit again",
      { order: "confirm", rebooted: true, bootDefaultMoved: true, phase: "committing", current: NEW },
      "verify",
    ],
    [
      "confirm, committing, rebooted onto previous (boot default not yet moved) → roll back with switch",
      { order: "confirm", rebooted: true, bootDefaultMoved: true, phase: "committing" },
      "rollback",
    ],
    [
      "confirm, rolling back with test, rebooted onto previous → roll back again (attempt journaled)",
      { order: "confirm", rebooted: true, phase: "rolling_back", rollback: { state: "vanished" } },
      "rollback",
    ],
    // rolling back
    [
      "rolling back, rollback switch running → wait",
      { phase: "rolling_back", rollback: { state: "running" }, rollbackAttempts: 1 },
      "wait-rollback",
    ],
    [
      "rolling back, rollback exited 0 and current == previous → rolled back",
      { phase: "rolling_back", rollback: { state: "exited", code: 0 }, rollbackAttempts: 1, current: PREV },
      "rolled-back",
    ],
    [
      "rolling back, rollback exited 4 and current == previous → rolled back",
      { phase: "rolling_back", rollback: { state: "exited", code: 4 }, rollbackAttempts: 1, current: PREV },
      "rolled-back",
    ],
    [
      "rolling back, rollback exited 0 but current is still the new one → try again",
      { phase: "rolling_back", rollback: { state: "exited", code: 0 }, rollbackAttempts: 1, current: NEW },
      "rollback",
    ],
    [
      "rolling back, rollback exited 1 → try again while attempts remain",
      { phase: "rolling_back", rollback: { state: "exited", code: 1 }, rollbackAttempts: 1, current: NEW },
      "rollback",
    ],
    [
      "rolling back, rollback vanished → try again",
      { phase: "rolling_back", rollback: { state: "vanished" }, rollbackAttempts: 1, current: NEW },
      "rollback",
    ],
    [
      "rolling back, died before starting the rollback switch → roll back",
      { phase: "rolling_back", rollback: { state: "not-started" }, rollbackAttempts: 1, current: NEW },
      "rollback",
    ],
    [
      "rolling back, attempts used up → ROLLBACK_FAILED",
      { phase: "rolling_back", rollback: { state: "exited", code: 1 }, rollbackAttempts: 2, current: NEW },
      "rollback-failed",
    ],
  ];
  for (const [name, over, kind, fields] of table) {
    it(name, () => {
      const action = decideRecovery(input(over));
      assert.equal(action.kind, kind);
      for (const [k, v] of Object.entries(fields ?? {}))
        assert.equal((action as Record<string, unknown>)[k], v, k);
      if ("reason" in action) assert.ok(action.reason.length > 10, "reasons are sentences");
    });
  }

  it("names the phase the agent restarted in (verifying or committing)", () => {
    for (const phase of ["verifying", "committing"] as const) {
      const action = decideRecovery(input({ phase }));
      assert.equal(action.kind, "rollback");
      assert.match((action as { reason: string }).reason, new RegExp(`restarted while ${phase}\\b`));
    }
  });

  it("treats exactly 0 and 4 as switched", () => {
    assert.deepEqual([0, 1, 2, 3, 4, 5, 100, 143].map(switchedExitCode), [
      true,
      false,
      false,
      false,
      true,
      false,
      false,
      false,
    ]);
  });
});
