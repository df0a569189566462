/**
 * The health gate: whether each machine of a deploying batch is healthy, unhealthy or still
 * pending, and whether the batch as a whole passed. Pure functions over the evidence the store
 * gathers, so the rules are table-tested and the executor only wires them up.
 *
 * A machine is
 * - UNHEALTHY when its latest outcome report received after the batch started is a definitive
 *   failure (ROLLED_BACK, ROLLED_BACK_BY_REBOOT, ROLLBACK_FAILED, APPLY_FAILED, QUARANTINED,
 *   FOREIGN_GENERATION) for the
 *   batch's target, or its latest health report on the target since the start fails;
 * - HEALTHY when it runs the target (its latest report says so) and its latest health report on
 *   the target since the start passes — with a soak, passing without a break for the soak period;
 * - otherwise PENDING, until health_timeout after the start makes it UNHEALTHY ("no decision in
 *   time"). A machine whose passing streak began before the timeout may finish its soak.
 *
 * An outcome this control plane does not know (a newer agent's, shown as UNKNOWN(n)) about the
 * target counts as UNHEALTHY: it may be a failure, and it must not leave the gate to time out.
 *
 * FETCH_FAILED is not definitive: nothing changed on the host and the agent retries every
 * retryInterval (a cache hiccup, a closure pushed a moment late). It keeps the machine pending,
 * with the fetch error as the reason, until it fetches or the health timeout runs out.
 *
 * "After the start" is by the store's evidence sequence, not by time (seq > started_seq): the
 * sequence follows commit order, so a report stored before a (re)start never counts, even in the
 * same millisecond or after the wall clock stepped back — reports from before a pause cannot fail
 * a resumed batch, and a health report from the old generation can never pass one. Times (wall
 * clock) only measure durations: the health timeout and the soak. APPLYING is never success; it only says the switch is under way.
 */
import { Outcome, OutcomeSchema } from "../../gen/nixfleet/v1/types_pb.js";
import { isKnownEnumValue, outcomeName } from "../enum-names.js";
import type { GateState } from "../store/records.js";
import { allowedUnhealthy, type FailureThreshold } from "./threshold.js";

export const FAILURE_OUTCOMES: ReadonlySet<Outcome> = new Set([
  Outcome.ROLLED_BACK,
  // The host rebooted during the confirm window and runs the previous generation again.
  Outcome.ROLLED_BACK_BY_REBOOT,
  Outcome.ROLLBACK_FAILED,
  Outcome.APPLY_FAILED,
  Outcome.QUARANTINED,
  Outcome.FOREIGN_GENERATION,
]);

/** The latest report since the batch start that carried an outcome. */
export interface OutcomeEvidence {
  outcome: Outcome;
  message: string;
  /** The generation the outcome is about; empty from agents that don't say (v0.1 REST). */
  desiredGeneration: string;
  receivedAt: number;
  /** Position in the store's evidence sequence (orders reports against batch starts). */
  seq: number;
}

/** The latest health report on the target generation since the batch start. */
export interface HealthEvidence {
  allPassed: boolean;
  receivedAt: number;
  seq: number;
  failing: string[];
}

export interface MachineGateInput {
  machineId: string;
  target: string;
  /** Wall-clock time of the batch start: the health timeout and the soak count from it. */
  startedAt: number;
  /** The batch start's position in the evidence sequence: only later evidence counts. */
  startedSeq: number;
  healthTimeoutMs: number;
  soakMs: number;
  /** What the machine's latest report (or Hello) says it runs. */
  currentGeneration: string;
  latestOutcome: OutcomeEvidence | null;
  latestHealth: HealthEvidence | null;
  /** When the current unbroken run of passing health reports on the target began (since start). */
  passingSince: number | null;
}

export interface MachineGate {
  machineId: string;
  state: GateState;
  reason: string;
}

function seconds(ms: number): string {
  return `${Math.floor(ms / 1000)}s`;
}

export function classifyMachine(input: MachineGateInput, now: number): MachineGate {
  const { machineId, target, startedAt, startedSeq } = input;
  const gate = (state: GateState, reason: string): MachineGate => ({ machineId, state, reason });

  const outcome = input.latestOutcome && input.latestOutcome.seq > startedSeq ? input.latestOutcome : null;
  if (
    outcome &&
    FAILURE_OUTCOMES.has(outcome.outcome) &&
    (outcome.desiredGeneration === target || outcome.desiredGeneration === "")
  ) {
    const detail = outcome.message ? `: ${outcome.message}` : "";
    return gate("unhealthy", `${outcomeName(outcome.outcome)}${detail}`);
  }
  if (
    outcome &&
    !isKnownEnumValue(OutcomeSchema, outcome.outcome) &&
    (outcome.desiredGeneration === target || outcome.desiredGeneration === "")
  ) {
    // A newer agent's outcome: it might be a failure, so it is never taken as success.
    const detail = outcome.message ? ` (${outcome.message})` : "";
    return gate(
      "unhealthy",
      `${outcomeName(outcome.outcome)}: outcome unknown to this control plane, counted as not healthy; upgrade the control plane${detail}`,
    );
  }

  const health = input.latestHealth && input.latestHealth.seq > startedSeq ? input.latestHealth : null;
  if (health && !health.allPassed) {
    const names = health.failing.length ? health.failing.join(", ") : "unnamed checks";
    return gate("unhealthy", `health checks failing on the target generation: ${names}`);
  }

  const onTarget = input.currentGeneration === target;
  const deadline = startedAt + input.healthTimeoutMs;
  let waiting: string;
  if (onTarget && health) {
    if (input.soakMs <= 0) return gate("healthy", "on the target generation with passing health checks");
    const since = Math.max(input.passingSince ?? health.receivedAt, startedAt);
    const soaked = now - since;
    if (soaked >= input.soakMs)
      return gate("healthy", `on the target generation, healthy for the ${seconds(input.soakMs)} soak`);
    // A streak that began in time may finish its soak after the health timeout.
    if (since <= deadline) {
      return gate("pending", `soaking: healthy for ${seconds(soaked)} of ${seconds(input.soakMs)}`);
    }
    waiting = "passing health checks began after the health timeout";
  } else if (onTarget) {
    waiting = "on the target generation, waiting for a passing health report";
  } else if (
    outcome &&
    outcome.outcome === Outcome.FETCH_FAILED &&
    (outcome.desiredGeneration === target || outcome.desiredGeneration === "")
  ) {
    waiting = `fetching the target generation failed; the agent retries${outcome.message ? `: ${outcome.message}` : ""}`;
  } else {
    const last = outcome ? `; last outcome ${outcomeName(outcome.outcome)}` : "";
    const current = input.currentGeneration ? ` (running ${input.currentGeneration})` : "";
    waiting = `waiting for the switch to the target generation${current}${last}`;
  }
  if (now >= deadline) {
    return gate(
      "unhealthy",
      `no passing health report on the target generation within the ${seconds(input.healthTimeoutMs)} health timeout (${waiting})`,
    );
  }
  return gate("pending", waiting);
}

export type BatchVerdict =
  | { kind: "pending"; healthy: number; unhealthy: number; pending: number }
  | { kind: "passed"; healthy: number; unhealthy: number; allowed: number }
  | { kind: "failed"; healthy: number; unhealthy: number; allowed: number };

/** A batch passes once every machine is decided and no more are unhealthy than allowed. */
export function batchVerdict(states: readonly MachineGate[], threshold: FailureThreshold): BatchVerdict {
  let healthy = 0;
  let unhealthy = 0;
  let pending = 0;
  for (const s of states) {
    if (s.state === "healthy") healthy++;
    else if (s.state === "unhealthy") unhealthy++;
    else pending++;
  }
  const allowed = allowedUnhealthy(threshold, states.length);
  // Deciding early on failure would save minutes, but a machine still pending may yet turn out
  // healthy only if unhealthy ≤ allowed; once that is exceeded nothing can rescue the batch.
  if (unhealthy > allowed) return { kind: "failed", healthy, unhealthy, allowed };
  if (pending > 0) return { kind: "pending", healthy, unhealthy, pending };
  return { kind: "passed", healthy, unhealthy, allowed };
}
