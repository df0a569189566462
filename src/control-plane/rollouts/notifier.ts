/**
 * What happens after a rollout changed in the store, whoever changed it (executor or operator)
 * and on whichever replica: push the desired generations it wrote, wake WatchRollout streams, log
 * and count the events, and send polling agents back to their own interval when the rollout is
 * over. Pushes and wake-ups go through the cluster bus, so the replicas holding the agents' and
 * watchers' streams act on them; logs and counts stay with the replica that made the change.
 */
import type { Logger } from "../../common/logger.js";
import type { ClusterBus } from "../cluster/bus.js";
import type { DesiredChange, RolloutEventRecord, RolloutStatus } from "../store/records.js";
import type { RolloutChange } from "../store/repository.js";

export interface RolloutNotifierOptions {
  bus: ClusterBus;
  logger: Logger;
  pollHintSeconds: number;
  onStatus?: (status: RolloutStatus) => void;
  /** After the pushes: WatchFleet learns of the machines whose desired generation or rollout changed. */
  onApplied?: (change: RolloutChange) => void;
}

const STATUS_EVENTS: Partial<Record<string, RolloutStatus>> = {
  paused: "paused",
  completed: "completed",
  failed: "failed",
  cancelled: "cancelled",
};

/** Events after which a rollout is running and waits for the executor (wherever it runs). */
const NEEDS_EXECUTOR = new Set(["created", "resumed"]);

export class RolloutNotifier {
  constructor(private readonly o: RolloutNotifierOptions) {}

  /** One machine's desired generation was set or cleared by an operator. */
  desiredChanged(change: DesiredChange): void {
    this.o.bus.publish({ kind: "desired", changes: [change], pollHintSeconds: undefined });
  }

  /**
   * The gate recorded machines turning healthy or unhealthy: log them and wake the rollout's
   * watchers. (Nothing else follows from gate events: no pushes, no status, no membership.)
   */
  gateRecorded(rolloutId: string, events: readonly RolloutEventRecord[]): void {
    this.log(events);
    if (events.length) this.o.bus.publish({ kind: "rollout", rolloutId });
  }

  private log(events: readonly RolloutEventRecord[]): void {
    for (const e of events) {
      this.o.logger.info(
        {
          rolloutId: e.rolloutId,
          event: e.type,
          batch: e.batchIndex ?? undefined,
          machineId: e.machineId || undefined,
          actor: e.actor,
        },
        `rollout ${e.type}: ${e.message}`,
      );
      const status = STATUS_EVENTS[e.type];
      if (status) this.o.onStatus?.(status);
    }
  }

  applied(change: RolloutChange | null): void {
    if (!change) return;
    const { rollout } = change;
    const active = rollout.status === "running" || rollout.status === "paused";
    if (change.changes.length) {
      this.o.bus.publish({
        kind: "desired",
        changes: change.changes,
        pollHintSeconds: active ? this.o.pollHintSeconds : undefined,
      });
    }
    this.log(change.events);
    if (change.events.length) this.o.bus.publish({ kind: "rollout", rolloutId: rollout.id });
    // The operator's replica kicks its own executor; the others' (the leader's, if elsewhere)
    // learn of the new or resumed rollout here rather than at their next tick.
    if (rollout.status === "running" && change.events.some((e) => NEEDS_EXECUTOR.has(e.type)))
      this.o.bus.publish({ kind: "kick", rolloutIds: [rollout.id] }, "others");
    if (!active && change.events.some((e) => STATUS_EVENTS[e.type] && e.type !== "paused")) {
      const machines = rollout.batches.flatMap((b) => b.machines.map((m) => m.machineId));
      this.o.bus.publish({ kind: "poll-hint", machineIds: machines, seconds: 0 });
    }
    this.o.onApplied?.(change);
  }
}
