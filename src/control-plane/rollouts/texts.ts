/**
 * The texts of rollout events and their audit entries: what `nixfleet rollout watch`, the
 * dashboard and the audit log show. Kept out of the store so every backend writes the same words.
 */

/** "a, b, c" — at most `max` names, then "and N more". */
export function summarize(ids: readonly string[], max = 10): string {
  return ids.length <= max ? ids.join(", ") : `${ids.slice(0, max).join(", ")} and ${ids.length - max} more`;
}

function plural(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}

export function created(input: {
  batches: readonly (readonly unknown[])[];
  strategy: string;
  failureThreshold: string;
  onFailure: string;
  note: string;
}): string {
  const machines = input.batches.reduce((n, b) => n + b.length, 0);
  const sizes = input.batches.map((b) => b.length).join("+");
  return (
    `${plural(machines, "machine")} in ${plural(input.batches.length, "batch", "batches")} (${sizes}), ` +
    `strategy ${input.strategy}, failure threshold ${input.failureThreshold}, on failure ${input.onFailure}` +
    (input.note ? `; ${input.note}` : "")
  );
}

export function createdAudit(releaseId: string, message: string): string {
  return `release ${releaseId}: ${message}`;
}

/** A batch (re)started: `again` when it had started before (a resume). */
export function batchStarted(
  index: number,
  total: number,
  again: boolean,
  machineIds: readonly string[],
): string {
  return `batch ${index + 1} of ${total} ${again ? "started again" : "started"}: ${summarize(machineIds)}`;
}

export function batchFailedReason(index: number, verdict: string): string {
  return `batch ${index + 1} failed its health gate: ${verdict}`;
}

export function completedReason(): string {
  return "every batch passed its health gate";
}

export function resumeDetail(currentBatch: number): string {
  return `batch ${currentBatch + 1} will be deployed again`;
}

export function reverted(assignments: readonly { machineId: string; previous: unknown }[]): string {
  const cleared = assignments.filter((a) => a.previous === null).length;
  const restored = assignments.length - cleared;
  return (
    `restored the previous desired generation of ${plural(restored, "machine")}` +
    (cleared ? `, cleared ${cleared} that had none` : "") +
    (assignments.length ? `: ${summarize(assignments.map((a) => a.machineId))}` : "")
  );
}
