/**
 * Which cluster events a stored change causes — one pure function, used both by the notifier
 * (after the commit, for this replica) and by the store's in-transaction announcement to the
 * other replicas (../store/announce.ts), so the two never disagree.
 */
import type { Announcement } from "../store/announce.js";
import type { RolloutChange } from "../store/repository.js";
import type { ClusterEvent, Scope } from "./bus.js";

export interface ScopedEvent {
  event: ClusterEvent;
  /** "all": this replica and the others; "others": only the others. */
  scope: Extract<Scope, "all" | "others">;
}

/** Events after which a rollout is running and waits for the executor (wherever it runs). */
const NEEDS_EXECUTOR = new Set(["created", "resumed"]);
/** Events that end a rollout: its agents go back to their own polling interval. */
const ENDS_ROLLOUT = new Set(["completed", "failed", "cancelled"]);

export function rolloutChangeEvents(change: RolloutChange, pollHintSeconds: number): ScopedEvent[] {
  const { rollout } = change;
  const active = rollout.status === "running" || rollout.status === "paused";
  const out: ScopedEvent[] = [];
  if (change.changes.length)
    out.push({
      event: {
        kind: "desired",
        changes: change.changes,
        pollHintSeconds: active ? pollHintSeconds : undefined,
      },
      scope: "all",
    });
  if (change.events.length) out.push({ event: { kind: "rollout", rolloutId: rollout.id }, scope: "all" });
  // The operator's replica kicks its own executor; the others' (the leader's, if elsewhere)
  // learn of the new or resumed rollout here rather than at their next tick.
  if (rollout.status === "running" && change.events.some((e) => NEEDS_EXECUTOR.has(e.type)))
    out.push({ event: { kind: "kick", rolloutIds: [rollout.id] }, scope: "others" });
  if (!active && change.events.some((e) => ENDS_ROLLOUT.has(e.type))) {
    const machineIds = rollout.batches.flatMap((b) => b.machines.map((m) => m.machineId));
    out.push({ event: { kind: "poll-hint", machineIds, seconds: 0 }, scope: "all" });
  }
  return out;
}

export function announcementEvents(what: Announcement, pollHintSeconds: number): ScopedEvent[] {
  switch (what.kind) {
    case "desired":
      return [
        { event: { kind: "desired", changes: [what.change], pollHintSeconds: undefined }, scope: "all" },
      ];
    case "rollout":
      return rolloutChangeEvents(what.change, pollHintSeconds);
    case "events":
      return what.events.length
        ? [{ event: { kind: "rollout", rolloutId: what.rolloutId }, scope: "all" }]
        : [];
  }
}
