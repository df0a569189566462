/**
 * Crash recovery: what to do on start with a deployment the journal shows unfinished. Pure —
 * the caller observes the host (current-system, the switch's status) and carries out the action.
 *
 * The rules (docs/agent.md has the table):
 * - fetching: nothing on the host changed → abandon; the next cycle starts over.
 * - applying (intent written, no switch started): current == previous → abandon (restore the
 *   profile if it was already set); current == desired → verify; anything else → roll back.
 * - switching: the switch still runs → wait for it; it ended with an exit status → continue
 *   exactly as if the agent had watched it end; no status and not running (killed, machine
 *   rebooted): current == desired → verify, otherwise roll back. A switch that vanished is never
 *   simply retried: a generation that kills its host mid-switch would loop forever (§4 #13).
 * - confirm order, switching or verifying, the boot id changed and the host runs the previous
 *   generation: the reboot rolled back (the boot default never moved) → ROLLED_BACK_BY_REBOOT.
 * - verifying, committing: current == desired → verify again (full verifyTimeout; a commit
 *   follows); otherwise roll back (a commit that started restores the profile and boot default).
 * - rolling_back: the rollback switch still runs → wait; it ended 0/4 with current == previous
 *   → rolled back; otherwise try the rollback again while attempts remain, then ROLLBACK_FAILED.
 */
import type { ActivationStatus } from "./activation.js";
import type { Phase } from "./journal/journal.js";

export type SwitchObservation = ActivationStatus | { state: "not-started" };

export interface RecoveryInput {
  phase: Exclude<Phase, "done">;
  desired: string;
  previous: string | null;
  current: string | null;
  forward: SwitchObservation;
  rollback: SwitchObservation;
  rollbackAttempts: number;
  maxRollbackAttempts: number;
  /** How the deployment activates ("switch" for deployments of older agents). */
  order: "confirm" | "switch";
  /** The commit (profile, boot default) had started. */
  bootDefaultMoved: boolean;
  /** The kernel's boot id differs from the one journaled with the intent. */
  rebooted: boolean;
}

export type RecoveryAction =
  /** Nothing on the host changed: close the deployment as INTERRUPTED; the next cycle retries. */
  | { kind: "abandon"; restoreProfile: boolean; reason: string }
  | { kind: "wait-switch" }
  /** The switch ended while no agent watched: handle its exit code as the live path would. */
  | { kind: "after-switch"; exitCode: number }
  | { kind: "verify" }
  | { kind: "rollback"; reason: string }
  | { kind: "wait-rollback" }
  | { kind: "rolled-back" }
  | { kind: "rollback-failed"; reason: string }
  /** Confirm window: the reboot booted the previous generation; report it, nothing to switch. */
  | { kind: "rolled-back-by-reboot" };

/** Exit codes of switch-to-configuration that mean "the system was switched". */
export function switchedExitCode(code: number): boolean {
  return code === 0 || code === 4;
}

function where(current: string | null): string {
  return current === null ? "current-system is missing" : `current-system is ${current}`;
}

export function decideRecovery(input: RecoveryInput): RecoveryAction {
  const { phase, desired, previous, current } = input;
  // The confirm window: the new generation was (being) activated with `test`, the boot default
  // was still the previous one, and the host rebooted into it. That is a rollback already done.
  if (
    input.order === "confirm" &&
    input.rebooted &&
    !input.bootDefaultMoved &&
    (phase === "switching" || phase === "verifying") &&
    previous !== null &&
    current === previous
  )
    return { kind: "rolled-back-by-reboot" };
  switch (phase) {
    case "fetching":
      return {
        kind: "abandon",
        restoreProfile: false,
        reason: "the agent stopped while fetching; nothing changed",
      };

    case "applying":
      if (previous === null || current === previous) {
        return {
          kind: "abandon",
          restoreProfile: true,
          reason: "the agent stopped before the switch started",
        };
      }
      if (current === desired) return { kind: "verify" };
      return {
        kind: "rollback",
        reason: `found an unexpected generation after a restart before the switch (${where(current)}, expected ${previous})`,
      };

    case "switching": {
      const fwd = input.forward;
      if (fwd.state === "running") return { kind: "wait-switch" };
      if (fwd.state === "exited") return { kind: "after-switch", exitCode: fwd.code };
      if (current === desired) return { kind: "verify" };
      if (current === previous) {
        return {
          kind: "rollback",
          reason:
            "the switch was interrupted before it finished (no exit status recorded: killed, or the machine rebooted) and the host is still on the previous generation",
        };
      }
      return {
        kind: "rollback",
        reason: `the switch was interrupted and the host is on neither generation (${where(current)})`,
      };
    }

    case "verifying":
    case "committing":
      // Committing: verified; verifying again leads to the commit again (it is idempotent).
      if (current === desired) return { kind: "verify" };
      return {
        kind: "rollback",
        reason: `the agent restarted while ${input.phase} and the host is no longer on the new generation (${where(current)})`,
      };

    case "rolling_back": {
      const rb = input.rollback;
      if (rb.state === "running") return { kind: "wait-rollback" };
      if (rb.state === "exited" && switchedExitCode(rb.code) && current === previous)
        return { kind: "rolled-back" };
      const why =
        rb.state === "exited"
          ? `the rollback switch exited with code ${rb.code} and ${where(current)}`
          : rb.state === "vanished"
            ? `the rollback switch was interrupted (${where(current)})`
            : `the rollback had not started its switch (${where(current)})`;
      if (input.rollbackAttempts < input.maxRollbackAttempts) return { kind: "rollback", reason: why };
      return { kind: "rollback-failed", reason: why };
    }
  }
}
