/**
 * What happens after a rollout changed in the store, whoever changed it (executor or operator):
 * push the desired generations it wrote, wake WatchRollout streams, log and count the events,
 * and send polling agents back to their own interval when the rollout is over.
 */
import type { Logger } from "../../common/logger.js";
import type { PushHub } from "../push/hub.js";
import type { RolloutStatus } from "../store/records.js";
import type { RolloutChange } from "../store/repository.js";
import type { RolloutChanges } from "./rollout-events.js";

export interface RolloutNotifierOptions {
  hub: PushHub;
  changes: RolloutChanges;
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

  applied(change: RolloutChange | null): void {
    if (!change) return;
    const { rollout } = change;
    const active = rollout.status === "running" || rollout.status === "paused";
    for (const c of change.changes) this.o.hub.pushDesired(c, active ? this.o.pollHintSeconds : undefined);
    for (const e of change.events) {
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
    if (change.events.length) this.o.changes.publish(rollout.id);
    if (!active && change.events.some((e) => STATUS_EVENTS[e.type] && e.type !== "paused")) {
      const machines = rollout.batches.flatMap((b) => b.machines.map((m) => m.machineId));
      this.o.hub.pushPollHint(machines, 0);
    }
    this.o.onApplied?.(change);
  }
}
