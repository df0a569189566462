/**
 * The cluster bus over PostgreSQL LISTEN/NOTIFY, for replicas sharing one database.
 *
 * - Each replica holds one dedicated connection that LISTENs on the channel; when it is lost
 *   (database restart, failover, pg_terminate_backend, a probe that gets no answer) it is
 *   reconnected with jittered, capped back-off, and the sink is told to resync: notifications
 *   sent while nobody listened are gone, so the agents held here get their desired generations
 *   again from the store. WatchRollout streams and the executor also re-read on their own timers.
 * - Desired generations and rollout changes (the "desired", "rollout", "poll-hint" messages and
 *   the kick of a created or resumed rollout) are NOTIFYed by the store inside the transaction
 *   that writes them (storeAnnouncer, ../store/announce.ts): PostgreSQL delivers them on commit,
 *   in commit order, and drops them on rollback, so a replica dying between its commit and its
 *   announcement cannot lose a cross-replica push.
 * - What is published here (report kicks, WatchFleet's fleet changes, anything published before
 *   the store announces) leaves after the change committed, over a second, one-connection pool,
 *   in the order published. These are hints with their own safety net: the leader's executor
 *   evaluates every running rollout on its tick, and a WatchFleet view is re-read on the next
 *   change of the machine. A NOTIFY that fails is retried a few times, then logged.
 * - Kicks (one per agent report) are coalesced per rollout over a short window: a batch of 10,000
 *   machines reporting costs a few notifications, not 10,000. WatchFleet's machine changes (one
 *   per report, per desired generation a batch writes, per stream attach) are coalesced the same
 *   way, a repeated (machine, kind) within the window leaving once.
 * - A replica ignores its own notifications: it already delivered them to itself directly.
 */
import pg from "pg";
import type { Logger } from "../../common/logger.js";
import type { TransactionAnnouncer } from "../store/announce.js";
import { announcementEvents } from "./announcements.js";
import { type ClusterBus, type ClusterSink, deliver, type Scope } from "./bus.js";
import { type ClusterEvent, decodePayload, encodeEvent, type FleetChange } from "./messages.js";

export const CLUSTER_CHANNEL = "nixfleet_cluster";

export interface PostgresBusOptions {
  url: string;
  sink: ClusterSink;
  logger: Logger;
  replicaId: string;
  channel?: string;
  /** Kicks of one rollout (and fleet changes) within this window leave as one notification. */
  kickCoalesceMs?: number;
  /** Reconnect back-off of the LISTEN connection: first delay and cap. */
  reconnectMinMs?: number;
  reconnectMaxMs?: number;
  /** How often the LISTEN connection is probed (a half-open TCP connection reports nothing). */
  probeMs?: number;
}

const SEND_ATTEMPTS = 3;

export class PostgresBus implements ClusterBus {
  private listener: pg.Client | null = null;
  private sender: pg.Pool | null = null;
  private sending: Promise<void> = Promise.resolve();
  private readonly pendingKicks = new Set<string>();
  /** Fleet changes waiting for the coalescing window, keyed by kind and machine. */
  private readonly pendingFleet = new Map<string, FleetChange>();
  private kickTimer: NodeJS.Timeout | null = null;
  private reconnectTimer: NodeJS.Timeout | null = null;
  private probeTimer: NodeJS.Timeout | null = null;
  private attempt = 0;
  private stopped = false;
  private readonly warned = new Set<string>();
  private readonly channel: string;
  /** Counters for tests and logs. */
  readonly stats = { sent: 0, received: 0, reconnects: 0, sendFailures: 0 };

  constructor(private readonly o: PostgresBusOptions) {
    this.channel = o.channel ?? CLUSTER_CHANNEL;
    if (!/^[a-z_][a-z0-9_]*$/.test(this.channel)) throw new Error(`invalid channel name ${this.channel}`);
  }

  get replicaId(): string {
    return this.o.replicaId;
  }

  private inTransaction = false;

  get announcesInTransaction(): boolean {
    return this.inTransaction;
  }

  /**
   * What the store hands each write's changes to, inside the write's transaction: the payloads of
   * every event the change causes, for the other replicas (this one delivers its own directly,
   * after the commit). Taking it switches the notifier to delivering those events here only.
   */
  storeAnnouncer(pollHintSeconds: number): TransactionAnnouncer {
    this.inTransaction = true;
    return {
      channel: this.channel,
      payloads: (what) =>
        announcementEvents(what, pollHintSeconds).flatMap(({ event }) =>
          encodeEvent(this.o.replicaId, event),
        ),
    };
  }

  /** True while the LISTEN connection is up. */
  get listening(): boolean {
    return this.listener !== null;
  }

  /** The server process of the LISTEN connection (pg_stat_activity.pid), while it is up. */
  get listenerPid(): number | null {
    return (this.listener as { processID?: number } | null)?.processID ?? null;
  }

  /** Connects the LISTEN connection; rejects when the first attempt fails (start-up reports it). */
  async start(): Promise<void> {
    this.sender = new pg.Pool({ connectionString: this.o.url, max: 1 });
    // A sender connection the server drops is replaced on the next query.
    this.sender.on("error", () => {});
    await this.listen();
    const probeMs = this.o.probeMs ?? 10_000;
    this.probeTimer = setInterval(() => this.probe(), probeMs);
    this.probeTimer.unref();
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    for (const t of [this.kickTimer, this.reconnectTimer]) if (t) clearTimeout(t);
    if (this.probeTimer) clearInterval(this.probeTimer);
    this.flushKicks();
    await this.sending;
    const listener = this.listener;
    this.listener = null;
    await listener?.end().catch(() => {});
    await this.sender?.end().catch(() => {});
  }

  publish(event: ClusterEvent, scope: Scope = "all"): void {
    if (scope !== "others") deliver(this.o.sink, event);
    if (this.stopped || scope === "here") return;
    if (event.kind === "kick" || event.kind === "fleet") {
      if (event.kind === "kick") for (const id of event.rolloutIds) this.pendingKicks.add(id);
      else for (const c of event.changes) this.pendingFleet.set(`${c.kind}\0${c.machineId}`, c);
      this.kickTimer ??= setTimeout(() => this.flushKicks(), this.o.kickCoalesceMs ?? 20);
      return;
    }
    this.send(encodeEvent(this.o.replicaId, event));
  }

  /** Sends the coalesced kicks and fleet changes. */
  private flushKicks(): void {
    if (this.kickTimer) clearTimeout(this.kickTimer);
    this.kickTimer = null;
    if (this.pendingKicks.size) {
      const rolloutIds = [...this.pendingKicks];
      this.pendingKicks.clear();
      this.send(encodeEvent(this.o.replicaId, { kind: "kick", rolloutIds }));
    }
    if (this.pendingFleet.size) {
      const changes = [...this.pendingFleet.values()];
      this.pendingFleet.clear();
      this.send(encodeEvent(this.o.replicaId, { kind: "fleet", changes }));
    }
  }

  /** Queues the payloads behind those already queued: one round trip sends them all. */
  private send(payloads: string[]): void {
    if (payloads.length === 0) return;
    this.sending = this.sending.then(() => this.notify(payloads));
  }

  private async notify(payloads: string[]): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        await this.sender!.query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p", [
          this.channel,
          payloads,
        ]);
        this.stats.sent += payloads.length;
        return;
      } catch (err) {
        if (attempt >= SEND_ATTEMPTS || this.stopped) {
          this.stats.sendFailures++;
          this.o.logger.error(
            { err, payloads: payloads.length },
            "could not announce a change to the other replicas; the leader's next executor tick and the machines' next changes make up for it",
          );
          return;
        }
        await new Promise((r) => setTimeout(r, 100 * attempt));
      }
    }
  }

  private async listen(): Promise<void> {
    const client = new pg.Client({ connectionString: this.o.url, keepAlive: true });
    client.on("notification", (n) => {
      if (n.channel === this.channel && n.payload !== undefined) this.receive(n.payload);
    });
    client.on("error", (err) => this.lost(client, err));
    client.on("end", () => this.lost(client, new Error("the connection ended")));
    try {
      await client.connect();
      await client.query(`LISTEN ${this.channel}`);
    } catch (err) {
      await client.end().catch(() => {});
      throw err;
    }
    if (this.stopped) {
      await client.end().catch(() => {});
      return;
    }
    this.listener = client;
  }

  private probe(): void {
    const client = this.listener;
    if (!client) return;
    const timeout = setTimeout(() => this.lost(client, new Error("no answer to a probe")), 5_000);
    timeout.unref();
    client
      .query("SELECT 1")
      .catch((err: Error) => this.lost(client, err))
      .finally(() => clearTimeout(timeout));
  }

  private lost(client: pg.Client, err: Error): void {
    if (client !== this.listener || this.stopped) return;
    this.listener = null;
    client.end().catch(() => {});
    this.o.logger.warn(
      { err: err.message },
      "lost the connection that listens for other replicas' changes; reconnecting",
    );
    this.scheduleReconnect();
  }

  private scheduleReconnect(): void {
    if (this.stopped) return;
    const min = this.o.reconnectMinMs ?? 100;
    const max = this.o.reconnectMaxMs ?? 5_000;
    const delay = Math.min(max, min * 2 ** this.attempt) * (0.5 + Math.random() / 2);
    this.attempt++;
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      this.listen()
        .then(() => {
          if (this.stopped) return;
          this.attempt = 0;
          this.stats.reconnects++;
          this.o.logger.info("listening for other replicas' changes again; re-sending desired generations");
          this.o.sink.resync();
        })
        .catch((e: Error) => {
          this.o.logger.warn({ err: e.message }, "could not reconnect the listening connection; retrying");
          this.scheduleReconnect();
        });
    }, delay);
    this.reconnectTimer.unref();
  }

  private receive(payload: string): void {
    const decoded = decodePayload(payload);
    if (!decoded.ok) {
      if (decoded.from === this.o.replicaId) return;
      if (!this.warned.has(decoded.problem)) {
        this.warned.add(decoded.problem);
        this.o.logger.warn(
          { from: decoded.from ?? undefined, problem: decoded.problem },
          "ignored a cluster message this replica does not understand (is another replica of a different version?)",
        );
      }
      return;
    }
    if (decoded.from === this.o.replicaId) return;
    this.stats.received++;
    try {
      deliver(this.o.sink, decoded.event);
    } catch (err) {
      this.o.logger.error({ err, kind: decoded.event.kind }, "acting on another replica's change failed");
    }
  }
}
