/** Small builders shared by the transition modules. Pure. */
import type { Desired } from "../decide.js";
import type { Deployment, FinalOutcome } from "../journal/journal.js";
import type { Effect, Note, ReportOutcome, ReportSpec, State, Step } from "./types.js";

export function go(state: State, ...effects: Effect[]): Step {
  return { state, effects };
}

export function observe(dep: Deployment): Effect {
  return { do: "observe", forward: dep.activation, rollback: dep.rollbackActivation };
}

export function desiredOf(dep: Deployment): Desired {
  return {
    path: dep.desired,
    cacheUrl: dep.cacheUrl ?? "",
    revision: dep.desiredRevision,
    rolloutId: dep.rolloutId,
  };
}

export function outcomeReport(
  dep: Deployment,
  outcome: ReportOutcome,
  success: boolean,
  message: string,
): ReportSpec {
  return { kind: "report", outcome, success, message, deploymentId: dep.id, desired: desiredOf(dep) };
}

export interface FinishOptions {
  level: "info" | "warn" | "error";
  verdict: "ok" | "failed";
  error?: string;
  quarantine?: string;
  reports?: ReportSpec[];
  /** The log line's message when it differs from the journaled one. */
  logMessage?: string;
  after?: Note[];
  park?: string;
}

/**
 * Ends a deployment: one transaction with the outcome, its quarantine entry and its reports;
 * the log line and metrics follow once it committed.
 */
export function finish(dep: Deployment, outcome: FinalOutcome, message: string, o: FinishOptions): Step {
  return go(
    {
      at: "finish",
      verdict: o.verdict,
      after: [
        { do: "finished", outcome, message: o.logMessage ?? message, level: o.level },
        ...(o.after ?? []),
      ],
      ...(o.park !== undefined ? { park: o.park } : {}),
    },
    {
      do: "persist",
      id: dep.id,
      write: {
        op: "finish",
        outcome,
        message,
        ...(o.error !== undefined ? { error: o.error } : {}),
        ...(o.quarantine !== undefined
          ? { quarantine: { path: dep.desired, revision: dep.desiredRevision, reason: o.quarantine } }
          : {}),
        reports: o.reports ?? [],
      },
    },
  );
}

/** A deployment that ended without changing the host (nothing to roll back). */
export function failWithoutChange(
  dep: Deployment,
  outcome: "FETCH_FAILED" | "APPLY_FAILED" | "SWITCH_LOCKED",
  message: string,
  quarantine?: string,
): Step {
  return finish(dep, outcome, message, {
    level: outcome === "SWITCH_LOCKED" ? "warn" : "error",
    verdict: "failed",
    error: message,
    reports: [outcomeReport(dep, outcome, false, message)],
    ...(quarantine !== undefined ? { quarantine } : {}),
  });
}
