/**
 * The push hub: at most one open stream (Session or Watch) per machine, the newest winning, and
 * the fan-out of desired-generation changes to them. A push is a map lookup and an enqueue per
 * machine — it never scans rollouts or other machines — and one timer for the whole hub sends
 * heartbeats and closes sessions whose agent went silent for three heartbeat intervals.
 *
 * A message that goes to many streams is built and encoded once (OutgoingMessage): a heartbeat
 * sweep and a poll hint share one frame, and consecutive desired-generation pushes with the same
 * content (same assignment, revision and poll hint) reuse the last one's.
 */
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Logger } from "../../common/logger.js";
import type { Clock } from "../clock.js";
import { desiredToProto } from "../services/convert.js";
import type { DesiredChange } from "../store/records.js";
import { type AgentConnection, QueuedConnection, type StreamKind } from "./connection.js";
import { type ControlMessageInit, OutgoingMessage } from "./outgoing.js";

export interface PushHubOptions {
  clock: Clock;
  logger: Logger;
  heartbeatIntervalMs: number;
  /** Observes desired-set → PushAck latency in seconds. */
  observePushLatency?: (seconds: number) => void;
  /** A machine's stream attached (true) or went away (false): WatchFleet's connected/disconnected. */
  onPresence?: (machineId: string, connected: boolean) => void;
}

export class PushHub {
  private readonly connections = new Map<string, AgentConnection>();
  private timer: NodeJS.Timeout | null = null;
  /** The last desired-generation push and its content key, for the next identical one. */
  private lastDesired: { key: string; message: OutgoingMessage } | null = null;

  constructor(private readonly options: PushHubOptions) {}

  start(): void {
    if (this.timer) return;
    this.timer = setInterval(() => this.sweep(), this.options.heartbeatIntervalMs);
    this.timer.unref();
  }

  /** Closes every stream (shutdown) and stops the heartbeat timer. */
  stop(error: ConnectError): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    for (const conn of this.connections.values()) conn.close(error);
    this.connections.clear();
  }

  get size(): number {
    return this.connections.size;
  }

  isConnected(machineId: string): boolean {
    return this.connections.has(machineId);
  }

  lastHeard(machineId: string): number | null {
    return this.connections.get(machineId)?.lastHeardAt ?? null;
  }

  /** The hub's clock, for transports that create their own connections. */
  now(): number {
    return this.options.clock.now();
  }

  /** Registers a new stream Connect serves; an existing one is closed (the newer stream wins). */
  attach(machineId: string, kind: StreamKind): QueuedConnection {
    const conn = new QueuedConnection(machineId, kind, this.options.clock.now());
    this.register(conn);
    return conn;
  }

  /** Registers a stream whatever its transport; an existing one for the machine is closed. */
  register(conn: AgentConnection): void {
    const { machineId, kind } = conn;
    const previous = this.connections.get(machineId);
    if (previous) {
      previous.close(new ConnectError(`replaced by a newer ${kind} stream for ${machineId}`, Code.Aborted));
      this.options.logger.info(
        { machineId, kind, previousKind: previous.kind },
        "agent stream replaced by a newer one",
      );
    }
    conn.lastHeardAt = this.options.clock.now();
    this.connections.set(machineId, conn);
    this.options.logger.debug({ machineId, kind }, "agent stream opened");
    this.options.onPresence?.(machineId, true);
  }

  detach(conn: AgentConnection): void {
    if (this.connections.get(conn.machineId) === conn) {
      this.connections.delete(conn.machineId);
      this.options.logger.debug({ machineId: conn.machineId, kind: conn.kind }, "agent stream closed");
      this.options.onPresence?.(conn.machineId, false);
    }
    conn.close();
  }

  /** Pushes a desired-generation change (set, replaced or cleared) to the machine's stream. */
  pushDesired(change: DesiredChange, pollHintSeconds: number | undefined): void {
    const conn = this.connections.get(change.machineId);
    if (!conn) return;
    const revision = change.desired?.revision ?? 0;
    conn.expectAck(revision, change.desired?.setAt ?? this.options.clock.now());
    conn.send(this.desiredMessage(change, pollHintSeconds));
  }

  private desiredMessage(change: DesiredChange, pollHintSeconds: number | undefined): OutgoingMessage {
    const d = change.desired;
    const key = d
      ? `${d.storePath}\0${d.cacheUrl}\0${d.revision}\0${d.rolloutId}\0${d.setAt}\0${pollHintSeconds ?? ""}`
      : `\0cleared\0${pollHintSeconds ?? ""}`;
    if (this.lastDesired?.key === key) return this.lastDesired.message;
    const message = new OutgoingMessage(desiredChangedMessage(change, pollHintSeconds));
    this.lastDesired = { key, message };
    return message;
  }

  pushPollHint(machineIds: readonly string[], seconds: number): void {
    const message = new OutgoingMessage({ message: { case: "pollHint", value: { seconds } } });
    for (const id of machineIds) this.connections.get(id)?.send(message);
  }

  /** Any message from the agent proves it is alive. */
  heard(conn: AgentConnection): void {
    conn.lastHeardAt = this.options.clock.now();
  }

  /** The agent confirmed a push: measure desired-set → ack. */
  acknowledge(conn: AgentConnection, revision: number): void {
    const setAt = conn.takeAck(revision);
    if (setAt === undefined) return;
    this.options.observePushLatency?.(Math.max(0, this.options.clock.now() - setAt) / 1000);
  }

  private sweep(): void {
    const now = this.options.clock.now();
    const interval = this.options.heartbeatIntervalMs;
    const heartbeat = new OutgoingMessage({
      message: {
        case: "heartbeat",
        value: { sentAt: timestampFromMs(now), intervalSeconds: Math.max(1, Math.round(interval / 1000)) },
      },
    });
    for (const conn of this.connections.values()) {
      if (conn.kind === "session") {
        const limit = 3 * Math.max(interval, conn.peerIntervalMs ?? 0);
        const silent = now - conn.lastHeardAt;
        if (silent > limit) {
          this.options.logger.warn(
            { machineId: conn.machineId, silentMs: silent },
            "closing a session whose agent stopped sending heartbeats",
          );
          conn.close(
            new ConnectError(
              `no message from ${conn.machineId} for ${Math.round(silent / 1000)} s (3 heartbeat intervals); reconnect`,
              Code.DeadlineExceeded,
            ),
          );
          this.detach(conn);
          continue;
        }
      }
      conn.send(heartbeat);
    }
  }
}

export function desiredChangedMessage(
  change: DesiredChange,
  pollHintSeconds: number | undefined,
): ControlMessageInit {
  return {
    message: {
      case: "desiredGenerationChanged",
      value: {
        ...(change.desired ? { generation: desiredToProto(change.desired) } : {}),
        ...(pollHintSeconds !== undefined ? { pollHintSeconds } : {}),
      },
    },
  };
}
