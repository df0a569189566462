/**
 * "Something about machine X changed, and why": the in-process publisher WatchFleet is fed from.
 * Publishers call it right after their change is committed (report and health intake, operator
 * RPCs, the rollout notifier, the push hub's attach/detach); it carries no machine state, so the
 * feed reads the machine afterwards and never shows a state older than the change.
 *
 * Several control planes on one PostgreSQL database: every local `publish` also goes to the
 * relay (the cluster bus, which coalesces and announces it to the other replicas), and what the
 * other replicas announce comes back through `publishRemote`, which reaches the local listeners
 * only — a relayed change is never relayed again.
 */
import type { RolloutChange } from "../store/repository.js";

/** Every kind, once: the cluster messages validate relayed changes against it. */
export const FLEET_CHANGE_KINDS = [
  "registered",
  "report",
  "health",
  "desired",
  "connected",
  "disconnected",
  "stale",
  "fresh",
  "lifecycle",
  "rollout",
] as const;

export type FleetChangeKind = (typeof FLEET_CHANGE_KINDS)[number];

export type FleetChangeListener = (machineId: string, kind: FleetChangeKind) => void;

/** Rollout events after which machines joined or left an active rollout. */
const MEMBERSHIP_EVENTS = new Set(["created", "completed", "failed", "cancelled"]);

export class FleetChanges {
  private readonly listeners = new Set<FleetChangeListener>();
  /** Sends local changes to the other replicas; null with one replica (SQLite). */
  private relay: FleetChangeListener | null = null;

  /** A change made on this replica: its watchers, and the other replicas' through the relay. */
  publish(machineId: string, kind: FleetChangeKind): void {
    for (const listener of this.listeners) listener(machineId, kind);
    this.relay?.(machineId, kind);
  }

  /** A change another replica made (and relayed): this replica's watchers only. */
  publishRemote(machineId: string, kind: FleetChangeKind): void {
    for (const listener of this.listeners) listener(machineId, kind);
  }

  /** Set once at start-up when other replicas may be watching. */
  relayTo(relay: FleetChangeListener): void {
    this.relay = relay;
  }

  /** What a rollout change means per machine: new desired generations, rollout membership. */
  rolloutApplied(change: RolloutChange): void {
    // Nobody watches here and no other replica to tell: skip the per-machine walk.
    if (this.listeners.size === 0 && !this.relay) return;
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
