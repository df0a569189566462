/**
 * The cluster bus: how one replica's changes reach the others. A change is delivered to this
 * replica at once (a direct call) and, when there are other replicas, announced to them too;
 * each receiver acts on its own share — it pushes to the agents whose streams it holds, wakes
 * its own WatchRollout streams, kicks its own executor.
 *
 * Two implementations, chosen at start-up: `InProcessBus` for the embedded SQLite store (one
 * replica: exactly the direct calls of a single process, nothing serialized) and `PostgresBus`
 * (pg-bus.ts) for replicas sharing one PostgreSQL database.
 */
import type { DesiredChange } from "../store/records.js";
import type { ClusterEvent, FleetChange } from "./messages.js";

export type { ClusterEvent } from "./messages.js";

/** What a replica does with an event, whichever replica it came from. */
export interface ClusterSink {
  desired(change: DesiredChange, pollHintSeconds: number | undefined): void;
  pollHint(machineIds: readonly string[], seconds: number): void;
  rolloutChanged(rolloutId: string): void;
  kick(rolloutId: string): void;
  /** Machines changed on another replica: tell this replica's WatchFleet streams. */
  fleetChanged(changes: readonly FleetChange[]): void;
  /**
   * The bus may have missed events (its connection to the other replicas was lost and is back):
   * send the agents held here their desired generations again.
   */
  resync(): void;
}

/**
 * "all": here and on every other replica; "others": only the other replicas; "here": only this
 * replica (the others were told by the store, in the writing transaction).
 */
export type Scope = "all" | "others" | "here";

export interface ClusterBus {
  /** Names this replica in messages and in shared presence. */
  readonly replicaId: string;
  /**
   * True once the store announces desired-generation and rollout changes to the other replicas
   * inside the writing transaction (PostgreSQL, ../store/announce.ts): the notifier then delivers
   * those events here only.
   */
  readonly announcesInTransaction: boolean;
  publish(event: ClusterEvent, scope?: Scope): void;
  start(): Promise<void>;
  /** Sends what is still queued, then disconnects. */
  stop(): Promise<void>;
}

/** Hands an event to the sink of this replica. */
export function deliver(sink: ClusterSink, event: ClusterEvent): void {
  switch (event.kind) {
    case "desired":
      for (const c of event.changes) sink.desired(c, event.pollHintSeconds);
      return;
    case "poll-hint":
      sink.pollHint(event.machineIds, event.seconds);
      return;
    case "rollout":
      sink.rolloutChanged(event.rolloutId);
      return;
    case "kick":
      for (const id of event.rolloutIds) sink.kick(id);
      return;
    case "fleet":
      sink.fleetChanged(event.changes);
      return;
  }
}

/**
 * One replica: every event is a direct call on this process's sink. Nothing relays fleet changes
 * to it (there is nobody to relay them to), so it never sees one.
 */
export class InProcessBus implements ClusterBus {
  constructor(
    private readonly sink: ClusterSink,
    readonly replicaId = "local",
  ) {}

  readonly announcesInTransaction = false;

  publish(event: ClusterEvent, scope: Scope = "all"): void {
    if (scope !== "others") deliver(this.sink, event);
  }

  async start(): Promise<void> {}

  async stop(): Promise<void> {}
}
