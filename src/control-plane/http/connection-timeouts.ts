/**
 * Connection timeouts for the listeners, so peers that connect and then stall cannot hold
 * sockets and memory forever (2,000 idle TLS connections cost ~87 MiB):
 *
 * - handshake: the TLS handshake (or, on the insecure listener, the first bytes that tell HTTP/2
 *   from HTTP/1.1) must finish within `handshakeMs`;
 * - header: an HTTP/1.1 connection must deliver a complete request head within `headerMs` of
 *   connecting or of its previous response ending (partial headers, slowloris; this also ends
 *   idle keep-alive connections);
 * - idle: a connection with no bytes either way for `idleMs` is closed — HTTP/1.1 unless a
 *   response is streaming on it, HTTP/2 with GOAWAY (open streams may finish); a request whose
 *   client stopped sending before its end (a half-open HTTP/2 stream, a stalled HTTP/1.1 body)
 *   is reset after `idleMs` without bytes.
 *   Agent Sessions are never idle: the control plane heartbeats them more often than this.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import http2, { type Http2ServerRequest, type Http2ServerResponse, type Http2Session } from "node:http2";
import type { Socket } from "node:net";
import type { Duplex } from "node:stream";

export interface ConnectionTimeouts {
  handshakeMs: number;
  headerMs: number;
  idleMs: number;
}

export const DEFAULT_CONNECTION_TIMEOUTS: ConnectionTimeouts = {
  handshakeMs: 10_000,
  headerMs: 30_000,
  idleMs: 300_000,
};

/** The listeners' accept queue (listen(2) backlog); why 4096 and not Node's 511: listener.ts. */
export const DEFAULT_LISTEN_BACKLOG = 4096;

/**
 * TLS handshakes in progress at once (handshake-gate.ts). A handshake costs the server about a
 * millisecond of CPU, so 256 in progress wait well under a second for their turn — far inside
 * the handshake timeout — and are enough to keep the CPU busy while clients answer.
 */
export const DEFAULT_MAX_HANDSHAKES = 256;

interface Http1State {
  inflight: number;
  /** Open requests whose body has not fully arrived. */
  incomplete: number;
  headerTimer: NodeJS.Timeout | null;
}

export class TimeoutGuard {
  private readonly http1 = new WeakMap<object, Http1State>();

  constructor(readonly timeouts: ConnectionTimeouts) {}

  /** A socket whose protocol is not known yet: it must be identified within the handshake timeout. */
  handshake(socket: Socket): () => void {
    const timer = setTimeout(() => socket.destroy(), this.timeouts.handshakeMs);
    timer.unref();
    const done = () => clearTimeout(timer);
    socket.once("close", done);
    return done;
  }

  /** An HTTP/1.1 connection: header and idle timeouts. */
  http1Socket(socket: Socket | Duplex): void {
    const state: Http1State = { inflight: 0, incomplete: 0, headerTimer: null };
    this.http1.set(socket, state);
    this.armHeaderTimer(socket, state);
    if ("setTimeout" in socket && typeof socket.setTimeout === "function") {
      socket.setTimeout(this.timeouts.idleMs);
      socket.on("timeout", () => {
        // A silent streaming response (a rollout watch over HTTP/1.1) is not idle; a request
        // body that stopped arriving is.
        if (state.inflight === 0 || state.incomplete > 0) socket.destroy();
      });
    }
    socket.once("close", () => {
      if (state.headerTimer) clearTimeout(state.headerTimer);
    });
  }

  private armHeaderTimer(socket: Socket | Duplex, state: Http1State): void {
    if (state.headerTimer) clearTimeout(state.headerTimer);
    state.headerTimer = setTimeout(() => socket.destroy(), this.timeouts.headerMs);
    state.headerTimer.unref();
  }

  /**
   * An HTTP/2 session: GOAWAY after the idle timeout. The session ends at once when no stream is
   * open; a silent but legitimate stream (a rollout watch) may finish first, while a half-open
   * one is reset by its own timer (see request()).
   */
  h2Session(session: Http2Session): void {
    session.setTimeout(this.timeouts.idleMs, () => {
      if (!session.closed && !session.destroyed) session.close();
    });
  }

  /** Every request, before the handler runs. */
  request(req: IncomingMessage | Http2ServerRequest, res: ServerResponse | Http2ServerResponse): void {
    if ("stream" in req && req.stream) {
      const stream = req.stream;
      if (!req.complete) {
        // Until the client finishes its request, a silent stream is a half-open one.
        stream.setTimeout(this.timeouts.idleMs, () => stream.close(http2.constants.NGHTTP2_CANCEL));
        req.once("end", () => stream.setTimeout(0));
      }
      return;
    }
    const socket = req.socket;
    const state = this.http1.get(socket);
    if (!state) return;
    if (state.headerTimer) clearTimeout(state.headerTimer);
    state.headerTimer = null;
    state.inflight++;
    if (!req.complete) {
      state.incomplete++;
      let ended = false;
      const end = () => {
        if (ended) return;
        ended = true;
        state.incomplete--;
      };
      req.once("end", end);
      req.once("close", end);
    }
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      state.inflight--;
      if (state.inflight === 0 && !socket.destroyed) this.armHeaderTimer(socket, state);
    };
    res.once("finish", finish);
    res.once("close", finish);
  }
}
