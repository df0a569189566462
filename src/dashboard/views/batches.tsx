/** A rollout's batches as a picture: one block per batch, one cell per machine, coloured by verdict. */
import { BatchStatus, MachineGateState, type Rollout } from "../../gen/nixfleet/v1/fleet_pb.js";
import { enumLabel } from "../format.js";
import { batchTone, gateTone } from "../tones.js";

export function BatchStrip({ rollout, compact = false }: { rollout: Rollout; compact?: boolean }) {
  const total = rollout.batches.reduce((n, b) => n + b.machines.length, 0);
  const healthy = rollout.batches.reduce((n, b) => n + b.healthy, 0);
  return (
    <div
      class={`batches ${compact ? "compact" : ""}`}
      data-testid="batches"
      role="img"
      aria-label={`${healthy} of ${total} machines healthy`}
    >
      {rollout.batches.map((b) => (
        <div
          key={b.index}
          class={`batch batch-${batchTone(b.status)}`}
          data-batch={b.index + 1}
          data-status={enumLabel(BatchStatus, b.status)}
          title={`batch ${b.index + 1}: ${enumLabel(BatchStatus, b.status)} · ${b.healthy} healthy, ${b.unhealthy} unhealthy, ${b.pending} pending`}
        >
          {compact ? null : (
            <div class="batch-label">
              b{b.index + 1} · {enumLabel(BatchStatus, b.status)}
            </div>
          )}
          <div class="cells">
            {b.machines.map((m) => (
              <span
                key={m.machineId}
                class={`cell cell-${b.status === BatchStatus.PENDING ? "muted" : gateTone(m.state)}`}
                title={`${m.machineId}: ${enumLabel(MachineGateState, m.state)}${m.reason ? ` — ${m.reason}` : ""}`}
              >
                {compact ? null : m.machineId}
              </span>
            ))}
          </div>
        </div>
      ))}
      {compact ? (
        <span class="small muted">
          {" "}
          {healthy}/{total}
        </span>
      ) : null}
    </div>
  );
}
