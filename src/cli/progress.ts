/**
 * How a rollout looks while it runs: pure functions from a Rollout snapshot (and its events) to
 * lines, plus a small live display that redraws them in place on a terminal.
 */
import { timestampMs } from "@bufbuild/protobuf/wkt";
import {
  BatchStatus,
  BatchStatusSchema,
  MachineGateState,
  MachineGateStateSchema,
  type Rollout,
  type RolloutEvent,
  RolloutEventType,
  RolloutStatus,
  RolloutStatusSchema,
  RolloutStrategySchema,
} from "../gen/nixfleet/v1/fleet_pb.js";
import { duration, enumWord } from "./output.js";

const MAX_MACHINES_LISTED = 12;

export function isTerminal(status: RolloutStatus): boolean {
  return (
    status === RolloutStatus.COMPLETED ||
    status === RolloutStatus.FAILED ||
    status === RolloutStatus.CANCELLED
  );
}

export function rolloutHeadline(r: Rollout): string {
  const total = r.batches.length;
  const current = Math.min(r.currentBatch + 1, total);
  const machines = r.batches.reduce((n, b) => n + b.machines.length, 0);
  return (
    `rollout ${r.id}  ${enumWord(RolloutStatusSchema, r.status).toUpperCase()}  ` +
    `${enumWord(RolloutStrategySchema, r.strategy)} · release ${r.releaseId} · ${machines} machine${machines === 1 ? "" : "s"} · batch ${current}/${total}`
  );
}

/** One line per batch, and the machines of the current batch when there are few. */
export function rolloutLines(r: Rollout, now = Date.now()): string[] {
  const lines = [rolloutHeadline(r)];
  for (const b of r.batches) {
    const status = enumWord(BatchStatusSchema, b.status);
    const started = b.startedAt ? timestampMs(b.startedAt) : undefined;
    const ended = b.completedAt ? timestampMs(b.completedAt) : undefined;
    const elapsed = started ? ` ${duration(Math.round(((ended ?? now) - started) / 1000))}` : "";
    const counts =
      b.status === BatchStatus.PENDING
        ? `${b.machines.length} waiting`
        : `${b.healthy} healthy · ${b.pending} pending · ${b.unhealthy} unhealthy`;
    lines.push(`  batch ${b.index + 1}/${r.batches.length}  ${status.padEnd(9)} ${counts}${elapsed}`);
    if (
      b.index === r.currentBatch &&
      b.machines.length <= MAX_MACHINES_LISTED &&
      b.status !== BatchStatus.PENDING
    ) {
      for (const m of b.machines) {
        const state = enumWord(MachineGateStateSchema, m.state);
        const mark =
          m.state === MachineGateState.HEALTHY ? "✓" : m.state === MachineGateState.UNHEALTHY ? "✗" : "…";
        lines.push(`    ${mark} ${m.machineId.padEnd(20)} ${state}${m.reason ? `: ${m.reason}` : ""}`);
      }
    }
  }
  if (r.statusReason) lines.push(`  ${r.statusReason}`);
  return lines;
}

function clock(e: RolloutEvent): string {
  return e.createdAt ? new Date(timestampMs(e.createdAt)).toISOString().slice(11, 19) : "--:--:--";
}

export function eventLine(e: RolloutEvent): string {
  const batch = e.batchIndex !== undefined ? `batch ${e.batchIndex + 1} ` : "";
  const who = e.machineId ? `${e.machineId} ` : "";
  const what: Record<number, string> = {
    [RolloutEventType.CREATED]: "rollout created",
    [RolloutEventType.BATCH_STARTED]: `${batch}started`,
    [RolloutEventType.MACHINE_HEALTHY]: `${who}healthy`,
    [RolloutEventType.MACHINE_UNHEALTHY]: `${who}UNHEALTHY`,
    [RolloutEventType.BATCH_SUCCEEDED]: `${batch}succeeded`,
    [RolloutEventType.BATCH_FAILED]: `${batch}FAILED`,
    [RolloutEventType.PAUSED]: "rollout PAUSED",
    [RolloutEventType.RESUMED]: "rollout resumed",
    [RolloutEventType.COMPLETED]: "rollout completed",
    [RolloutEventType.REVERTED]: `${who}reverted`,
    [RolloutEventType.FAILED]: "rollout FAILED",
    [RolloutEventType.CANCELLED]: "rollout cancelled",
  };
  const text = what[e.type] ?? "event";
  // Some control-plane messages already name their batch ("batch 2 of 2 started: web-02").
  if (/^batch \d/.test(e.message)) return `[${clock(e)}] ${e.message}`;
  return `[${clock(e)}] ${text}${e.message ? `: ${e.message}` : ""}`;
}

/** How following a rollout ends: exit code and what to tell the operator. */
export function finalVerdict(r: Rollout): { exitCode: number; lines: string[] } {
  const unhealthy = r.batches
    .flatMap((b) => b.machines)
    .filter((m) => m.state === MachineGateState.UNHEALTHY)
    .map((m) => `${m.machineId}${m.reason ? ` (${m.reason})` : ""}`);
  const why = r.statusReason || (unhealthy.length ? `unhealthy: ${unhealthy.join("; ")}` : "");
  switch (r.status) {
    case RolloutStatus.COMPLETED: {
      const n = r.batches.reduce((s, b) => s + b.machines.length, 0);
      return {
        exitCode: 0,
        lines: [
          `rollout ${r.id} completed: ${n} machine${n === 1 ? "" : "s"} healthy on release ${r.releaseId}`,
        ],
      };
    }
    case RolloutStatus.PAUSED:
      return {
        exitCode: 1,
        lines: [
          `rollout ${r.id} is PAUSED at batch ${r.currentBatch + 1}/${r.batches.length}${why ? `: ${why}` : ""}`,
          `fix the cause, then resume:  nixfleet rollout resume ${r.id} --wait`,
          `or give up and revert:       nixfleet rollout cancel ${r.id} --revert`,
        ],
      };
    case RolloutStatus.FAILED:
      return {
        exitCode: 1,
        lines: [
          `rollout ${r.id} FAILED at batch ${r.currentBatch + 1}/${r.batches.length}${why ? `: ${why}` : ""}`,
          "the machines it touched were given their previous generations back; see: nixfleet status",
        ],
      };
    case RolloutStatus.CANCELLED:
      return { exitCode: 1, lines: [`rollout ${r.id} was cancelled${why ? `: ${why}` : ""}`] };
    default:
      return { exitCode: 1, lines: [`rollout ${r.id} is ${enumWord(RolloutStatusSchema, r.status)}`] };
  }
}

/** Terminal cells a line takes: code points, without colour escapes (our lines have no wide characters). */
function cells(line: string): number {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: ANSI escapes are what we strip.
  return [...line.replace(/\x1b\[[0-9;]*m/g, "")].length;
}

/** How many terminal rows `line` occupies at `columns` wide: a long line wraps onto more. */
export function rowsOf(line: string, columns: number | undefined): number {
  if (!columns || columns <= 0) return 1;
  return Math.max(1, Math.ceil(cells(line) / columns));
}

/**
 * Redraws a block of lines in place (terminal) while log lines scroll above it. The cursor goes
 * up by the rows the last block occupied, counting the lines the terminal wrapped: counting
 * lines alone leaves a wrapped headline's first row behind on every redraw (at 80 columns the
 * ~130-character headline piled up one stale copy per second).
 */
export class LiveBlock {
  private drawn = 0;
  constructor(
    private readonly write: (s: string) => void,
    /** The terminal's width now (it can change between redraws); undefined: no wrapping. */
    private readonly columns: () => number | undefined = () => undefined,
  ) {}

  render(lines: string[], logs: string[] = []): void {
    let out = this.drawn > 0 ? `\x1b[${this.drawn}A\x1b[0J` : "";
    for (const l of logs) out += `${l}\n`;
    for (const l of lines) out += `${l}\n`;
    const width = this.columns();
    this.drawn = lines.reduce((n, l) => n + rowsOf(l, width), 0);
    this.write(out);
  }

  /** Leaves the last block on screen. */
  done(): void {
    this.drawn = 0;
  }
}
