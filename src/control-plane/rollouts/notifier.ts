/**
 * What happens after a rollout changed in the store, whoever changed it (executor or operator)
 * and on whichever replica: push the desired generations it wrote, wake WatchRollout streams, log
 * and count the events, and send polling agents back to their own interval when the rollout is
 * over. Pushes and wake-ups go through the cluster bus, so the replicas holding the agents' and
 * watchers' streams act on them; logs and counts stay with the replica that made the change.
 */
import type { Logger } from "../../common/logger.js";
import { announcementEvents, rolloutChangeEvents, type ScopedEvent } from "../cluster/announcements.js";
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

export class RolloutNotifier {
  constructor(private readonly o: RolloutNotifierOptions) {}

  /** One machine's desired generation was set or cleared by an operator. */
  desiredChanged(change: DesiredChange): void {
    this.publish(announcementEvents({ kind: "desired", change }, this.o.pollHintSeconds));
  }

  /**
   * The gate recorded machines turning healthy or unhealthy: log them and wake the rollout's
   * watchers. (Nothing else follows from gate events: no pushes, no status, no membership.)
   */
  gateRecorded(rolloutId: string, events: readonly RolloutEventRecord[]): void {
    this.log(events);
    this.publish(announcementEvents({ kind: "events", rolloutId, events }, this.o.pollHintSeconds));
  }

  applied(change: RolloutChange | null): void {
    if (!change) return;
    this.log(change.events);
    this.publish(rolloutChangeEvents(change, this.o.pollHintSeconds));
    this.o.onApplied?.(change);
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

  /**
   * When the store announced the change to the other replicas in its transaction, only this
   * replica is left to tell; otherwise (one replica; a store without announcements) the bus
   * tells everyone now.
   */
  private publish(events: readonly ScopedEvent[]): void {
    const told = this.o.bus.announcesInTransaction;
    for (const { event, scope } of events) {
      if (!told) this.o.bus.publish(event, scope);
      else if (scope === "all") this.o.bus.publish(event, "here");
    }
  }
}
