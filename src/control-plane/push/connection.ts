/**
 * One agent's open push stream (Session or Watch): a small outbox the stream's generator drains.
 * Sending never blocks the sender — a slow agent only delays itself — and the outbox cannot grow
 * without bound: a newer desired generation replaces an unsent older one, heartbeats coalesce,
 * and a client that still falls behind is disconnected (it reconnects and gets the current state
 * on Hello).
 */
import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import type { ControlMessageSchema } from "../../gen/nixfleet/v1/agent_pb.js";

export type ControlMessageInit = MessageInitShape<typeof ControlMessageSchema>;
export type StreamKind = "session" | "watch";

const MAX_OUTBOX = 64;

let nextConnectionId = 1;

export class AgentConnection {
  readonly id = nextConnectionId++;
  private outbox: ControlMessageInit[] = [];
  private wake: (() => void) | null = null;
  private closedWith: ConnectError | null | undefined = undefined;
  /** A desired-generation message was queued since the stream opened (newer than any snapshot). */
  private desiredQueued = false;
  /** revision → when the pushed assignment was made, for push latency on PushAck. */
  readonly awaitingAck = new Map<number, number>();
  lastHeardAt: number;
  /** The agent's announced heartbeat interval (ms), when it sent one. */
  peerIntervalMs: number | null = null;

  constructor(
    readonly machineId: string,
    readonly kind: StreamKind,
    readonly openedAt: number,
  ) {
    this.lastHeardAt = openedAt;
  }

  get closed(): boolean {
    return this.closedWith !== undefined;
  }

  /** The error the stream ends with (null: ended normally). */
  get error(): ConnectError | null {
    return this.closedWith ?? null;
  }

  send(message: ControlMessageInit): void {
    if (this.closed) return;
    const kind = message.message?.case;
    if (kind === "desiredGenerationChanged") {
      this.desiredQueued = true;
      this.outbox = this.outbox.filter((m) => m.message?.case !== "desiredGenerationChanged");
    } else if (kind === "heartbeat" || kind === "pollHint") {
      this.outbox = this.outbox.filter((m) => m.message?.case !== kind);
    }
    this.outbox.push(message);
    if (this.outbox.length > MAX_OUTBOX) {
      this.close(
        new ConnectError(
          `${this.machineId} is not reading its ${this.kind} stream; reconnect`,
          Code.ResourceExhausted,
        ),
      );
      return;
    }
    this.wake?.();
  }

  /** The state snapshot after Hello — unless a live push already overtook it. */
  sendInitial(message: ControlMessageInit): void {
    if (this.desiredQueued) return;
    this.send(message);
  }

  close(error: ConnectError | null = null): void {
    if (this.closed) return;
    this.closedWith = error;
    this.outbox = [];
    this.wake?.();
  }

  /** The messages to write, until the connection is closed or `signal` aborts. */
  async *outgoing(signal: AbortSignal): AsyncGenerator<ControlMessageInit> {
    const onAbort = () => this.close();
    signal.addEventListener("abort", onAbort, { once: true });
    try {
      for (;;) {
        if (this.closed) return;
        const next = this.outbox.shift();
        if (next) {
          yield next;
          continue;
        }
        await new Promise<void>((resolve) => {
          this.wake = resolve;
        });
        this.wake = null;
      }
    } finally {
      signal.removeEventListener("abort", onAbort);
    }
  }
}
