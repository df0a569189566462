/**
 * Admission control for TLS handshakes: at most `maxInFlight` connections are in their handshake
 * at once; the rest wait, unread, in arrival order.
 *
 * Why: after a control-plane restart a whole fleet reconnects within a second or two. Handed to
 * the TLS server all at once, every connection's handshake timer starts together while their
 * handshakes wait their turn on the one event loop; those at the back time out after the client
 * already did its part, and the work done for them is thrown away and redone on the retry — a
 * collapse, not a queue. Waiting here costs no crypto and starts no timer, so every handshake
 * the server starts, it finishes well within the timeout, and the fleet is served at the rate
 * the CPU allows. A waiting connection holds its ClientHello in the kernel's receive buffer.
 *
 * A connection leaves the handshake (frees its place) when the TLS server reports it secure, or
 * when it closes (failed, timed out, or the peer gave up). More than `maxWaiting` waiting
 * connections: the newest is closed at once, before any work — the client retries after its
 * back-off.
 */
import type { Socket } from "node:net";

export interface HandshakeGateOptions {
  /** Handshakes in progress at once; 0: no limit (every connection is admitted at once). */
  maxInFlight: number;
  /** Connections waiting for a place; beyond it new ones are closed. */
  maxWaiting: number;
}

export interface HandshakeGateStats {
  inFlight: number;
  waiting: number;
  /** Connections closed because the waiting line was full, since the start. */
  shed: number;
}

/** How a TLS socket and the TCP socket under it are matched: the peer's address and port. */
function peerKey(socket: { remoteAddress?: string | undefined; remotePort?: number | undefined }): string {
  return `${socket.remoteAddress}:${socket.remotePort}`;
}

/** Waiting sockets are not read, but a destroy() elsewhere must not become an unhandled 'error'. */
function ignoreError(): void {}

export class HandshakeGate {
  /** Waiting connections, oldest first from `head` (no O(n) shift per admission at 10,000). */
  private waiting: Array<Socket | undefined> = [];
  private head = 0;
  /** Admitted connections still in their handshake, by peer, with how to free their place. */
  private readonly inHandshake = new Map<string, () => void>();
  private shedCount = 0;

  constructor(
    private readonly options: HandshakeGateOptions,
    /** Starts the handshake: hands the (paused) socket to the TLS server. */
    private readonly admit: (socket: Socket) => void,
  ) {}

  /** A new TCP connection (accepted paused: nothing is read until it is admitted). */
  offer(socket: Socket): void {
    if (this.options.maxInFlight === 0 || this.inHandshake.size < this.options.maxInFlight) {
      this.start(socket);
    } else if (this.waiting.length - this.head < this.options.maxWaiting) {
      socket.on("error", ignoreError);
      this.waiting.push(socket);
    } else {
      this.shedCount++;
      socket.destroy();
    }
  }

  /** The TLS server finished a handshake (its 'secureConnection'). */
  secured(tlsSocket: { remoteAddress?: string | undefined; remotePort?: number | undefined }): void {
    this.inHandshake.get(peerKey(tlsSocket))?.();
  }

  stats(): HandshakeGateStats {
    return {
      inFlight: this.inHandshake.size,
      waiting: this.waiting.length - this.head,
      shed: this.shedCount,
    };
  }

  /** Closes every waiting connection (the listener is closing). */
  closeWaiting(): void {
    const waiting = this.waiting.slice(this.head);
    this.waiting = [];
    this.head = 0;
    for (const socket of waiting) socket?.destroy();
  }

  private start(socket: Socket): void {
    if (this.options.maxInFlight > 0) {
      const key = peerKey(socket);
      let done = false;
      const release = () => {
        if (done) return;
        done = true;
        socket.off("close", release);
        if (this.inHandshake.get(key) === release) this.inHandshake.delete(key);
        this.next();
      };
      this.inHandshake.set(key, release);
      socket.once("close", release);
    }
    this.admit(socket);
  }

  private next(): void {
    while (this.head < this.waiting.length && this.inHandshake.size < this.options.maxInFlight) {
      const socket = this.waiting[this.head]!;
      this.waiting[this.head++] = undefined;
      socket.off("error", ignoreError);
      // A peer that gave up while waiting is not worth a handshake.
      if (!socket.destroyed) this.start(socket);
    }
    if (this.head === this.waiting.length) {
      this.waiting = [];
      this.head = 0;
    } else if (this.head > 1024 && this.head * 2 > this.waiting.length) {
      this.waiting = this.waiting.slice(this.head);
      this.head = 0;
    }
  }
}
