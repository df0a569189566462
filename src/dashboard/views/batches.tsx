/**
 * A rollout's batches as a picture: one block per batch, one cell per machine coloured by its
 * verdict; a batch too large for cells (or any batch in the compact list view) is a bar split
 * into healthy, unhealthy and pending shares.
 */
import {
  BatchStatus,
  MachineGateState,
  type Rollout,
  type RolloutBatch,
} from "../../gen/nixfleet/v1/fleet_pb.js";
import { enumLabel } from "../format.js";
import { batchTone, gateTone } from "../tones.js";

/** Above this many machines a batch is drawn as a bar, not one cell each. */
const MAX_CELLS = 60;

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
          {compact || b.machines.length > MAX_CELLS ? <Bar b={b} /> : <Cells b={b} />}
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

function Cells({ b }: { b: RolloutBatch }) {
  return (
    <div class="cells">
      {b.machines.map((m) => (
        <span
          key={m.machineId}
          class={`cell cell-${b.status === BatchStatus.PENDING ? "muted" : gateTone(m.state)}`}
          title={`${m.machineId}: ${enumLabel(MachineGateState, m.state)}${m.reason ? ` — ${m.reason}` : ""}`}
        >
          {m.machineId}
        </span>
      ))}
    </div>
  );
}

/** Shares as segments of a fixed-width bar: widths come from a class per 5 %, no inline styles (CSP). */
function Bar({ b }: { b: RolloutBatch }) {
  const n = Math.max(1, b.machines.length);
  const started = b.status !== BatchStatus.PENDING;
  const parts: [string, number][] = started
    ? [
        ["good", b.healthy],
        ["bad", b.unhealthy],
        ["busy", b.pending],
      ]
    : [["muted", n]];
  return (
    <div class="bar-track">
      {parts
        .filter(([, count]) => count > 0)
        .map(([tone, count]) => (
          <span key={tone} class={`bar-seg cell-${tone} w${Math.max(1, Math.round((count / n) * 20)) * 5}`} />
        ))}
    </div>
  );
}
