/**
 * Paces the rollout evaluations that agent evidence asks for. Every report from a machine in a
 * running rollout may let its batch's gate decide, but an evaluation re-reads the whole batch
 * (its machines and their evidence), so one per report makes a fleet's reports cost
 * O(batch size) each and keeps the executor busy back to back. Instead a report marks its
 * rollout for evaluation: the first mark schedules one, and every mark until it starts joins it;
 * a mark while it runs schedules the next (the running one may have read the evidence before).
 * The wait is at least `minDelayMs` and twice as long as that rollout's last evaluation took,
 * so evaluations take at most about a third of the process however large the batch; the
 * executor's own tick still evaluates every running rollout regardless.
 */
import { performance } from "node:perf_hooks";

export interface EvaluationPacerOptions {
  /** Runs one evaluation of the rollout; resolves when it has run. */
  evaluate: (rolloutId: string) => Promise<void>;
  minDelayMs: number;
}

interface State {
  timer: NodeJS.Timeout | null;
  running: boolean;
  again: boolean;
}

/** Rollouts whose last evaluation time is remembered; more are forgotten oldest first. */
const MAX_REMEMBERED = 1000;

export class EvaluationPacer {
  private readonly states = new Map<string, State>();
  private readonly lastDurationMs = new Map<string, number>();
  private stopped = false;

  constructor(private readonly o: EvaluationPacerOptions) {}

  /** Asks for an evaluation of the rollout soon (coalesced with any already asked for). */
  request(rolloutId: string): void {
    if (this.stopped) return;
    const state = this.states.get(rolloutId);
    if (state?.timer) return;
    if (state?.running) {
      state.again = true;
      return;
    }
    const delay = Math.max(this.o.minDelayMs, 2 * (this.lastDurationMs.get(rolloutId) ?? 0));
    const next: State = { timer: null, running: false, again: false };
    next.timer = setTimeout(() => this.run(rolloutId, next), delay);
    next.timer.unref();
    this.states.set(rolloutId, next);
  }

  /** Drops scheduled evaluations (shutdown). */
  stop(): void {
    this.stopped = true;
    for (const s of this.states.values()) if (s.timer) clearTimeout(s.timer);
    this.states.clear();
  }

  private run(rolloutId: string, state: State): void {
    state.timer = null;
    state.running = true;
    const started = performance.now();
    // The executor logs its own failures; one not running (start-up, shutdown) is caught up by
    // its tick once it runs.
    void Promise.resolve()
      .then(() => this.o.evaluate(rolloutId))
      .catch(() => {})
      .finally(() => {
        this.lastDurationMs.delete(rolloutId);
        this.lastDurationMs.set(rolloutId, performance.now() - started);
        if (this.lastDurationMs.size > MAX_REMEMBERED)
          this.lastDurationMs.delete(this.lastDurationMs.keys().next().value!);
        this.states.delete(rolloutId);
        if (state.again) this.request(rolloutId);
      });
  }
}
