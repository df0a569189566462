/** Which colour each state gets, in one place. */
import { BatchStatus, HealthState, MachineGateState, RolloutStatus } from "../gen/nixfleet/v1/fleet_pb.js";
import { MachineLifecycle, Outcome } from "../gen/nixfleet/v1/types_pb.js";
import type { Tone } from "./components.js";

export function outcomeTone(o: Outcome): Tone {
  switch (o) {
    case Outcome.DEPLOYED:
    case Outcome.UP_TO_DATE:
      return "good";
    case Outcome.APPLYING:
      return "busy";
    case Outcome.DRY_RUN:
      return "info";
    case Outcome.UNSPECIFIED:
      return "muted";
    case Outcome.SWITCH_LOCKED:
    case Outcome.FOREIGN_GENERATION:
      return "warn";
    default:
      return "bad";
  }
}

export function healthTone(h: HealthState): Tone {
  if (h === HealthState.HEALTHY) return "good";
  if (h === HealthState.UNHEALTHY) return "bad";
  return "muted";
}

export function lifecycleTone(l: MachineLifecycle): Tone {
  if (l === MachineLifecycle.ACTIVE) return "good";
  if (l === MachineLifecycle.MAINTENANCE) return "warn";
  if (l === MachineLifecycle.PENDING) return "info";
  return "muted";
}

export function rolloutTone(s: RolloutStatus): Tone {
  switch (s) {
    case RolloutStatus.RUNNING:
      return "busy";
    case RolloutStatus.PAUSED:
      return "warn";
    case RolloutStatus.COMPLETED:
      return "good";
    case RolloutStatus.FAILED:
      return "bad";
    default:
      return "muted";
  }
}

export function batchTone(s: BatchStatus): Tone {
  switch (s) {
    case BatchStatus.DEPLOYING:
      return "busy";
    case BatchStatus.SUCCEEDED:
      return "good";
    case BatchStatus.FAILED:
      return "bad";
    default:
      return "muted";
  }
}

export function gateTone(s: MachineGateState): Tone {
  if (s === MachineGateState.HEALTHY) return "good";
  if (s === MachineGateState.UNHEALTHY) return "bad";
  return "busy";
}
