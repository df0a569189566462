/** One log line per phase transition and the phase-duration histogram, for one deployment. */
import type { Logger } from "../../common/logger.js";
import type { FinalOutcome, Phase } from "../journal/journal.js";
import type { AgentMetrics, AgentState } from "../metrics.js";

const PHASE_STATE: Record<Exclude<Phase, "done">, AgentState> = {
  fetching: "fetching",
  applying: "applying",
  switching: "applying",
  verifying: "verifying",
  committing: "applying",
  rolling_back: "rolling_back",
};

export class PhaseLog {
  private phase: Phase | undefined;
  private since: number;
  private readonly started: number;

  constructor(
    private readonly log: Logger,
    private readonly metrics: AgentMetrics,
    private readonly now: () => number,
    private readonly who: { id: string; desired: string; previous: string | null },
  ) {
    this.since = now();
    this.started = this.since;
  }

  private close(at: number): number {
    const durationMs = at - this.since;
    if (this.phase && this.phase !== "done")
      this.metrics.phaseDuration.observe({ phase: this.phase }, durationMs / 1000);
    return durationMs;
  }

  enter(phase: Exclude<Phase, "done">, previous: string | null, error?: string): void {
    const at = this.now();
    const durationMs = this.close(at);
    this.log.info(
      {
        event: "phase",
        deploymentId: this.who.id,
        phase,
        from: this.phase ?? null,
        desired: this.who.desired,
        previous,
        durationMs,
        ...(error ? { error } : {}),
      },
      `deployment ${this.who.id}: ${this.phase ?? "start"} → ${phase}`,
    );
    this.phase = phase;
    this.since = at;
    this.metrics.setState(PHASE_STATE[phase]);
  }

  finish(
    outcome: FinalOutcome,
    previous: string | null,
    message: string,
    level: "info" | "warn" | "error",
  ): void {
    const at = this.now();
    const durationMs = this.close(at);
    this.log[level](
      {
        event: "deployment_finished",
        deploymentId: this.who.id,
        phase: "done",
        from: this.phase ?? null,
        outcome,
        desired: this.who.desired,
        previous,
        durationMs,
        totalMs: at - this.started,
        ...(level !== "info" ? { error: message } : { message }),
      },
      `deployment ${this.who.id}: ${outcome}`,
    );
    this.phase = "done";
  }
}
