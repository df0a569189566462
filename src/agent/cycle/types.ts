/**
 * The deploy cycle's vocabulary: what the machine is waiting for (State), what happened (Event),
 * and what it asks for (Effect). All plain data: the transition function (machine.ts) maps
 * (state, event) to (next state, effects); the interpreter (interpreter.ts) carries effects out
 * over the ports and turns each action's result into the next event.
 *
 * Every transition ends with at most one *action* (an effect with a result: fetch, persist,
 * start the switch, …) preceded by any number of *notes* (log lines, phase bookkeeping, metrics):
 * the action's result is the next event. A transition without an action ends the cycle.
 */
import type { ActivationHandle, ActivationStatus, SwitchVerb } from "../activation.js";
import type { CheckDecision, Desired } from "../decide.js";
import type { HealthSnapshot } from "../health/runner.js";
import type {
  ActivationOrder,
  Deployment,
  FinalOutcome,
  Phase,
  PhaseUpdate,
  QuarantineEntry,
} from "../journal/journal.js";
import type { SwitchObservation } from "../recovery.js";
import type { CycleVerdict } from "../schedule.js";

export type { CycleVerdict };

export type SwitchEnd =
  /** `reason`: systemd's account of a failed unit, when the wrapper could not write a status. */
  { kind: "exited"; code: number; reason?: string } | { kind: "timeout" } | { kind: "vanished" };

/** The proto outcome names a report can carry (reporting.ts maps them to the enum). */
export type ReportOutcome =
  | "UP_TO_DATE"
  | "APPLYING"
  | "DEPLOYED"
  | "ROLLED_BACK"
  | "ROLLED_BACK_BY_REBOOT"
  | "ROLLBACK_FAILED"
  | "FETCH_FAILED"
  | "APPLY_FAILED"
  | "QUARANTINED"
  | "DRY_RUN"
  | "SWITCH_LOCKED"
  | "FOREIGN_GENERATION";

/** A report as data; the interpreter adds machine id, current generation, tags, time. */
export type ReportSpec =
  | {
      kind: "report";
      outcome: ReportOutcome;
      success: boolean;
      message: string;
      deploymentId: string;
      /** Undefined: no desired generation (idle). */
      desired?: Desired;
    }
  | {
      kind: "health";
      generation: string;
      snapshot: HealthSnapshot;
      postApply: boolean;
      deploymentId: string;
    };

/** One journal transaction. Each returns the updated deployment row. */
export type JournalWrite =
  | { op: "create"; id: string; desired: Desired; cacheUrl: string | null }
  | {
      op: "begin-apply";
      previous: string;
      profileGeneration: number | null;
      order: ActivationOrder;
      bootId: string | null;
      reports: ReportSpec[];
    }
  | { op: "phase"; phase: Exclude<Phase, "done">; update: PhaseUpdate }
  | { op: "activation"; field: "activation" | "rollbackActivation"; handle: ActivationHandle }
  | {
      op: "finish";
      outcome: FinalOutcome;
      message: string;
      error?: string;
      /** The deployment's path, quarantined at its revision. */
      quarantine?: { path: string; revision: bigint; reason: string };
      reports: ReportSpec[];
    };

export type LogLevel = "debug" | "info" | "warn" | "error";

/** Effects without a result. */
export type Note =
  | { do: "log"; level: LogLevel; event: string; msg: string; fields?: Record<string, unknown> }
  | { do: "enter-phase"; phase: Exclude<Phase, "done">; error?: string }
  | { do: "finished"; outcome: FinalOutcome; message: string; level: "info" | "warn" | "error" }
  /** A steady-state report, queued on its own and remembered under `key` (throttling). */
  | { do: "steady-report"; key: string; outcome: string; report: ReportSpec }
  | { do: "remember-steady"; key: string; outcome: string }
  /** A report queued on its own (failing post-apply health results before a rollback). */
  | { do: "report"; report: ReportSpec }
  | { do: "lift-quarantine"; path: string }
  | { do: "rollback-alarm"; on: boolean };

/** Effects whose result is the next event. */
export type Action =
  /** One transaction on deployment `id`; its result is the updated row. */
  | { do: "persist"; id: string; write: JournalWrite }
  | { do: "fetch"; path: string; cacheUrl: string | null }
  | { do: "inspect"; path: string }
  | { do: "gc-roots"; previous: string; desired: string }
  | { do: "set-profile"; path: string }
  /** Put the system profile back on the deployment's previous generation (if it moved). */
  | { do: "restore-profile"; previous: string | null; generation: number | null }
  | { do: "plan-switch"; deploymentId: string; role: string; path: string; verb: SwitchVerb }
  /** `<path>/bin/switch-to-configuration boot` (confirm order, after verification). */
  | { do: "boot-default"; path: string }
  | { do: "start-switch"; planned: ActivationHandle }
  | { do: "wait-switch"; handle: ActivationHandle; where: string }
  | { do: "stop-switch"; handle: ActivationHandle }
  /** Read current-system, the profile, and how the deployment's switches are doing. */
  | { do: "observe"; forward: ActivationHandle | null; rollback: ActivationHandle | null }
  | { do: "verify"; generation: string; deploymentId: string }
  | { do: "wait-lock" }
  | { do: "health-report" }
  /** The agent is stopping: end the cycle here; the journal resumes it on the next start. */
  | { do: "park"; where: string };

export type Effect = Note | Action;

/** What the check step knows. */
export interface CheckFacts {
  desired: Desired | undefined;
  current: string | null;
  decision: CheckDecision;
  /** The ROLLBACK_FAILED deployment the control plane still asks for, if any. */
  alarm: Deployment | undefined;
  lastSteady: { key: string; sentAt: number } | undefined;
  now: number;
  /** A fresh id, used if the check decides to deploy. */
  newId: string;
}

export interface Observation {
  current: string | null;
  /** The kernel's boot id now (null: unreadable). */
  bootId: string | null;
  profile: string | null;
  forward: SwitchObservation;
  rollback: SwitchObservation;
}

export interface Inspection {
  desiredProblem: string | undefined;
  /** Where current-system points: the rollback target to be. */
  previous: string | null;
  previousProblem: string | undefined;
  /** Set when someone holds the switch lock: who, for the message. */
  lockHolder: string | undefined;
  profileGeneration: number | null;
  /** The kernel's boot id, journaled with the intent (a reboot changes it). */
  bootId: string | null;
}

export type Event =
  | { on: "checked"; facts: CheckFacts }
  | { on: "restarted"; dep: Deployment }
  | { on: "persisted"; dep: Deployment }
  | { on: "fetched"; source: "cache" | "local" }
  | { on: "fetch-failed"; message: string }
  | { on: "fetch-stopped" }
  | { on: "inspected"; facts: Inspection }
  | { on: "ok" }
  | { on: "failed"; message: string }
  | { on: "planned"; handle: ActivationHandle }
  | { on: "started"; handle: ActivationHandle }
  /** The start reported an error; `status` is what the switch is doing anyway. */
  | { on: "start-failed"; message: string; status: ActivationStatus }
  | { on: "switch-ended"; end: SwitchEnd; tail: string }
  | { on: "switch-stopped"; tail: string }
  | { on: "observed"; facts: Observation }
  | { on: "verified"; snapshot: HealthSnapshot; current: string | null }
  | { on: "lock"; held: boolean; description: string };

export type EventName = Event["on"];

/** Settings the transitions read (from the agent's configuration). */
export interface Settings {
  dryRun: boolean;
  cacheUrl: string | null;
  healthIntervalMs: number;
  verifyTimeoutSeconds: number;
  activationTimeoutSeconds: number;
  maxRollbackAttempts: number;
  currentSystemPath: string;
  activationOrder: ActivationOrder;
}

/** What a verified deployment carries until it is committed (confirm order). */
export interface Commit {
  snapshot: HealthSnapshot;
  exitCode?: number;
}

/** Data carried by a rollback in progress. */
export interface RollbackProgress {
  /** The first reason, reported in the outcome. */
  reason: string;
  /** Why this attempt runs (the previous attempt's problem after the first). */
  why: string;
  /** The profile could not be put back in this attempt. */
  profileProblem?: string;
  handle?: ActivationHandle;
}

export type State =
  | { at: "check" }
  | { at: "health-report" }
  | { at: "recover"; dep: Deployment }
  | { at: "create"; desired: Desired; current: string | null }
  | { at: "fetch"; dep: Deployment }
  | { at: "inspect"; dep: Deployment; source: "cache" | "local" }
  | { at: "begin-apply"; dep: Deployment }
  | { at: "gc-roots"; dep: Deployment }
  | { at: "set-profile"; dep: Deployment }
  | { at: "plan-switch"; dep: Deployment }
  | { at: "switch-planned"; dep: Deployment }
  | { at: "start-switch"; dep: Deployment }
  | { at: "switch-recorded"; dep: Deployment }
  | { at: "switch"; dep: Deployment; handle: ActivationHandle }
  | { at: "timeout-persisted"; dep: Deployment; handle: ActivationHandle }
  | { at: "kill-switch"; dep: Deployment }
  | { at: "verify-persisted"; dep: Deployment; exitCode?: number }
  | { at: "verify-observe"; dep: Deployment; exitCode?: number }
  | { at: "verify"; dep: Deployment; exitCode?: number }
  /** Confirm order, verified: the profile, then the boot default, move to the new generation. */
  | { at: "commit-persisted"; dep: Deployment; commit: Commit }
  | { at: "commit-profile"; dep: Deployment; commit: Commit }
  | { at: "commit-boot"; dep: Deployment; commit: Commit }
  | { at: "unapply"; dep: Deployment; message: string }
  | { at: "abandon"; dep: Deployment; reason: string }
  | { at: "rb-persisted"; dep: Deployment; rb: RollbackProgress }
  | { at: "rb-forward"; dep: Deployment; rb: RollbackProgress }
  | { at: "rb-stop-forward"; dep: Deployment; rb: RollbackProgress }
  | { at: "rb-profile"; dep: Deployment; rb: RollbackProgress }
  | { at: "rb-lock"; dep: Deployment; rb: RollbackProgress }
  | { at: "rb-plan"; dep: Deployment; rb: RollbackProgress }
  | { at: "rb-planned"; dep: Deployment; rb: RollbackProgress }
  | { at: "rb-start"; dep: Deployment; rb: RollbackProgress }
  | { at: "rb-recorded"; dep: Deployment; rb: RollbackProgress }
  | { at: "rb-switch"; dep: Deployment; rb: RollbackProgress }
  | { at: "rb-kill"; dep: Deployment; rb: RollbackProgress }
  | { at: "rb-judge"; dep: Deployment; rb: RollbackProgress; end: SwitchEnd; tail: string }
  | { at: "rb-restore"; dep: Deployment; rb: RollbackProgress }
  | { at: "rb-fail-observe"; dep: Deployment; rb: RollbackProgress; problem: string }
  /** Waiting for an outcome's transaction; `after` runs once it committed. */
  | { at: "finish"; verdict: CycleVerdict; after: Note[]; park?: string }
  | { at: "done"; verdict: CycleVerdict };

export type StateName = State["at"];

export interface Step {
  state: State;
  effects: Effect[];
}

export type { QuarantineEntry };
