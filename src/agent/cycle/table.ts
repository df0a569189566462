/**
 * The transition table: every (state, event) → (next state, action) the cycle may take, with
 * when it applies. machine.ts refuses a transition that is not here, a unit test exercises every
 * row, and docs/agent.md carries the table rendered from these rows (a test compares them).
 */
import type { EventName, StateName } from "./types.js";

export interface Row {
  from: StateName;
  on: EventName;
  to: StateName;
  /** The action the step ends with ("—": the cycle ends). */
  action: string;
  when: string;
}

const r = (from: StateName, on: EventName, to: StateName, action: string, when: string): Row => ({
  from,
  on,
  to,
  action,
  when,
});

export const TABLE: readonly Row[] = [
  // check
  r(
    "check",
    "checked",
    "done",
    "—",
    "idle, refused, up to date, drifted, quarantined (a steady report if it says something new)",
  ),
  r(
    "check",
    "checked",
    "health-report",
    "health-report",
    "up to date, newly assigned: report health at once",
  ),
  r("check", "checked", "create", "persist", "deploy: journal a new deployment (phase fetching)"),
  r("health-report", "ok", "done", "—", "reported"),
  // fetch and preflight
  r("create", "persisted", "fetch", "fetch", "fetch the closure"),
  r("fetch", "fetched", "inspect", "inspect", "read switch scripts, current-system, the lock"),
  r("fetch", "fetch-failed", "finish", "persist", "FETCH_FAILED"),
  r("fetch", "fetch-stopped", "finish", "persist", "INTERRUPTED, then park"),
  r(
    "inspect",
    "inspected",
    "finish",
    "persist",
    "DRY_RUN; APPLY_FAILED (+ quarantine if the closure cannot switch); SWITCH_LOCKED",
  ),
  r(
    "inspect",
    "inspected",
    "begin-apply",
    "persist",
    "intent: phase applying, previous, profile generation, APPLYING report",
  ),
  // apply and switch
  r("begin-apply", "persisted", "gc-roots", "gc-roots", "root previous and desired"),
  r("gc-roots", "ok", "set-profile", "set-profile", "switch order: point the profile at desired"),
  r(
    "gc-roots",
    "ok",
    "plan-switch",
    "plan-switch",
    "confirm order: name the switch (`test`); the profile and boot default stay",
  ),
  r("gc-roots", "failed", "finish", "persist", "APPLY_FAILED"),
  r("set-profile", "ok", "plan-switch", "plan-switch", "name the switch (`switch`)"),
  r("set-profile", "failed", "unapply", "restore-profile", "put the profile back"),
  r("unapply", "ok", "finish", "persist", "APPLY_FAILED"),
  r("unapply", "failed", "finish", "persist", "APPLY_FAILED (profile restore failure logged)"),
  r("plan-switch", "planned", "switch-planned", "persist", "phase switching with the planned handle"),
  r(
    "switch-planned",
    "persisted",
    "start-switch",
    "start-switch",
    "start switch-to-configuration `test` (confirm) or `switch`",
  ),
  r("start-switch", "started", "switch-recorded", "persist", "record the handle (pid)"),
  r("start-switch", "start-failed", "unapply", "restore-profile", "nothing runs: put the profile back"),
  r("start-switch", "start-failed", "switch", "wait-switch", "it runs anyway: follow it"),
  r("switch-recorded", "persisted", "switch", "wait-switch", "wait up to activationTimeout"),
  r("switch", "switch-ended", "verify-persisted", "persist", "exit 0 or 4: phase verifying"),
  r(
    "switch",
    "switch-ended",
    "timeout-persisted",
    "persist",
    "timeout: rolling_back journaled before the kill",
  ),
  r("switch", "switch-ended", "rb-persisted", "persist", "other exit, vanished: roll back"),
  r("switch", "switch-ended", "rb-fail-observe", "observe", "no rollback target / attempts left"),
  r("timeout-persisted", "persisted", "kill-switch", "stop-switch", "kill the switch"),
  r("kill-switch", "switch-stopped", "rb-persisted", "persist", "roll back"),
  r("kill-switch", "switch-stopped", "rb-fail-observe", "observe", "no rollback target / attempts left"),
  // verify and commit
  r("verify-persisted", "persisted", "verify-observe", "observe", "read current-system"),
  r(
    "verify-observe",
    "observed",
    "verify",
    "verify",
    "current == desired: run the checks until verifyTimeout",
  ),
  r("verify-observe", "observed", "rb-persisted", "persist", "still on previous: roll back"),
  r("verify-observe", "observed", "rb-fail-observe", "observe", "still on previous, no rollback left"),
  r("verify-observe", "observed", "finish", "persist", "a third generation: FOREIGN_GENERATION + quarantine"),
  r(
    "verify",
    "verified",
    "finish",
    "persist",
    "switch order, all pass: DEPLOYED + post-apply health; or moved: FOREIGN_GENERATION",
  ),
  r(
    "verify",
    "verified",
    "commit-persisted",
    "persist",
    "confirm order, all pass: phase committing (from here a rollback uses `switch`)",
  ),
  r("verify", "verified", "rb-persisted", "persist", "checks fail: failing health reported, roll back"),
  r("verify", "verified", "rb-fail-observe", "observe", "checks fail, no rollback left"),
  // commit (confirm order): only a proven generation becomes the boot default
  r("commit-persisted", "persisted", "commit-profile", "set-profile", "point the profile at desired"),
  r("commit-profile", "ok", "commit-boot", "boot-default", "desired/bin/switch-to-configuration `boot`"),
  r("commit-profile", "failed", "rb-persisted", "persist", "roll back"),
  r("commit-profile", "failed", "rb-fail-observe", "observe", "no rollback left"),
  r("commit-boot", "ok", "finish", "persist", "DEPLOYED + post-apply health"),
  r("commit-boot", "failed", "rb-persisted", "persist", "roll back"),
  r("commit-boot", "failed", "rb-fail-observe", "observe", "no rollback left"),
  // recovery (decideRecovery)
  r(
    "recover",
    "observed",
    "finish",
    "persist",
    "abandon: INTERRUPTED (+ an outcome for an APPLYING sent); rebooted in the confirm window: ROLLED_BACK_BY_REBOOT + quarantine",
  ),
  r("recover", "observed", "abandon", "restore-profile", "abandon, the profile already moved: put it back"),
  r("recover", "observed", "switch", "wait-switch", "wait-switch / after-switch"),
  r("recover", "observed", "verify-persisted", "persist", "verify"),
  r("recover", "observed", "rb-persisted", "persist", "rollback"),
  r("recover", "observed", "rb-switch", "wait-switch", "wait-rollback"),
  r("recover", "observed", "rb-restore", "restore-profile", "rolled-back"),
  r("recover", "observed", "rb-fail-observe", "observe", "rollback-failed"),
  r("abandon", "ok", "finish", "persist", "INTERRUPTED"),
  r("abandon", "failed", "finish", "persist", "INTERRUPTED (profile restore failure logged)"),
  // rollback
  r(
    "rb-persisted",
    "persisted",
    "rb-forward",
    "observe",
    "attempt journaled; is the forward switch running?",
  ),
  r("rb-persisted", "persisted", "rb-profile", "restore-profile", "attempt journaled (no forward switch)"),
  r("rb-forward", "observed", "rb-stop-forward", "stop-switch", "it runs: stop it first"),
  r("rb-forward", "observed", "rb-profile", "restore-profile", "it does not run"),
  r("rb-stop-forward", "switch-stopped", "rb-profile", "restore-profile", "profile back to previous"),
  r("rb-profile", "ok", "rb-lock", "wait-lock", "wait for someone else's switch lock"),
  r("rb-profile", "failed", "rb-lock", "wait-lock", "(the profile problem fails the attempt later)"),
  r("rb-lock", "lock", "rb-plan", "plan-switch", "free: name the rollback switch"),
  r("rb-lock", "lock", "rb-persisted", "persist", "held too long: next attempt"),
  r("rb-lock", "lock", "rb-fail-observe", "observe", "held too long, no attempts left"),
  r("rb-plan", "planned", "rb-planned", "persist", "record the planned rollback handle"),
  r(
    "rb-planned",
    "persisted",
    "rb-start",
    "start-switch",
    "previous/bin/switch-to-configuration `test` (confirm window) or `switch`",
  ),
  r("rb-start", "started", "rb-recorded", "persist", "record the handle"),
  r("rb-start", "start-failed", "rb-persisted", "persist", "next attempt"),
  r("rb-start", "start-failed", "rb-fail-observe", "observe", "no attempts left"),
  r("rb-recorded", "persisted", "rb-switch", "wait-switch", "wait up to activationTimeout"),
  r("rb-switch", "switch-ended", "rb-judge", "observe", "ended: read current-system"),
  r("rb-switch", "switch-ended", "rb-kill", "stop-switch", "timeout: kill it"),
  r("rb-kill", "switch-stopped", "rb-persisted", "persist", "next attempt"),
  r("rb-kill", "switch-stopped", "rb-fail-observe", "observe", "no attempts left"),
  r("rb-judge", "observed", "rb-restore", "restore-profile", "exit 0/4 and current == previous"),
  r("rb-judge", "observed", "rb-persisted", "persist", "otherwise: next attempt"),
  r("rb-judge", "observed", "rb-fail-observe", "observe", "otherwise, no attempts left"),
  r("rb-restore", "ok", "finish", "persist", "ROLLED_BACK + quarantine + report, one transaction"),
  r("rb-restore", "failed", "finish", "persist", "ROLLED_BACK (profile restore failure logged)"),
  r(
    "rb-fail-observe",
    "observed",
    "finish",
    "persist",
    "ROLLBACK_FAILED + quarantine + report, one transaction",
  ),
  // the end
  r("finish", "persisted", "done", "—", "committed: log, metrics"),
  r("finish", "persisted", "done", "park", "committed; the agent is stopping"),
];

export function rowKey(from: string, on: string, to: string, action: string): string {
  return `${from} --${on}--> ${to} [${action}]`;
}

export const TRANSITION_KEYS: ReadonlySet<string> = new Set(
  TABLE.map((x) => rowKey(x.from, x.on, x.to, x.action)),
);

/** The table as Markdown, for docs/agent.md. */
export function renderTable(): string {
  const lines = ["| state | event | next state | action | when |", "| --- | --- | --- | --- | --- |"];
  for (const x of TABLE) lines.push(`| \`${x.from}\` | ${x.on} | \`${x.to}\` | ${x.action} | ${x.when} |`);
  return lines.join("\n");
}
