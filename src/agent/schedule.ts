/**
 * When the next cycle runs and when a dropped stream reconnects. Pure: the caller passes the
 * random source, so the rules are table-tested.
 *
 * - After a cycle, the next one is measured from *now* (never a tight re-tick loop): a failed
 *   cycle waits retryInterval; a good one waits poll_hint if the control plane gave one, else
 *   pollInterval. ±10 % jitter keeps a fleet from polling in lockstep.
 * - Reconnects back off exponentially with "equal jitter" (half fixed, half random), so a control
 *   plane restart is not answered by 10,000 simultaneous TLS handshakes.
 */

export type Random = () => number;

export type CycleVerdict = "ok" | "failed";

export interface ScheduleInput {
  verdict: CycleVerdict;
  /** From the last GetDesiredGeneration response or a push; 0/undefined = none. */
  pollHintSeconds?: number | undefined;
  pollIntervalSeconds: number;
  retryIntervalSeconds: number;
}

export const POLL_JITTER = 0.1;
/** Never schedule sooner than this, whatever the configuration says. */
export const MIN_DELAY_MS = 50;

export function jittered(ms: number, fraction: number, random: Random): number {
  const factor = 1 - fraction + 2 * fraction * random();
  return Math.max(MIN_DELAY_MS, Math.round(ms * factor));
}

/** The base period (before jitter) of the next cycle, in seconds. */
export function nextCyclePeriodSeconds(input: ScheduleInput): number {
  if (input.verdict === "failed") return input.retryIntervalSeconds;
  if (input.pollHintSeconds !== undefined && input.pollHintSeconds > 0) return input.pollHintSeconds;
  return input.pollIntervalSeconds;
}

export function nextCycleDelayMs(input: ScheduleInput, random: Random = Math.random): number {
  return jittered(nextCyclePeriodSeconds(input) * 1000, POLL_JITTER, random);
}

export interface BackoffOptions {
  baseMs: number;
  maxMs: number;
}

export const DEFAULT_RECONNECT: BackoffOptions = { baseMs: 1000, maxMs: 60_000 };

/** Delay before reconnect attempt `attempt` (0 = the first retry). */
export function reconnectDelayMs(
  attempt: number,
  options: BackoffOptions,
  random: Random = Math.random,
): number {
  const ceiling = Math.min(options.maxMs, options.baseMs * 2 ** Math.min(attempt, 30));
  return Math.max(MIN_DELAY_MS, Math.round(ceiling / 2 + (ceiling / 2) * random()));
}
