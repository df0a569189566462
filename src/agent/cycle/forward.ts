/**
 * The forward path as transitions: fetch → inspect (preflight) → apply (intent, GC roots,
 * profile) → switch → verify → commit. Pure. Every step that changes the host is preceded by a
 * persisted intent, so recovery (rollback.ts) knows what might have happened.
 */
import { isStorePath } from "../../common/store-path.js";
import type { SwitchVerb } from "../activation.js";
import { steadyReportKey } from "../decide.js";
import { describeFailures, type HealthSnapshot } from "../health/runner.js";
import type { Deployment } from "../journal/journal.js";
import { switchedExitCode } from "../recovery.js";
import { msg } from "./messages.js";
import { startRollback } from "./rollback.js";
import { failWithoutChange, finish, go, observe, outcomeReport } from "./steps.js";
import type { Event, Inspection, Settings, State, Step } from "./types.js";

type At<K extends State["at"]> = Extract<State, { at: K }>;

export function foreign(dep: Deployment, current: string | null): Step {
  const message = msg.foreign(dep, current);
  return finish(dep, "FOREIGN_GENERATION", message, {
    level: "warn",
    verdict: "failed",
    error: message,
    quarantine: msg.foreignReason(current),
    reports: [outcomeReport(dep, "FOREIGN_GENERATION", false, message)],
  });
}

function afterInspection(st: At<"inspect">, f: Inspection, s: Settings): Step {
  const { dep } = st;
  if (s.dryRun) {
    const from = st.source === "cache" ? (dep.cacheUrl ?? "the cache") : "the local store";
    return finish(dep, "DRY_RUN", msg.dryRun(dep.desired), {
      level: "info",
      verdict: "ok",
      logMessage: "fetched; not applied (dryRun)",
      reports: [outcomeReport(dep, "DRY_RUN", true, msg.dryRunReport(dep.desired, from))],
      after: [
        {
          do: "remember-steady",
          outcome: "DRY_RUN",
          key: steadyReportKey({
            outcome: "DRY_RUN",
            desired: dep.desired,
            revision: dep.desiredRevision,
            current: f.previous,
          }),
        },
      ],
    });
  }
  // Preflight: never start what cannot be finished or undone.
  if (f.desiredProblem)
    return failWithoutChange(
      dep,
      "APPLY_FAILED",
      msg.unswitchable(dep.desired, f.desiredProblem),
      f.desiredProblem,
    );
  if (f.previous === null || !isStorePath(f.previous))
    return failWithoutChange(dep, "APPLY_FAILED", msg.noPrevious(s.currentSystemPath, f.previous));
  if (f.previousProblem)
    return failWithoutChange(dep, "APPLY_FAILED", msg.previousUnswitchable(f.previous, f.previousProblem));
  if (f.lockHolder !== undefined) return failWithoutChange(dep, "SWITCH_LOCKED", msg.locked(f.lockHolder));
  // The intent, with the exact previous path, is durable before anything changes — and the
  // APPLYING report with it: whatever happens next, this deployment id gets an outcome.
  return go(
    { at: "begin-apply", dep },
    {
      do: "persist",
      id: dep.id,
      write: {
        op: "begin-apply",
        previous: f.previous,
        profileGeneration: f.profileGeneration,
        order: s.activationOrder,
        bootId: f.bootId,
        reports: [outcomeReport(dep, "APPLYING", true, msg.applying(f.previous, dep.desired))],
      },
    },
  );
}

function afterSwitch(dep: Deployment, e: Extract<Event, { on: "switch-ended" }>, s: Settings): Step {
  const { end } = e;
  if (end.kind === "timeout") {
    const reason = msg.switchTimeout(s.activationTimeoutSeconds);
    // Journaled before the kill: an agent that dies while killing the switch must resume the
    // rollback, not mistake the half-done switch for a finished one.
    return go(
      { at: "timeout-persisted", dep, handle: dep.activation! },
      {
        do: "persist",
        id: dep.id,
        write: { op: "phase", phase: "rolling_back", update: { rollbackReason: reason, error: reason } },
      },
    );
  }
  if (end.kind === "vanished") return startRollback(dep, msg.vanished, s);
  if (!switchedExitCode(end.code)) return startRollback(dep, msg.badExit(end.code, e.tail, end.reason), s);
  return go(
    { at: "verify-persisted", dep, exitCode: end.code },
    ...(end.code === 4
      ? [
          {
            do: "log" as const,
            level: "warn" as const,
            event: "switch_exit_4",
            msg: "switch-to-configuration exited 4 (switched, some units failed); health checks decide",
            fields: { deploymentId: dep.id },
          },
        ]
      : []),
    { do: "persist", id: dep.id, write: { op: "phase", phase: "verifying", update: {} } },
  );
}

/** Transitions of the forward path; undefined when (state, event) is not one of them. */
export function forward(st: State, e: Event, s: Settings): Step | undefined {
  switch (st.at) {
    case "create":
      if (e.on !== "persisted") return undefined;
      return go(
        { at: "fetch", dep: e.dep },
        { do: "enter-phase", phase: "fetching" },
        { do: "fetch", path: e.dep.desired, cacheUrl: e.dep.cacheUrl },
      );
    case "fetch":
      if (e.on === "fetched")
        return go(
          { at: "inspect", dep: st.dep, source: e.source },
          {
            do: "log",
            level: "info",
            event: "fetched",
            msg: "closure is in the local store",
            fields: {
              deploymentId: st.dep.id,
              desired: st.dep.desired,
              source: e.source,
              cacheUrl: st.dep.cacheUrl,
            },
          },
          { do: "inspect", path: st.dep.desired },
        );
      if (e.on === "fetch-failed")
        return failWithoutChange(st.dep, "FETCH_FAILED", msg.fetchFailed(e.message));
      if (e.on === "fetch-stopped")
        // Nothing changed and no APPLYING went out: INTERRUPTED, retried on the next start.
        return finish(st.dep, "INTERRUPTED", msg.stoppedFetching, {
          level: "info",
          verdict: "ok",
          logMessage: "stopped while fetching",
          park: "fetching",
        });
      return undefined;
    case "inspect":
      return e.on === "inspected" ? afterInspection(st, e.facts, s) : undefined;
    case "begin-apply":
      if (e.on !== "persisted") return undefined;
      return go(
        { at: "gc-roots", dep: e.dep },
        { do: "enter-phase", phase: "applying" },
        { do: "gc-roots", previous: e.dep.previous!, desired: e.dep.desired },
      );
    case "gc-roots":
      // Confirm order: the profile (the boot default) waits until the generation proved healthy.
      if (e.on === "ok" && st.dep.activationOrder === "confirm") return planSwitch(st.dep, "test");
      if (e.on === "ok")
        return go({ at: "set-profile", dep: st.dep }, { do: "set-profile", path: st.dep.desired });
      if (e.on === "failed") return failWithoutChange(st.dep, "APPLY_FAILED", msg.nothingSwitched(e.message));
      return undefined;
    case "set-profile":
      if (e.on === "ok") return planSwitch(st.dep, "switch");
      if (e.on === "failed") return unapply(st.dep, msg.nothingSwitched(e.message));
      return undefined;
    case "unapply":
      if (e.on !== "ok" && e.on !== "failed") return undefined;
      return failWithoutChange(st.dep, "APPLY_FAILED", st.message);
    case "plan-switch":
      if (e.on !== "planned") return undefined;
      return go(
        { at: "switch-planned", dep: st.dep },
        {
          do: "persist",
          id: st.dep.id,
          write: { op: "phase", phase: "switching", update: { activation: e.handle } },
        },
      );
    case "switch-planned":
      if (e.on !== "persisted") return undefined;
      return go(
        { at: "start-switch", dep: e.dep },
        { do: "enter-phase", phase: "switching" },
        { do: "start-switch", planned: e.dep.activation! },
      );
    case "start-switch":
      if (e.on === "started")
        return go(
          { at: "switch-recorded", dep: st.dep },
          {
            do: "log",
            level: "info",
            event: "switch_started",
            msg: "switch-to-configuration started",
            fields: { deploymentId: st.dep.id, mode: e.handle.mode, unit: e.handle.unit, pid: e.handle.pid },
          },
          {
            do: "persist",
            id: st.dep.id,
            write: { op: "activation", field: "activation", handle: e.handle },
          },
        );
      if (e.on !== "start-failed") return undefined;
      // Nothing ran: put the profile back and report; no rollback needed.
      if (e.status.state === "vanished") return unapply(st.dep, msg.startFailed(e.message));
      // A start that "failed" after all (e.g. systemd-run timed out once the unit was up) is
      // still a switch: follow it instead of assuming nothing ran.
      return go(
        { at: "switch", dep: st.dep, handle: st.dep.activation! },
        {
          do: "log",
          level: "warn",
          event: "switch_start_error",
          msg: "starting the switch reported an error, but the switch runs; following it",
          fields: { deploymentId: st.dep.id, error: e.message, state: e.status.state },
        },
        { do: "wait-switch", handle: st.dep.activation!, where: "switching" },
      );
    case "switch-recorded":
      if (e.on !== "persisted") return undefined;
      return go(
        { at: "switch", dep: e.dep, handle: e.dep.activation! },
        { do: "wait-switch", handle: e.dep.activation!, where: "switching" },
      );
    case "switch":
      return e.on === "switch-ended" ? afterSwitch(st.dep, e, s) : undefined;
    case "timeout-persisted":
      if (e.on !== "persisted") return undefined;
      return go(
        { at: "kill-switch", dep: e.dep },
        { do: "enter-phase", phase: "rolling_back", error: e.dep.rollbackReason ?? undefined },
        {
          do: "log",
          level: "warn",
          event: "switch_timeout",
          msg: "switch exceeded activationTimeout; stopping it",
          fields: { deploymentId: e.dep.id, unit: st.handle.unit, pid: st.handle.pid },
        },
        { do: "stop-switch", handle: st.handle },
      );
    case "kill-switch":
      if (e.on !== "switch-stopped") return undefined;
      return startRollback(
        st.dep,
        msg.withTail(st.dep.rollbackReason ?? msg.switchTimeout(s.activationTimeoutSeconds), e.tail),
        s,
      );
    case "verify-persisted":
      if (e.on !== "persisted") return undefined;
      return go(
        { at: "verify-observe", dep: e.dep, ...exitCodeOf(st) },
        { do: "enter-phase", phase: "verifying" },
        observe(e.dep),
      );
    case "verify-observe": {
      if (e.on !== "observed") return undefined;
      const { current } = e.facts;
      if (current !== st.dep.desired) {
        if (current === st.dep.previous) return startRollback(st.dep, msg.stillPrevious(st.exitCode), s);
        return foreign(st.dep, current);
      }
      return go(
        { at: "verify", dep: st.dep, ...exitCodeOf(st) },
        { do: "verify", generation: st.dep.desired, deploymentId: st.dep.id },
      );
    }
    case "verify":
      return e.on === "verified" ? afterVerify(st, e, s) : undefined;
    case "commit-persisted":
      if (e.on !== "persisted") return undefined;
      return go(
        { at: "commit-profile", dep: e.dep, commit: st.commit },
        { do: "enter-phase", phase: "committing" },
        { do: "set-profile", path: e.dep.desired },
      );
    case "commit-profile":
      if (e.on === "ok")
        return go(
          { at: "commit-boot", dep: st.dep, commit: st.commit },
          { do: "boot-default", path: st.dep.desired },
        );
      if (e.on === "failed") return startRollback(st.dep, msg.commitFailed(e.message), s);
      return undefined;
    case "commit-boot":
      if (e.on === "ok") return deployed(st.dep, st.commit.snapshot, st.commit.exitCode);
      if (e.on === "failed") return startRollback(st.dep, msg.commitFailed(e.message), s);
      return undefined;
    default:
      return undefined;
  }
}

function exitCodeOf(st: { exitCode?: number }): { exitCode?: number } {
  return st.exitCode !== undefined ? { exitCode: st.exitCode } : {};
}

function planSwitch(dep: Deployment, verb: SwitchVerb): Step {
  return go(
    { at: "plan-switch", dep },
    { do: "plan-switch", deploymentId: dep.id, role: "switch", path: dep.desired, verb },
  );
}

function unapply(dep: Deployment, message: string): Step {
  return go(
    { at: "unapply", dep, message },
    { do: "restore-profile", previous: dep.previous, generation: dep.previousProfileGeneration },
  );
}

function afterVerify(st: At<"verify">, e: Extract<Event, { on: "verified" }>, s: Settings): Step {
  const { dep } = st;
  if (e.current !== dep.desired) return foreign(dep, e.current);
  const health = {
    kind: "health" as const,
    generation: dep.desired,
    snapshot: e.snapshot,
    postApply: true,
    deploymentId: dep.id,
  };
  if (!e.snapshot.allPassed) {
    // The failing results are the truth about the new generation: report them bound to it.
    const rollback = startRollback(
      dep,
      msg.healthFailed(s.verifyTimeoutSeconds, st.exitCode, describeFailures(e.snapshot)),
      s,
    );
    return { state: rollback.state, effects: [{ do: "report", report: health }, ...rollback.effects] };
  }
  if (dep.activationOrder === "confirm")
    // Proved healthy: only now does it become what the host boots. Journaled first, so that a
    // restart from here on knows the profile may have moved (a rollback then uses `switch`).
    return go(
      { at: "commit-persisted", dep, commit: { snapshot: e.snapshot, ...exitCodeOf(st) } },
      {
        do: "persist",
        id: dep.id,
        write: { op: "phase", phase: "committing", update: { bootDefaultMoved: true } },
      },
    );
  return deployed(dep, e.snapshot, st.exitCode);
}

function deployed(dep: Deployment, snapshot: HealthSnapshot, exitCode: number | undefined): Step {
  const health = {
    kind: "health" as const,
    generation: dep.desired,
    snapshot,
    postApply: true,
    deploymentId: dep.id,
  };
  const message = msg.deployed(dep, snapshot.results.length, exitCode);
  // The outcome, its report and the post-apply health report commit together.
  return finish(dep, "DEPLOYED", message, {
    level: "info",
    verdict: "ok",
    reports: [outcomeReport(dep, "DEPLOYED", true, message), health],
    after: [
      // The next cycle need not repeat "up to date" for this assignment.
      {
        do: "remember-steady",
        outcome: "UP_TO_DATE",
        key: steadyReportKey({
          outcome: "UP_TO_DATE",
          desired: dep.desired,
          revision: dep.desiredRevision,
          current: dep.desired,
        }),
      },
      { do: "rollback-alarm", on: false },
    ],
  });
}
