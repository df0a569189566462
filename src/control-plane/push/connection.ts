/**
 * One agent's open push stream (Session or Watch), whatever carries it: the state the hub keeps
 * per agent and the outbox rules. Sending never blocks the sender — a slow agent only delays
 * itself — and what waits for a slow agent is bounded: a message goes to the transport at once
 * when it can take it, otherwise into a small outbox where a newer desired generation replaces an
 * unsent older one and heartbeats and poll hints coalesce; an agent that still falls behind is
 * disconnected (it reconnects and gets the current state on Hello).
 *
 * Two transports: QueuedConnection (below) for streams Connect serves (Watch, and Session over
 * the Connect and gRPC-web protocols), drained by the handler's async generator; and the raw
 * gRPC Session stream (http/grpc-session-stream.ts), which writes pre-encoded frames straight to
 * its HTTP/2 stream. Per-stream state stays a few small objects: 10,000 agents hold one each.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { type ControlMessageInit, OutgoingMessage } from "./outgoing.js";

export type { ControlMessageInit } from "./outgoing.js";
export type StreamKind = "session" | "watch";

const MAX_OUTBOX = 64;
/** Unacknowledged pushes remembered per stream, for push latency. */
const MAX_AWAITING_ACK = 16;

let nextConnectionId = 1;

export abstract class AgentConnection {
  readonly id = nextConnectionId++;
  /** Messages the transport could not take yet (null: none; most streams never need one). */
  protected outbox: OutgoingMessage[] | null = null;
  private closedWith: ConnectError | null | undefined = undefined;
  /** A desired-generation message was queued since the stream opened (newer than any snapshot). */
  private desiredQueued = false;
  /** revision → when the pushed assignment was made, for push latency on PushAck (lazily made). */
  private awaiting: Map<number, number> | null = null;
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

  /** Whether the transport can take a message now (false: it goes to the outbox). */
  protected abstract writable(): boolean;
  /** Hands one message to the transport. */
  protected abstract write(message: OutgoingMessage): void;
  /** The outbox has something for a transport that was not writable. */
  protected abstract wake(): void;
  /** Ends the transport's stream, once, with the error (null: normally) or after the client left. */
  protected abstract end(error: ConnectError | null): void;

  send(message: OutgoingMessage | ControlMessageInit): void {
    if (this.closed) return;
    const m = message instanceof OutgoingMessage ? message : new OutgoingMessage(message);
    const kind = m.kind;
    if (kind === "desiredGenerationChanged") this.desiredQueued = true;
    if (this.outbox === null && this.writable()) {
      this.write(m);
      return;
    }
    let box = this.outbox ?? [];
    if (kind === "desiredGenerationChanged" || kind === "heartbeat" || kind === "pollHint")
      box = box.filter((queued) => queued.kind !== kind);
    box.push(m);
    this.outbox = box;
    if (box.length > MAX_OUTBOX) {
      this.close(
        new ConnectError(
          `${this.machineId} is not reading its ${this.kind} stream; reconnect`,
          Code.ResourceExhausted,
        ),
      );
      return;
    }
    this.wake();
  }

  /** The state snapshot after Hello — unless a live push already overtook it. */
  sendInitial(message: OutgoingMessage | ControlMessageInit): void {
    if (this.desiredQueued) return;
    this.send(message);
  }

  /** Writes what the outbox holds while the transport takes it (the transport drained). */
  protected flush(): void {
    while (this.outbox !== null && !this.closed && this.writable()) {
      const next = this.outbox.shift()!;
      if (this.outbox.length === 0) this.outbox = null;
      this.write(next);
    }
  }

  /** The next outbox message, for transports that pull. */
  protected takeNext(): OutgoingMessage | undefined {
    const next = this.outbox?.shift();
    if (this.outbox?.length === 0) this.outbox = null;
    return next;
  }

  close(error: ConnectError | null = null): void {
    if (this.closed) return;
    this.closedWith = error;
    this.outbox = null;
    this.end(error);
  }

  /** Remembers when a pushed revision was assigned, to measure push → ack. */
  expectAck(revision: number, setAt: number): void {
    this.awaiting ??= new Map();
    this.awaiting.set(revision, setAt);
    if (this.awaiting.size > MAX_AWAITING_ACK) this.awaiting.delete(this.awaiting.keys().next().value!);
  }

  /** When the acknowledged revision was assigned (undefined: not one this stream was sent). */
  takeAck(revision: number): number | undefined {
    const setAt = this.awaiting?.get(revision);
    if (setAt !== undefined) this.awaiting!.delete(revision);
    return setAt;
  }
}

/** A stream Connect serves: its handler's async generator pulls from the outbox. */
export class QueuedConnection extends AgentConnection {
  private wakeUp: (() => void) | null = null;

  protected writable(): boolean {
    return false;
  }

  protected write(): void {
    // Never writable: every message waits in the outbox for outgoing() to pull it.
  }

  protected wake(): void {
    this.wakeUp?.();
  }

  protected end(): void {
    this.wakeUp?.();
  }

  /** The messages to write, until the connection is closed or `signal` aborts. */
  async *outgoing(signal: AbortSignal): AsyncGenerator<ControlMessageInit> {
    const onAbort = () => this.close();
    signal.addEventListener("abort", onAbort, { once: true });
    try {
      for (;;) {
        if (this.closed) return;
        const next = this.takeNext();
        if (next) {
          yield next.init;
          continue;
        }
        await new Promise<void>((resolve) => {
          this.wakeUp = resolve;
        });
        this.wakeUp = null;
      }
    } finally {
      signal.removeEventListener("abort", onAbort);
    }
  }
}
