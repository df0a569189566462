/**
 * This replica's place among the others: the bus (in-process for SQLite, LISTEN/NOTIFY for
 * PostgreSQL), what it does with events (the sink), and presence as the fleet views show it —
 * this replica's own streams and contacts, plus, on PostgreSQL, the other replicas' (shared
 * presence). One object so the control plane wires it in a few lines.
 */
import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import type { Logger } from "../../common/logger.js";
import type { Clock } from "../clock.js";
import type { PushHub } from "../push/hub.js";
import type { RolloutChanges } from "../rollouts/rollout-events.js";
import type { FleetChanges } from "../services/fleet-changes.js";
import type { Presence } from "../services/presence.js";
import { DatabaseStartupError } from "../store/database.js";
import { PostgresFleetStore } from "../store/postgres-store.js";
import type { FleetStore } from "../store/repository.js";
import { type ClusterBus, InProcessBus } from "./bus.js";
import { PostgresBus } from "./pg-bus.js";
import { SharedPresence } from "./shared-presence.js";
import { ReplicaSink } from "./sink.js";

export interface ClusterOptions {
  /** PostgreSQL: several replicas may share it. Null: the embedded SQLite store, one replica. */
  databaseUrl: string | null;
  hub: PushHub;
  changes: RolloutChanges;
  presence: Presence;
  /** WatchFleet's publisher: relayed to the other replicas, fed by theirs. */
  fleetChanges: FleetChanges;
  clock: Clock;
  logger: Logger;
  pollHintSeconds: number;
  store: () => FleetStore;
  /** This replica's executor's kick. */
  kick: (rolloutId: string) => void;
  /** How often shared presence is written and read (PostgreSQL). */
  presenceFlushMs?: number;
}

/** Unique per start, readable in logs and in cluster_replicas: host:pid:random, like the executor lease holder. */
export function newReplicaId(): string {
  return `${hostname()}:${process.pid}:${randomBytes(4).toString("hex")}`;
}

export class Cluster {
  readonly bus: ClusterBus;
  readonly sink: ReplicaSink;
  private shared: SharedPresence | null = null;

  constructor(private readonly o: ClusterOptions) {
    this.sink = new ReplicaSink({
      hub: o.hub,
      changes: o.changes,
      kick: o.kick,
      fleetChanges: o.fleetChanges,
      store: o.store,
      candidates: () => o.presence.ids(),
      pollHintSeconds: o.pollHintSeconds,
      logger: o.logger,
    });
    this.bus = o.databaseUrl
      ? new PostgresBus({ url: o.databaseUrl, sink: this.sink, logger: o.logger, replicaId: newReplicaId() })
      : new InProcessBus(this.sink);
    // Every local FleetChanges publication, whatever its source, leaves here once ("others":
    // this replica's watchers already had it). One replica (SQLite): nothing to relay. Streams
    // opening and closing are not relayed: the other replicas learn them from shared presence
    // (onElsewhere below), and a CONNECTED sent before their view shows it would contradict it.
    const bus = this.bus;
    if (bus instanceof PostgresBus)
      o.fleetChanges.relayTo((machineId, kind) => {
        if (kind === "connected" || kind === "disconnected") return;
        bus.publish({ kind: "fleet", changes: [{ machineId, kind }] }, "others");
      });
  }

  /** Connects the bus and starts shared presence; `url` is where this replica listens. */
  async start(store: FleetStore, url: string): Promise<void> {
    try {
      await this.bus.start();
    } catch (err) {
      throw new DatabaseStartupError(
        `cannot listen for other replicas' changes on the database: ${(err as Error).message}`,
      );
    }
    if (store instanceof PostgresFleetStore && this.bus instanceof PostgresBus) {
      // Before any write: desired generations and rollout changes reach the other replicas from
      // inside the transaction that writes them.
      store.announceWith(this.bus.storeAnnouncer(this.o.pollHintSeconds));
    }
    if (store instanceof PostgresFleetStore) {
      this.shared = new SharedPresence({
        pool: store.pool,
        replicaId: this.bus.replicaId,
        url,
        local: this.o.presence,
        hub: this.o.hub,
        clock: this.o.clock,
        logger: this.o.logger,
        ...(this.o.presenceFlushMs ? { flushMs: this.o.presenceFlushMs } : {}),
        onElsewhere: (machineId, connected) =>
          this.o.fleetChanges.publishRemote(machineId, connected ? "connected" : "disconnected"),
      });
      await this.shared.start();
      this.o.logger.info({ replicaId: this.bus.replicaId }, "joined the replicas of this database");
    }
  }

  /** Before the store closes: hands presence over and disconnects the bus. */
  async stop(): Promise<void> {
    await this.shared?.stop();
    await this.bus.stop();
  }

  /** Resolves once shared presence was written and read again (no-op with one replica). */
  async refreshPresence(): Promise<void> {
    await this.shared?.refresh();
  }

  /** The machine's stream is open here, or on another live replica. */
  connected(machineId: string): boolean {
    return this.o.hub.isConnected(machineId) || (this.shared?.connectedElsewhere(machineId) ?? false);
  }

  /** The newest contact any replica knows of that the machines table does not record. */
  lastHeard(machineId: string): number | null {
    const times = [
      this.o.presence.get(machineId),
      this.o.hub.lastHeard(machineId),
      this.shared?.lastHeard(machineId),
    ];
    let newest: number | null = null;
    for (const t of times) if (t != null && (newest === null || t > newest)) newest = t;
    return newest;
  }
}
