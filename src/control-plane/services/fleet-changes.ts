/**
 * "Something about machine X changed, and why": the in-process publisher WatchFleet is fed from.
 * Publishers call it right after their change is committed (report and health intake, operator
 * RPCs, the rollout notifier, the push hub's attach/detach); it carries no machine state, so the
 * feed reads the machine afterwards and never shows a state older than the change.
 *
 * A cross-replica bus (several control planes on one PostgreSQL database) plugs in here: relay
 * what `subscribe` sees to the other replicas and `publish` what they send.
 */
import type { RolloutChange } from "../store/repository.js";

export type FleetChangeKind =
  | "registered"
  | "report"
  | "health"
  | "desired"
  | "connected"
  | "disconnected"
  | "stale"
  | "fresh"
  | "lifecycle"
  | "rollout";

export type FleetChangeListener = (machineId: string, kind: FleetChangeKind) => void;

/** Rollout events after which machines joined or left an active rollout. */
const MEMBERSHIP_EVENTS = new Set(["created", "completed", "failed", "cancelled"]);

export class FleetChanges {
  private readonly listeners = new Set<FleetChangeListener>();

  publish(machineId: string, kind: FleetChangeKind): void {
    for (const listener of this.listeners) listener(machineId, kind);
  }

  /** What a rollout change means per machine: new desired generations, rollout membership. */
  rolloutApplied(change: RolloutChange): void {
    if (this.listeners.size === 0) return;
    const desired = new Set<string>();
    for (const c of change.changes) {
      desired.add(c.machineId);
      this.publish(c.machineId, "desired");
    }
    if (!change.events.some((e) => MEMBERSHIP_EVENTS.has(e.type))) return;
    for (const batch of change.rollout.batches)
      for (const m of batch.machines) if (!desired.has(m.machineId)) this.publish(m.machineId, "rollout");
  }

  /** Calls `listener` on every change; returns the unsubscribe function. */
  subscribe(listener: FleetChangeListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
}
