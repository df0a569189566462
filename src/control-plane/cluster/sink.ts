/**
 * What this replica does with a cluster event, whichever replica published it: push to the
 * streams it holds (the hub ignores machines whose stream is elsewhere), wake its WatchRollout
 * streams, kick its executor (a no-op where this replica is not the executor's leader), tell its
 * WatchFleet streams of machines changed elsewhere.
 */
import type { Logger } from "../../common/logger.js";
import type { PushHub } from "../push/hub.js";
import type { RolloutChanges } from "../rollouts/rollout-events.js";
import type { FleetChanges } from "../services/fleet-changes.js";
import type { DesiredChange } from "../store/records.js";
import type { FleetStore } from "../store/repository.js";
import type { ClusterSink } from "./bus.js";
import type { FleetChange } from "./messages.js";

export interface ReplicaSinkOptions {
  hub: PushHub;
  changes: RolloutChanges;
  kick: (rolloutId: string) => void;
  fleetChanges: FleetChanges;
  store: () => FleetStore;
  /** Machines whose stream this replica may hold (checked against the hub at resync). */
  candidates: () => Iterable<string>;
  pollHintSeconds: number;
  logger: Logger;
}

/** Stores read at once while re-sending desired generations after a lost connection. */
const RESYNC_CONCURRENCY = 8;

export class ReplicaSink implements ClusterSink {
  private resyncing: Promise<void> | null = null;

  constructor(private readonly o: ReplicaSinkOptions) {}

  desired(change: DesiredChange, pollHintSeconds: number | undefined): void {
    this.o.hub.pushDesired(change, pollHintSeconds);
  }

  pollHint(machineIds: readonly string[], seconds: number): void {
    this.o.hub.pushPollHint(machineIds, seconds);
  }

  rolloutChanged(rolloutId: string): void {
    this.o.changes.publish(rolloutId);
  }

  kick(rolloutId: string): void {
    this.o.kick(rolloutId);
  }

  fleetChanged(changes: readonly FleetChange[]): void {
    // publishRemote, not publish: a relayed change must not be relayed back.
    for (const c of changes) this.o.fleetChanges.publishRemote(c.machineId, c.kind);
  }

  resync(): void {
    this.resyncing ??= this.resend().finally(() => {
      this.resyncing = null;
    });
  }

  /** Resolves when a resync in progress (if any) finished; for tests and shutdown. */
  async settled(): Promise<void> {
    await this.resyncing;
  }

  private async resend(): Promise<void> {
    const held = [...this.o.candidates()].filter((id) => this.o.hub.isConnected(id));
    let next = 0;
    let failed = 0;
    const worker = async () => {
      while (next < held.length) {
        const machineId = held[next++]!;
        try {
          const { desired, inActiveRollout } = await this.o.store().desiredFor(machineId);
          this.o.hub.pushDesired(
            { machineId, desired },
            inActiveRollout ? this.o.pollHintSeconds : undefined,
          );
        } catch {
          failed++;
        }
      }
    };
    await Promise.all(Array.from({ length: RESYNC_CONCURRENCY }, worker));
    this.o.logger.info(
      { machines: held.length, failed },
      failed
        ? "re-sent desired generations after a lost connection; some could not be read (those agents get them on their next poll)"
        : "re-sent desired generations after a lost connection",
    );
  }
}
