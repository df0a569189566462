/**
 * The words of the deploy cycle: what each outcome and rollback reason says to an operator.
 * Pure; kept apart so the transition table reads as structure, not prose.
 */
import type { Deployment } from "../journal/journal.js";
import { formatSeconds, trimOutput } from "../text.js";

export function where(current: string | null): string {
  return current ?? "nothing";
}

export const msg = {
  stoppedFetching: "the agent stopped while fetching; nothing changed",
  fetchFailed: (message: string) => `${message}; the running system was not touched`,
  dryRun: (path: string) => `fetched ${path}; dryRun is set, so it was not applied`,
  dryRunReport: (path: string, from: string) => `fetched ${path} (from ${from}); dryRun: not applied`,
  unswitchable: (path: string, problem: string) =>
    `${path} cannot be switched to: ${problem}; quarantined until it is assigned again`,
  noPrevious: (currentSystem: string, previous: string | null) =>
    `${currentSystem} ${previous === null ? "does not exist" : `points at ${previous}, not a store path`}: ` +
    "there is no generation to roll back to, so the agent refuses to switch",
  previousUnswitchable: (previous: string, problem: string) =>
    `the running generation ${previous} cannot be switched back to (${problem}): no rollback target, so the agent refuses to switch`,
  locked: (lock: string) =>
    `${lock} (another switch, e.g. a manual nixos-rebuild, is running); not stacking a second switch, retrying after retryInterval`,
  applying: (previous: string, desired: string) => `switching from ${previous} to ${desired}`,
  nothingSwitched: (message: string) => `${message}; nothing was switched`,
  startFailed: (message: string) =>
    `could not start switch-to-configuration: ${message}; nothing was switched`,
  switchTimeout: (activationTimeout: number) =>
    `switch-to-configuration did not finish within activationTimeout (${formatSeconds(activationTimeout)}) and was killed`,
  withTail: (reason: string, tail: string) => {
    const t = trimOutput(tail, 600);
    return `${reason}${t ? `; last output: ${t}` : ""}`;
  },
  vanished: "switch-to-configuration disappeared without recording an exit status",
  badExit: (code: number, tail: string, reason?: string) => {
    const t = trimOutput(tail, 800);
    return `switch-to-configuration exited with code ${code}${reason ? ` (${reason})` : ""}${t ? `: ${t}` : ""}`;
  },
  stillPrevious: (exitCode: number | undefined) =>
    `current-system still points at the previous generation after switch-to-configuration ${exitCode === undefined ? "ended" : `exited ${exitCode}`}`,
  healthFailed: (verifyTimeout: number, exitCode: number | undefined, failures: string) =>
    `health checks failed for ${formatSeconds(verifyTimeout)} after the switch${exitCode === 4 ? " (switch-to-configuration exited 4)" : ""}: ${failures}`,
  deployed: (dep: Deployment, checks: number, exitCode: number | undefined) =>
    `switched from ${dep.previous} to ${dep.desired}; ${checks} health check(s) passed${
      exitCode === 4
        ? " (switch-to-configuration exited 4: some units failed, but every health check passed)"
        : ""
    }`,
  foreign: (dep: Deployment, current: string | null) =>
    `current-system points at ${where(current)}, neither the new generation ${dep.desired} nor the previous ${dep.previous}: ` +
    "another switch changed the host (e.g. a manual nixos-rebuild). The agent does not fight it: it leaves the host as is " +
    "and will not apply this assignment again; assign the generation again (a new revision) to retry",
  foreignReason: (current: string | null) => `another switch took the host to ${where(current)}`,
  abandoned: (reason: string) => `${reason}; nothing on the host changed and the next cycle starts over`,
  noRollbackTarget: "the journal has no previous generation to roll back to",
  lockTooLong: (lock: string) => `${lock} for longer than activationTimeout`,
  rollbackStartFailed: (previous: string, message: string) =>
    `could not start ${previous}/bin/switch-to-configuration: ${message}`,
  rollbackTimeout:
    "the previous generation's switch-to-configuration did not finish within activationTimeout and was killed",
  rollbackVanished: "the previous generation's switch-to-configuration disappeared without an exit status",
  rollbackBadExit: (code: number, tail: string, reason?: string) => {
    const t = trimOutput(tail, 600);
    return `the previous generation's switch-to-configuration exited with code ${code}${reason ? ` (${reason})` : ""}${t ? `: ${t}` : ""}`;
  },
  rollbackWrongCurrent: (current: string | null, previous: string | null) =>
    `after the rollback switch current-system points at ${where(current)}, not ${previous}`,
  rollbackProfile: (previous: string | null, problem: string) =>
    `the running system is back on ${previous} but the profile could not be restored: ${problem}`,
  retryAfterRestart: (first: string | null, why: string) =>
    first ? `${first} (retrying after a restart: ${why})` : why,
  rolledBackByReboot: (dep: Deployment, phase: string) =>
    `the host rebooted (power cut, panic or reboot) while ${dep.desired} was in its confirm window (${phase}, activated with switch-to-configuration test, ` +
    `not yet the boot default), so it booted the previous generation ${dep.previous}, which it runs now; ${dep.desired} is quarantined until it is assigned again`,
  rebootReason: "the host rebooted during the confirm window and booted the previous generation",
  commitFailed: (message: string) =>
    `the new generation passed its health checks but could not be made the boot default (${message}); a reboot would boot the previous one`,
  rolledBack: (dep: Deployment, reason: string) =>
    `${reason}; rolled back to ${dep.previous} with its own switch-to-configuration; ${dep.desired} is quarantined until it is assigned again`,
  rollbackFailed: (
    dep: Deployment,
    reason: string,
    problem: string,
    current: string | null,
    profile: string | null,
  ) =>
    `${reason}; ROLLBACK FAILED: ${problem}. current-system points at ${where(current)}, profile at ${where(profile)}. ` +
    `The host needs an operator: switch it to a working generation (e.g. ${dep.previous}/bin/switch-to-configuration switch) ` +
    "or assign a fixed generation",
};
