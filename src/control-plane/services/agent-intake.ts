/**
 * What the control plane does with agent contact, whichever transport it came over (unary
 * gRPC/Connect, the Session stream, or the v0.1 REST routes): store it, register the machine if
 * new, and let the executor look at the machine's rollout at once.
 */
import type { Logger } from "../../common/logger.js";
import { HealthCheckKindSchema, OutcomeSchema } from "../../gen/nixfleet/v1/types_pb.js";
import type { Clock } from "../clock.js";
import { healthCheckKindName, isKnownEnumValue, outcomeName } from "../enum-names.js";
import type {
  AgentContactResult,
  DesiredRecord,
  HealthInput,
  HelloInput,
  ReportInput,
} from "../store/records.js";
import type { FleetStore } from "../store/repository.js";
import { EvaluationPacer } from "./evaluation-pacer.js";
import type { FleetChangeKind, FleetChanges } from "./fleet-changes.js";
import type { Presence } from "./presence.js";

export interface AgentIntakeOptions {
  store: () => FleetStore;
  clock: Clock;
  /**
   * Asks for an evaluation of a rollout now; resolves when this replica's executor has run it (a
   * no-op on a follower). With several replicas it also reaches the others' executors (the
   * cluster bus): the report may have arrived anywhere, the leader decides.
   */
  kick: (rolloutId: string) => Promise<void>;
  presence: Presence;
  logger: Logger;
  pollHintSeconds: number;
  /** Told of every stored contact (WatchFleet). */
  fleetChanges?: FleetChanges;
  /** The least wait before a report's rollout is evaluated (evaluation-pacer.ts); default 100 ms. */
  evaluationDelayMs?: number;
}

const DEFAULT_EVALUATION_DELAY_MS = 100;

export interface DesiredAnswer {
  desired: DesiredRecord | null;
  /** Set while the machine is in an active rollout. */
  pollHintSeconds: number | undefined;
}

export class AgentIntake {
  /** Unknown enum values already warned about, so a fleet of newer agents logs each once. */
  private readonly warnedUnknown = new Set<string>();

  /** Coalesces the evaluations reports ask for: one per rollout per pacing interval. */
  private readonly pacer: EvaluationPacer;

  constructor(private readonly o: AgentIntakeOptions) {
    this.pacer = new EvaluationPacer({
      evaluate: (id) => this.o.kick(id),
      minDelayMs: o.evaluationDelayMs ?? DEFAULT_EVALUATION_DELAY_MS,
    });
  }

  async desired(machineId: string): Promise<DesiredAnswer> {
    this.o.presence.touch(machineId, this.o.clock.now());
    const { desired, inActiveRollout } = await this.o.store().desiredFor(machineId);
    return { desired, pollHintSeconds: inActiveRollout ? this.o.pollHintSeconds : undefined };
  }

  async hello(input: HelloInput): Promise<AgentContactResult> {
    this.o.presence.touch(input.machineId, this.o.clock.now());
    const result = await this.o.store().recordHello(input, this.o.clock.now());
    this.after(result, input.tags, "stream opened", "report");
    return result;
  }

  async report(input: ReportInput): Promise<AgentContactResult> {
    if (!isKnownEnumValue(OutcomeSchema, input.outcome))
      this.warnUnknown(input.machineId, `outcome ${outcomeName(input.outcome)}`);
    const result = await this.o.store().recordReport(input, this.o.clock.now());
    this.after(result, input.tags ?? [], "report", "report");
    return result;
  }

  async health(input: HealthInput): Promise<AgentContactResult> {
    for (const r of input.results)
      if (!isKnownEnumValue(HealthCheckKindSchema, r.kind))
        this.warnUnknown(input.machineId, `health check kind ${healthCheckKindName(r.kind)}`);
    const result = await this.o.store().recordHealth(input, this.o.clock.now());
    this.after(result, [], "health report", "health");
    return result;
  }

  heard(machineId: string): void {
    this.o.presence.touch(machineId, this.o.clock.now());
  }

  private warnUnknown(machineId: string, what: string): void {
    if (this.warnedUnknown.has(what)) return;
    this.warnedUnknown.add(what);
    this.o.logger.warn(
      { machineId },
      `stored ${what} from ${machineId}, which this control plane does not know: the agent is newer; upgrade the control plane (an unknown outcome counts as not healthy in rollout gates)`,
    );
  }

  /**
   * The one place every stored agent contact passes (WatchFleet is told here). `tags`: what the
   * contact said (a machine registered by it has exactly those).
   */
  private after(
    result: AgentContactResult,
    tags: readonly string[],
    what: string,
    kind: FleetChangeKind,
  ): void {
    const { machineId } = result;
    this.o.fleetChanges?.publish(machineId, result.registered ? "registered" : kind);
    if (result.registered) {
      this.o.logger.info(
        { machineId, tags: [...new Set(tags)].sort() },
        `machine registered on first contact (${what})`,
      );
    }
    // The gate may decide now: its rollout is evaluated soon (paced, not once per report).
    if (result.runningRolloutId !== null) this.pacer.request(result.runningRolloutId);
  }

  /** Drops evaluations not yet started (shutdown; the executor's tick catches up after a restart). */
  stop(): void {
    this.pacer.stop();
  }
}
