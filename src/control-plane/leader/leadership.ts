/**
 * Who runs the rollout executor in this process, and what operators see of it. On SQLite the
 * process is the only one the file admits, so it leads from the start, unfenced, with no lease
 * traffic (the single-process experience unchanged). On PostgreSQL a LeaseElection decides; the
 * executor leads only while it holds the lease, and a fenced write it had refused ends the term.
 */
import { randomUUID } from "node:crypto";
import { hostname } from "node:os";
import { Gauge, type Registry } from "prom-client";
import type { Logger } from "../../common/logger.js";
import type { Clock } from "../clock.js";
import type { RolloutExecutor } from "../rollouts/executor.js";
import type { BackendKind } from "../store/context.js";
import { LeaseElection, type LeaseStore } from "./election.js";

export interface LeadershipOptions {
  kind: BackendKind;
  store: LeaseStore;
  executor: RolloutExecutor;
  registry: Registry;
  logger: Logger;
  clock: Clock;
  /** Lease TTL; claims are made every third of it. */
  leaseMs: number;
}

/** A readable, unique-per-start id for the lease row (what operators see as the holder). */
export function newHolderId(): string {
  return `${hostname()}:${process.pid}:${randomUUID().slice(0, 8)}`;
}

export class ExecutorLeadership {
  private readonly election: LeaseElection | null;
  private readonly leaderGauge: Gauge;
  private readonly epochGauge: Gauge;

  constructor(private readonly o: LeadershipOptions) {
    const registers = [o.registry];
    this.leaderGauge = new Gauge({
      name: "nixfleet_control_plane_executor_leader",
      help: "1 while this replica runs the rollout executor (always on SQLite), else 0.",
      registers,
    });
    this.epochGauge = new Gauge({
      name: "nixfleet_control_plane_executor_epoch",
      help: "The executor lease epoch this replica leads with (0 while following, and on SQLite where nothing is fenced).",
      registers,
    });
    this.leaderGauge.set(0);
    this.epochGauge.set(0);
    this.election =
      o.kind === "postgres"
        ? new LeaseElection({
            store: o.store,
            holderId: newHolderId(),
            ttlMs: o.leaseMs,
            renewMs: Math.max(1, Math.floor(o.leaseMs / 3)),
            logger: o.logger,
            now: () => o.clock.now(),
            onLead: (epoch) => this.changed(epoch),
            onFollow: () => this.changed(null),
          })
        : null;
  }

  /** The epoch while leading on PostgreSQL; null otherwise. */
  get epoch(): number | null {
    return this.election?.epoch ?? null;
  }

  get leading(): boolean {
    return this.o.executor.leading;
  }

  /** The lease holder id of this process (PostgreSQL), for logs and tests. */
  get holderId(): string | null {
    return this.election?.holderId ?? null;
  }

  /** Handed to the executor: a write of `epoch` was refused by the fence. */
  fenced(epoch: number): void {
    this.election?.deposed(epoch);
    this.changed(null);
  }

  /**
   * Starts leading (SQLite) or claiming (PostgreSQL); resolves once the first claim is answered,
   * so a lone replica leads by the time it says "listening".
   */
  async start(): Promise<void> {
    if (!this.election) {
      this.o.executor.lead(null);
      this.leaderGauge.set(1);
      return;
    }
    await this.election.start();
  }

  /** Call after the executor stopped: gives the lease back so another replica takes over now. */
  async stop(): Promise<void> {
    await this.election?.stop();
  }

  private changed(epoch: number | null): void {
    if (epoch === null) this.o.executor.follow();
    else this.o.executor.lead(epoch);
    this.leaderGauge.set(epoch === null ? 0 : 1);
    this.epochGauge.set(epoch ?? 0);
  }
}
