/**
 * The push channel: the bidi `Session` stream (grpc/connect over HTTP/2) or the server-streaming
 * `Watch` (connect-json over HTTP/1.1). The agent opens it, says Hello, acknowledges every
 * DesiredGenerationChanged with a PushAck, sends heartbeats, and closes the stream when the
 * control plane's heartbeats stop for three of its intervals (a half-open connection must not
 * look alive, peer study §4 #18). Reconnects back off exponentially with jitter; while the
 * stream is down the agent polls.
 *
 * "Connected" means the control plane has answered (its first message is the current
 * assignment), not merely that a request was sent.
 */
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Logger } from "../../common/logger.js";
import {
  type AgentMessageSchema,
  type ControlMessage,
  type DesiredGenerationChanged,
  HeartbeatSchema,
} from "../../gen/nixfleet/v1/agent_pb.js";
import { type BackoffOptions, DEFAULT_RECONNECT, type Random, reconnectDelayMs } from "../schedule.js";
import type { AgentClient } from "./client.js";

type AgentMessageInit = MessageInitShape<typeof AgentMessageSchema>;

export interface PushHandlers {
  onDesired(change: DesiredGenerationChanged): void;
  onPollHint(seconds: number): void;
  onCheckNow(): void;
  onConnectedChange(connected: boolean): void;
}

export interface Identity {
  machineId: string;
  tags: string[];
  agentVersion: string;
  currentGeneration: () => string;
}

const FIRST_MESSAGE_TIMEOUT_MS = 30_000;

export interface PushChannelOptions {
  client: AgentClient;
  mode: "session" | "watch";
  identity: Identity;
  heartbeatIntervalMs: number;
  handlers: PushHandlers;
  log: Logger;
  reconnect?: BackoffOptions;
  random?: Random;
  /** A stream that stayed up this long resets the back-off. */
  stableAfterMs?: number;
  /**
   * How long a new stream may wait for its first message (the control plane answers a Session or
   * Watch at once with the current assignment) before it counts as dead: a server that accepts
   * the stream and then says nothing must not hold the agent for ever. Default 30 s.
   */
  firstMessageTimeoutMs?: number;
  /** The control-plane URL the stream goes to (several URLs: src/common/failover-transport.ts), for the log. */
  currentUrl?: () => string;
}

/**
 * The outbound half of the bidi stream: an async queue. Iterated through an async generator,
 * which gives Connect the `throw`/`return` it calls when the stream ends.
 */
class Outbound<T> implements AsyncIterable<T> {
  private items: T[] = [];
  private wake: (() => void) | undefined;
  private closed = false;

  push(item: T): void {
    if (this.closed) return;
    this.items.push(item);
    this.wake?.();
  }

  close(): void {
    this.closed = true;
    this.wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<T> {
    try {
      for (;;) {
        while (this.items.length > 0) yield this.items.shift()!;
        if (this.closed) return;
        await new Promise<void>((resolve) => {
          this.wake = resolve;
        });
        this.wake = undefined;
      }
    } finally {
      this.closed = true;
    }
  }
}

export class PushChannel {
  private stopped = false;
  private connectedNow = false;
  private current: AbortController | undefined;
  private loop: Promise<void> | undefined;
  private wakeSleep: (() => void) | undefined;

  constructor(private readonly options: PushChannelOptions) {}

  get connected(): boolean {
    return this.connectedNow;
  }

  start(): void {
    this.loop ??= this.run();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.current?.abort(new Error("agent stopping"));
    this.wakeSleep?.();
    await this.loop;
  }

  /** Drops the current stream (it reconnects); used when the control plane looks gone. */
  reset(reason: string): void {
    this.current?.abort(new Error(reason));
  }

  private setConnected(connected: boolean): void {
    if (connected === this.connectedNow) return;
    this.connectedNow = connected;
    this.options.handlers.onConnectedChange(connected);
  }

  private async run(): Promise<void> {
    const { log } = this.options;
    let attempt = 0;
    while (!this.stopped) {
      const controller = new AbortController();
      this.current = controller;
      const opened = Date.now();
      let answered = false;
      try {
        answered = await this.runStream(controller);
        if (!this.stopped)
          log.info(
            { event: "stream_closed", stream: this.options.mode },
            "push stream ended by the control plane",
          );
      } catch (err) {
        if (!this.stopped) {
          log.warn(
            { event: "stream_error", stream: this.options.mode, error: (err as Error).message },
            "push stream failed; polling until it reconnects",
          );
        }
      } finally {
        controller.abort();
        this.setConnected(false);
      }
      if (this.stopped) break;
      if (answered && Date.now() - opened >= (this.options.stableAfterMs ?? 30_000)) attempt = 0;
      const delay = reconnectDelayMs(
        attempt++,
        this.options.reconnect ?? DEFAULT_RECONNECT,
        this.options.random,
      );
      log.debug({ event: "stream_reconnect_wait", delayMs: delay, attempt }, "waiting before reconnecting");
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, delay);
        this.wakeSleep = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.wakeSleep = undefined;
    }
  }

  /** Runs one stream until it ends; resolves whether the control plane ever answered. */
  private async runStream(controller: AbortController): Promise<boolean> {
    const { client, identity, handlers, mode, heartbeatIntervalMs, log } = this.options;
    const signal = controller.signal;
    const outbound = new Outbound<AgentMessageInit>();
    let answered = false;
    let lastHeard = Date.now();
    let peerIntervalMs: number | undefined;

    const heartbeat = setInterval(() => {
      outbound.push({
        message: {
          case: "heartbeat",
          value: create(HeartbeatSchema, {
            sentAt: timestampFromMs(Date.now()),
            intervalSeconds: Math.max(1, Math.round(heartbeatIntervalMs / 1000)),
          }),
        },
      });
    }, heartbeatIntervalMs);
    // The first message must come within firstMessageTimeoutMs; after it, the peer's heartbeats
    // (if it sends any) must keep coming: three missed intervals = dead. One timer set for the
    // moment the silence would be too long, re-armed when a message arrives — not a tick every
    // few seconds that an idle agent would wake up for.
    let watchdog: NodeJS.Timeout | undefined;
    const silenceLimitMs = () =>
      peerIntervalMs !== undefined
        ? 3 * peerIntervalMs
        : answered
          ? undefined
          : (this.options.firstMessageTimeoutMs ?? FIRST_MESSAGE_TIMEOUT_MS);
    const watch = () => {
      clearTimeout(watchdog);
      const limit = silenceLimitMs();
      if (limit === undefined) return;
      const left = limit - (Date.now() - lastHeard);
      if (left >= 0) {
        watchdog = setTimeout(watch, left + 1);
        return;
      }
      // UNAVAILABLE: a silent control plane counts as unreachable, so with several URLs
      // the next stream goes to the next one (src/common/failover-transport.ts).
      controller.abort(
        new ConnectError(
          `no message from the control plane for ${Math.round((Date.now() - lastHeard) / 1000)} s`,
          Code.Unavailable,
        ),
      );
    };

    try {
      let stream: AsyncIterable<ControlMessage>;
      if (mode === "session") {
        outbound.push({
          message: {
            case: "hello",
            value: {
              machineId: identity.machineId,
              currentGeneration: identity.currentGeneration(),
              tags: identity.tags,
              agentVersion: identity.agentVersion,
            },
          },
        });
        stream = client.session(outbound, { signal });
      } else {
        clearInterval(heartbeat);
        stream = client.watch(
          { machineId: identity.machineId, tags: identity.tags, agentVersion: identity.agentVersion },
          { signal },
        );
      }
      watch();
      for await (const msg of stream) {
        lastHeard = Date.now();
        if (!answered) {
          answered = true;
          log.info(
            { event: "stream_connected", stream: mode, url: this.options.currentUrl?.() },
            "push stream connected",
          );
          this.setConnected(true);
        }
        switch (msg.message.case) {
          case "desiredGenerationChanged": {
            const change = msg.message.value;
            if (mode === "session") {
              outbound.push({
                message: { case: "ack", value: { revision: change.generation?.revision ?? 0n } },
              });
            }
            handlers.onDesired(change);
            break;
          }
          case "pollHint":
            handlers.onPollHint(msg.message.value.seconds);
            break;
          case "checkNow":
            handlers.onCheckNow();
            break;
          case "heartbeat":
            peerIntervalMs = Math.max(1, msg.message.value.intervalSeconds || 30) * 1000;
            break;
          default:
            break;
        }
        watch();
      }
      return answered;
    } catch (err) {
      if (signal.aborted && signal.reason instanceof Error && !this.stopped) throw signal.reason;
      throw err;
    } finally {
      clearInterval(heartbeat);
      clearTimeout(watchdog);
      outbound.close();
    }
  }
}
