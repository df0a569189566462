/**
 * Presence shared by the replicas of one PostgreSQL database: which replica holds each machine's
 * stream and when the machine was last heard, so GetFleetStatus and GetMachine on any replica
 * show a machine connected to another one as connected and fresh.
 *
 * Not one write per heartbeat: every `flushMs` each replica writes, in one statement, the
 * machines heard since its last flush and those whose stream it lost, stamps its own row in
 * `cluster_replicas` with the database's clock, and reads the whole table back into memory
 * (answers stay synchronous and cost no query). A replica whose row is older than `expireMs` by
 * the database's clock is dead (SIGKILL, partition): its machines no longer count as connected.
 *
 * A write never takes a machine away from the replica holding its stream: only the holder
 * marks it disconnected; a poll seen elsewhere only moves last_heard forward.
 */
import type pg from "pg";
import type { Logger } from "../../common/logger.js";
import type { Clock } from "../clock.js";
import type { PushHub } from "../push/hub.js";
import type { Presence } from "../services/presence.js";

export interface SharedPresenceOptions {
  /** The store's pool (BIGINT columns read as numbers). */
  pool: pg.Pool;
  replicaId: string;
  /** Where this replica listens, for an operator reading cluster_replicas. */
  url: string;
  local: Presence;
  hub: Pick<PushHub, "isConnected" | "lastHeard">;
  clock: Clock;
  logger: Logger;
  flushMs?: number;
  expireMs?: number;
  /**
   * A machine's stream opened or closed on another replica (or that replica expired), as this
   * replica's view learned it; not called for machines whose stream this replica holds (the hub
   * tells of those). WatchFleet's CONNECTED/DISCONNECTED for other replicas' streams come from
   * here, so the state a watcher reads agrees with the change.
   */
  onElsewhere?: (machineId: string, connected: boolean) => void;
}

interface Entry {
  replicaId: string;
  /** Connected to a replica that is alive. */
  live: boolean;
  lastHeard: number;
}

const DB_NOW = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";
/** Rows of replicas gone this long are deleted (their presence rows stay: last heard is history). */
const FORGET_REPLICA_MS = 24 * 3600_000;

export const DEFAULT_PRESENCE_FLUSH_MS = 2_000;

export class SharedPresence {
  private view = new Map<string, Entry>();
  /** Machines this replica last wrote as connected. */
  private readonly held = new Set<string>();
  /** Heard but not yet attached (a hello precedes the hub's attach): written next time. */
  private deferred: string[] = [];
  private timer: NodeJS.Timeout | null = null;
  private flushing: Promise<void> | null = null;
  private failing = false;
  private flushes = 0;
  private readonly flushMs: number;
  private readonly expireMs: number;
  private readonly startedAt: number;

  constructor(private readonly o: SharedPresenceOptions) {
    this.flushMs = o.flushMs ?? DEFAULT_PRESENCE_FLUSH_MS;
    this.expireMs = o.expireMs ?? Math.max(15_000, 5 * this.flushMs);
    this.startedAt = o.clock.now();
    o.local.trackChanges();
  }

  async start(): Promise<void> {
    await this.flush();
    this.timer = setInterval(() => void this.flush(), this.flushMs);
    this.timer.unref();
  }

  /** Stops flushing and hands this replica's machines over: none of them is connected here now. */
  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.flushing;
    try {
      await this.o.pool.query(
        "UPDATE cluster_presence SET connected = false WHERE replica_id = $1 AND connected",
        [this.o.replicaId],
      );
      await this.o.pool.query("DELETE FROM cluster_replicas WHERE id = $1", [this.o.replicaId]);
    } catch (err) {
      this.o.logger.warn({ err }, "could not clear this replica's presence; it expires on its own");
    }
  }

  /** Connected to another live replica (this replica's own streams are the hub's to tell). */
  connectedElsewhere(machineId: string): boolean {
    const e = this.view.get(machineId);
    return e?.live === true && e.replicaId !== this.o.replicaId;
  }

  lastHeard(machineId: string): number | null {
    return this.view.get(machineId)?.lastHeard ?? null;
  }

  /** Resolves after a flush that started after this call (what is in the table now is read). */
  async refresh(): Promise<void> {
    await this.flushing;
    await this.flush();
  }

  /** Writes what changed here and reads everyone's; one at a time. */
  flush(): Promise<void> {
    this.flushing ??= this.doFlush().finally(() => {
      this.flushing = null;
    });
    return this.flushing;
  }

  private tellElsewhere(previous: Map<string, Entry>): void {
    const tell = this.o.onElsewhere;
    if (!tell) return;
    const elsewhere = (m: Map<string, Entry>, id: string) => {
      const e = m.get(id);
      return e?.live === true && e.replicaId !== this.o.replicaId;
    };
    const ids = new Set<string>();
    for (const [id, e] of this.view)
      if (e.live !== previous.get(id)?.live || e.replicaId !== previous.get(id)?.replicaId) ids.add(id);
    for (const id of previous.keys()) if (!this.view.has(id)) ids.add(id);
    for (const id of ids) {
      const now = elsewhere(this.view, id);
      if (now !== elsewhere(previous, id) && !this.o.hub.isConnected(id)) tell(id, now);
    }
  }

  private changedRows(now: number) {
    const { local, hub } = this.o;
    const ids = new Set([...this.deferred, ...local.takeChanged()]);
    this.deferred = [];
    for (const id of this.held) if (!hub.isConnected(id)) ids.add(id);
    const rows = { ids: [] as string[], connected: [] as boolean[], heard: [] as number[] };
    for (const id of ids) {
      const connected = hub.isConnected(id);
      const heard = Math.max(local.get(id) ?? 0, hub.lastHeard(id) ?? 0) || now;
      if (!connected && !this.held.has(id) && now - heard < this.flushMs / 2) {
        this.deferred.push(id);
        continue;
      }
      rows.ids.push(id);
      rows.connected.push(connected);
      rows.heard.push(heard);
      if (connected) this.held.add(id);
      else this.held.delete(id);
    }
    return rows;
  }

  private async doFlush(): Promise<void> {
    const { pool, replicaId } = this.o;
    const rows = this.changedRows(this.o.clock.now());
    try {
      await pool.query(
        `INSERT INTO cluster_replicas (id, url, started_at, seen_at) VALUES ($1, $2, $3, ${DB_NOW})
         ON CONFLICT (id) DO UPDATE SET seen_at = EXCLUDED.seen_at, url = EXCLUDED.url`,
        [replicaId, this.o.url, this.startedAt],
      );
      if (rows.ids.length) {
        await pool.query(
          `INSERT INTO cluster_presence AS p (machine_id, replica_id, connected, last_heard)
           SELECT m, $1, c, h FROM unnest($2::text[], $3::boolean[], $4::bigint[]) AS u(m, c, h)
           ON CONFLICT (machine_id) DO UPDATE SET
             replica_id = CASE WHEN EXCLUDED.connected THEN EXCLUDED.replica_id ELSE p.replica_id END,
             connected = CASE WHEN EXCLUDED.connected THEN true
                              WHEN p.replica_id = EXCLUDED.replica_id THEN false
                              ELSE p.connected END,
             last_heard = GREATEST(p.last_heard, EXCLUDED.last_heard)`,
          [replicaId, rows.ids, rows.connected, rows.heard],
        );
      }
      const result = await pool.query<{
        machine_id: string;
        replica_id: string;
        live: boolean;
        last_heard: number;
      }>(
        `SELECT p.machine_id, p.replica_id, p.last_heard,
                p.connected AND coalesce(r.seen_at > ${DB_NOW} - $1, false) AS live
         FROM cluster_presence p LEFT JOIN cluster_replicas r ON r.id = p.replica_id`,
        [this.expireMs],
      );
      const view = new Map<string, Entry>();
      for (const r of result.rows)
        view.set(r.machine_id, { replicaId: r.replica_id, live: r.live, lastHeard: Number(r.last_heard) });
      const previous = this.view;
      this.view = view;
      // A listener's failure is not a failure to write presence (which would re-send the rows).
      try {
        this.tellElsewhere(previous);
      } catch (err) {
        this.o.logger.error({ err }, "telling WatchFleet of other replicas' streams failed");
      }
      if (++this.flushes % 1000 === 0) {
        await pool.query(`DELETE FROM cluster_replicas WHERE seen_at < ${DB_NOW} - $1`, [FORGET_REPLICA_MS]);
      }
      if (this.failing) this.o.logger.info("shared presence is written again");
      this.failing = false;
    } catch (err) {
      // What was not written is written next time: heard-times only move forward.
      for (const id of rows.ids) this.deferred.push(id);
      if (!this.failing) this.o.logger.warn({ err }, "could not write shared presence; retrying");
      this.failing = true;
    }
  }
}
