/**
 * Rolling back and recovering, as transitions. Pure.
 *
 * A rollback puts the host back on the exact previous generation with that generation's *own*
 * switch-to-configuration (the failed one's would re-activate the failed system; v0.2 bug
 * 572a10c), confirms current-system == previous, and ends ROLLED_BACK with the failed path
 * quarantined — outcome, quarantine and report in one transaction. Each attempt is journaled
 * first; after MAX attempts (live and across restarts) it ends ROLLBACK_FAILED.
 *
 * Recovery observes the host and asks decideRecovery (recovery.ts) what an unfinished
 * deployment needs; each answer enters the same states the live path uses.
 */
import type { SwitchVerb } from "../activation.js";
import { steadyReportKey } from "../decide.js";
import type { Deployment } from "../journal/journal.js";
import { decideRecovery, switchedExitCode } from "../recovery.js";
import { msg } from "./messages.js";
import { finish, go, observe, outcomeReport } from "./steps.js";
import type { Event, Observation, RollbackProgress, Settings, State, Step, SwitchEnd } from "./types.js";

const restore = (dep: Deployment) =>
  ({ do: "restore-profile", previous: dep.previous, generation: dep.previousProfileGeneration }) as const;

/**
 * In the confirm window the profile and the boot default never moved: the previous generation
 * is re-activated with its own `test` (its `switch` would rewrite the boot loader for nothing).
 * Once the commit started (or in the switch order) its `switch` makes it the boot default again.
 */
export function rollbackVerb(dep: Deployment): SwitchVerb {
  return dep.activationOrder === "confirm" && !dep.bootDefaultMoved ? "test" : "switch";
}

/** The next rollback attempt, or ROLLBACK_FAILED when none is left. */
function attempt(dep: Deployment, rb: RollbackProgress, s: Settings): Step {
  if (dep.rollbackAttempts >= s.maxRollbackAttempts) return failRollback(dep, rb, rb.why);
  const next: RollbackProgress = { reason: rb.reason, why: rb.why };
  return go(
    { at: "rb-persisted", dep, rb: next },
    {
      do: "persist",
      id: dep.id,
      write: {
        op: "phase",
        phase: "rolling_back",
        update: { rollbackReason: rb.reason, rollbackAttempts: dep.rollbackAttempts + 1, error: rb.why },
      },
    },
  );
}

/** Starts (or resumes) rolling back `dep` because of `why`. */
export function startRollback(dep: Deployment, why: string, s: Settings): Step {
  const rb = { reason: dep.rollbackReason ?? why, why };
  if (!dep.previous) return failRollback(dep, rb, msg.noRollbackTarget);
  if (dep.rollbackAttempts >= s.maxRollbackAttempts)
    return failRollback(dep, rb, "no rollback attempts left");
  return attempt(dep, rb, s);
}

function attemptFailed(dep: Deployment, rb: RollbackProgress, problem: string, s: Settings): Step {
  const step = attempt(dep, { reason: rb.reason, why: problem }, s);
  return {
    state: step.state,
    effects: [
      {
        do: "log",
        level: "warn",
        event: "rollback_attempt_failed",
        msg: "rollback attempt failed",
        fields: { deploymentId: dep.id, attempt: dep.rollbackAttempts, error: problem },
      },
      ...step.effects,
    ],
  };
}

function failRollback(dep: Deployment, rb: RollbackProgress, problem: string): Step {
  return go({ at: "rb-fail-observe", dep, rb, problem }, observe(dep));
}

/** Undefined when the rollback switch worked; otherwise what went wrong. */
export function judgeRollback(
  dep: Deployment,
  end: SwitchEnd,
  tail: string,
  current: string | null,
  profileProblem: string | undefined,
): string | undefined {
  if (end.kind === "timeout") return msg.rollbackTimeout;
  if (end.kind === "vanished") return msg.rollbackVanished;
  if (!switchedExitCode(end.code)) return msg.rollbackBadExit(end.code, tail, end.reason);
  if (current !== dep.previous) return msg.rollbackWrongCurrent(current, dep.previous);
  if (profileProblem) return msg.rollbackProfile(dep.previous, profileProblem);
  return undefined;
}

function rolledBack(dep: Deployment, rb: RollbackProgress): Step {
  const message = msg.rolledBack(dep, rb.reason);
  return finish(dep, "ROLLED_BACK", message, {
    level: "warn",
    verdict: "failed",
    error: rb.reason,
    quarantine: rb.reason,
    reports: [outcomeReport(dep, "ROLLED_BACK", false, message)],
  });
}

function rollbackFailed(dep: Deployment, rb: RollbackProgress, problem: string, o: Observation): Step {
  const message = msg.rollbackFailed(dep, rb.reason, problem, o.current, o.profile);
  return finish(dep, "ROLLBACK_FAILED", message, {
    level: "error",
    verdict: "failed",
    error: problem,
    quarantine: rb.reason,
    reports: [outcomeReport(dep, "ROLLBACK_FAILED", false, message)],
    after: [
      {
        do: "remember-steady",
        outcome: "ROLLBACK_FAILED",
        key: steadyReportKey({
          outcome: "ROLLBACK_FAILED",
          desired: dep.desired,
          revision: dep.desiredRevision,
          current: o.current,
        }),
      },
      { do: "rollback-alarm", on: true },
    ],
  });
}

function recover(dep: Deployment, o: Observation, s: Settings): Step {
  const action = decideRecovery({
    phase: dep.phase as Exclude<Deployment["phase"], "done">,
    desired: dep.desired,
    previous: dep.previous,
    current: o.current,
    forward: o.forward,
    rollback: o.rollback,
    rollbackAttempts: dep.rollbackAttempts,
    maxRollbackAttempts: s.maxRollbackAttempts,
    order: dep.activationOrder,
    bootDefaultMoved: dep.bootDefaultMoved,
    rebooted: dep.bootId !== null && o.bootId !== null && o.bootId !== dep.bootId,
  });
  const log = {
    do: "log",
    level: "warn",
    event: "recovery",
    msg: `settling deployment ${dep.id} left in phase ${dep.phase}: ${action.kind}`,
    fields: {
      deploymentId: dep.id,
      phase: dep.phase,
      desired: dep.desired,
      previous: dep.previous,
      current: o.current,
      order: dep.activationOrder,
      bootId: dep.bootId,
      bootIdNow: o.bootId,
      forward: o.forward.state,
      rollback: o.rollback.state,
      action: action.kind,
    },
  } as const;
  const rb = { reason: dep.rollbackReason ?? "rollback", why: dep.rollbackReason ?? "rollback" };
  const withLog = (step: Step): Step => ({ state: step.state, effects: [log, ...step.effects] });
  switch (action.kind) {
    case "abandon":
      if (action.restoreProfile && o.profile === dep.desired)
        return go({ at: "abandon", dep, reason: action.reason }, log, restore(dep));
      return withLog(abandon(dep, action.reason));
    case "wait-switch":
    case "after-switch":
      // An exited switch is "waited for" at once: its exit code is handled as if watched live.
      return go(
        { at: "switch", dep, handle: dep.activation! },
        log,
        { do: "enter-phase", phase: "switching" },
        {
          do: "wait-switch",
          handle: dep.activation!,
          where: "waiting for a switch started before the restart",
        },
      );
    case "verify":
      return go({ at: "verify-persisted", dep }, log, {
        do: "persist",
        id: dep.id,
        write: { op: "phase", phase: "verifying", update: {} },
      });
    case "rollback":
      return withLog(startRollback(dep, msg.retryAfterRestart(dep.rollbackReason, action.reason), s));
    case "wait-rollback":
      return go(
        { at: "rb-switch", dep, rb },
        log,
        { do: "enter-phase", phase: "rolling_back" },
        {
          do: "wait-switch",
          handle: dep.rollbackActivation!,
          where: "waiting for a rollback started before the restart",
        },
      );
    case "rolled-back":
      return go({ at: "rb-restore", dep, rb }, log, restore(dep));
    case "rollback-failed":
      return withLog(failRollback(dep, rb, action.reason));
    case "rolled-back-by-reboot":
      return withLog(rolledBackByReboot(dep));
  }
}

/**
 * The reboot already rolled back: the host booted its boot default, the previous generation,
 * which the confirm order never moved. Nothing to switch; the outcome says what happened.
 */
function rolledBackByReboot(dep: Deployment): Step {
  const message = msg.rolledBackByReboot(dep, dep.phase);
  return finish(dep, "ROLLED_BACK_BY_REBOOT", message, {
    level: "warn",
    verdict: "failed",
    error: msg.rebootReason,
    quarantine: msg.rebootReason,
    reports: [outcomeReport(dep, "ROLLED_BACK_BY_REBOOT", false, message)],
  });
}

/**
 * Closes a deployment that changed nothing. Past the intent the control plane has seen APPLYING
 * for this id, so it gets an outcome for it too: FETCH_FAILED, the outcome a rollout gate reads
 * as "nothing changed, the agent retries" (the retry is a new deployment id).
 */
function abandon(dep: Deployment, reason: string): Step {
  const message = msg.abandoned(reason);
  return finish(dep, "INTERRUPTED", message, {
    level: "info",
    verdict: "ok",
    logMessage: reason,
    reports: dep.phase === "applying" ? [outcomeReport(dep, "FETCH_FAILED", false, message)] : [],
  });
}

/** Transitions of rollback and recovery; undefined when (state, event) is not one of them. */
export function rollback(st: State, e: Event, s: Settings): Step | undefined {
  switch (st.at) {
    case "recover":
      return e.on === "observed" ? recover(st.dep, e.facts, s) : undefined;
    case "abandon":
      return e.on === "ok" || e.on === "failed" ? abandon(st.dep, st.reason) : undefined;
    case "rb-persisted":
      if (e.on !== "persisted") return undefined;
      // A forward switch still running (e.g. found after a restart) holds the switch lock and
      // would keep changing the system: it goes first.
      return go(
        e.dep.activation
          ? { at: "rb-forward", dep: e.dep, rb: st.rb }
          : { at: "rb-profile", dep: e.dep, rb: st.rb },
        { do: "enter-phase", phase: "rolling_back", error: st.rb.why },
        e.dep.activation ? observe(e.dep) : restore(e.dep),
      );
    case "rb-forward":
      if (e.on !== "observed") return undefined;
      if (e.facts.forward.state === "running")
        return go(
          { at: "rb-stop-forward", dep: st.dep, rb: st.rb },
          {
            do: "log",
            level: "warn",
            event: "switch_stopped",
            msg: "stopping the forward switch before rolling back",
            fields: { deploymentId: st.dep.id },
          },
          { do: "stop-switch", handle: st.dep.activation! },
        );
      return go({ at: "rb-profile", dep: st.dep, rb: st.rb }, restore(st.dep));
    case "rb-stop-forward":
      return e.on === "switch-stopped"
        ? go({ at: "rb-profile", dep: st.dep, rb: st.rb }, restore(st.dep))
        : undefined;
    case "rb-profile":
      if (e.on === "ok") return go({ at: "rb-lock", dep: st.dep, rb: st.rb }, { do: "wait-lock" });
      if (e.on === "failed")
        return go(
          { at: "rb-lock", dep: st.dep, rb: { ...st.rb, profileProblem: e.message } },
          { do: "wait-lock" },
        );
      return undefined;
    case "rb-lock":
      if (e.on !== "lock") return undefined;
      // Our own killed switch released the lock; someone else's switch had activationTimeout to finish.
      if (e.held) return attemptFailed(st.dep, st.rb, msg.lockTooLong(e.description), s);
      return go(
        { at: "rb-plan", dep: st.dep, rb: st.rb },
        {
          do: "plan-switch",
          deploymentId: st.dep.id,
          role: `rollback-${st.dep.rollbackAttempts}`,
          path: st.dep.previous!,
          verb: rollbackVerb(st.dep),
        },
      );
    case "rb-plan":
      if (e.on !== "planned") return undefined;
      return go(
        { at: "rb-planned", dep: st.dep, rb: st.rb },
        {
          do: "persist",
          id: st.dep.id,
          write: { op: "phase", phase: "rolling_back", update: { rollbackActivation: e.handle } },
        },
      );
    case "rb-planned":
      if (e.on !== "persisted") return undefined;
      return go(
        { at: "rb-start", dep: e.dep, rb: st.rb },
        { do: "start-switch", planned: e.dep.rollbackActivation! },
      );
    case "rb-start":
      if (e.on === "started")
        return go(
          { at: "rb-recorded", dep: st.dep, rb: st.rb },
          {
            do: "log",
            level: "info",
            event: "rollback_switch_started",
            msg: "running the previous generation's own switch-to-configuration",
            fields: {
              deploymentId: st.dep.id,
              previous: st.dep.previous,
              attempt: st.dep.rollbackAttempts,
              unit: e.handle.unit,
              pid: e.handle.pid,
            },
          },
          {
            do: "persist",
            id: st.dep.id,
            write: { op: "activation", field: "rollbackActivation", handle: e.handle },
          },
        );
      if (e.on === "start-failed")
        return attemptFailed(st.dep, st.rb, msg.rollbackStartFailed(st.dep.previous!, e.message), s);
      return undefined;
    case "rb-recorded":
      if (e.on !== "persisted") return undefined;
      return go(
        { at: "rb-switch", dep: e.dep, rb: st.rb },
        { do: "wait-switch", handle: e.dep.rollbackActivation!, where: "rolling back" },
      );
    case "rb-switch":
      if (e.on !== "switch-ended") return undefined;
      if (e.end.kind === "timeout")
        return go(
          { at: "rb-kill", dep: st.dep, rb: st.rb },
          { do: "stop-switch", handle: st.dep.rollbackActivation! },
        );
      return go({ at: "rb-judge", dep: st.dep, rb: st.rb, end: e.end, tail: e.tail }, observe(st.dep));
    case "rb-kill":
      return e.on === "switch-stopped" ? attemptFailed(st.dep, st.rb, msg.rollbackTimeout, s) : undefined;
    case "rb-judge": {
      if (e.on !== "observed") return undefined;
      const problem = judgeRollback(st.dep, st.end, st.tail, e.facts.current, st.rb.profileProblem);
      if (problem !== undefined) return attemptFailed(st.dep, st.rb, problem, s);
      // Back on the previous generation; the profile follows (a no-op if it already did).
      return go({ at: "rb-restore", dep: st.dep, rb: st.rb }, restore(st.dep));
    }
    case "rb-restore":
      return e.on === "ok" || e.on === "failed" ? rolledBack(st.dep, st.rb) : undefined;
    case "rb-fail-observe":
      return e.on === "observed" ? rollbackFailed(st.dep, st.rb, st.problem, e.facts) : undefined;
    default:
      return undefined;
  }
}
