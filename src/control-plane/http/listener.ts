/**
 * The network listeners.
 *
 * - TLS (the normal mode): one `http2.createSecureServer` speaking HTTP/2 and, via ALPN,
 *   HTTP/1.1. It *requests* a client certificate but does not require one at the handshake
 *   (operators authenticate with API keys); each route enforces what it needs.
 * - Insecure (--allow-insecure, development only): plain HTTP on one port for both HTTP/2 with
 *   prior knowledge (h2c, what gRPC clients send) and HTTP/1.1. Node cannot do both on one
 *   plain server, so the first bytes of each connection decide: the HTTP/2 preface goes to an
 *   h2c server, anything else to an HTTP/1.1 server.
 *
 * Both track their connections so shutdown can let in-flight requests finish, then close, and
 * apply the handshake, header and idle timeouts of connection-timeouts.ts.
 */
import http, { type IncomingMessage, type ServerResponse } from "node:http";
import http2, {
  type Http2ServerRequest,
  type Http2ServerResponse,
  type Http2Session,
  type IncomingHttpHeaders,
  type ServerHttp2Stream,
} from "node:http2";
import net, { type AddressInfo, type Socket } from "node:net";
import { Duplex } from "node:stream";
import {
  type ConnectionTimeouts,
  DEFAULT_CONNECTION_TIMEOUTS,
  DEFAULT_LISTEN_BACKLOG,
  DEFAULT_MAX_HANDSHAKES,
  TimeoutGuard,
} from "./connection-timeouts.js";
import { HandshakeGate, type HandshakeGateStats } from "./handshake-gate.js";
import { loadTicketKeys, resumptionOptions, type TicketKeysOptions, watchTicketKeys } from "./ticket-keys.js";

export type RequestHandler = (
  req: IncomingMessage | Http2ServerRequest,
  res: ServerResponse | Http2ServerResponse,
) => void;

/**
 * HTTP/2 streams served without the compat request/response layer (the raw gRPC Session path):
 * `claims` looks at the headers, `serve` takes the stream. Everything else goes to the handler.
 */
export interface StreamRoute {
  claims(headers: IncomingHttpHeaders): boolean;
  serve(stream: ServerHttp2Stream, headers: IncomingHttpHeaders): void;
}

export interface TlsOptions {
  cert: Buffer;
  key: Buffer;
  /** Client CA bundle: certificates it signed count as verified agent identities. */
  ca: Buffer;
  /**
   * Whether the handshake asks for a client certificate (default true). The dashboard's listener
   * does not: browsers would show a certificate picker, and operators sign in with API keys.
   */
  requestClientCert?: boolean;
  /** Session-ticket keys shared across restarts and replicas (ticket-keys.ts); absent: per process. */
  ticketKeys?: TicketKeysOptions;
}

export interface Listener {
  /** e.g. https://127.0.0.1:8443 (the real port when 0 was asked for). */
  readonly url: string;
  readonly port: number;
  /** Stops accepting connections, asks HTTP/2 peers to go away, waits for open requests up to the deadline. */
  close(deadlineMs: number): Promise<void>;
  /** The handshake gate's figures (TLS listeners only). */
  handshakes(): HandshakeGateStats | undefined;
}

/** How long a client may keep sending after its response was complete. */
const HALF_OPEN_GRACE_MS = 1000;

/**
 * Connections waiting for a handshake place beyond which new ones are closed at once: a whole
 * large fleet reconnecting (each waiting socket costs about a kilobyte here; its ClientHello
 * sits in the kernel's buffers).
 */
const MAX_WAITING_HANDSHAKES = 50_000;

/** Caps: HTTP/2 header lists and HTTP/1.1 headers (bodies are capped per route / per RPC message). */
const MAX_HEADER_BYTES = 64 * 1024;

function hostForUrl(host: string): string {
  return host.includes(":") ? `[${host}]` : host;
}

/*
 * The accept queue (--listen-backlog, default 4096, capped by net.core.somaxconn). Node's default,
 * 511, overflows when a fleet reconnects after a restart: Linux then drops the client's final ACK
 * or SYN and the client waits out TCP retransmissions (1, 2, 4… s) while it believes it is
 * connected — the storm's long tail. 4096 was reverted twice because the insecure listener's
 * connection-timeouts test failed in full CI runs; the cause was that test attaching its second
 * close listener only after the first close, so a partial head closing first went unseen (fixed in
 * the test; the backlog played no part). Storm measurements: docs/control-plane.md.
 */

/** Per-listener settings: the connection timeouts, the accept queue's length, the handshake gate. */
export interface ListenSettings extends ConnectionTimeouts {
  /** listen(2)'s backlog (the kernel caps it at net.core.somaxconn); default DEFAULT_LISTEN_BACKLOG. */
  backlog?: number | undefined;
  /** TLS handshakes in progress at once (handshake-gate.ts); 0: no limit; default DEFAULT_MAX_HANDSHAKES. */
  maxHandshakes?: number | undefined;
}

function listenOn(
  server: net.Server,
  host: string,
  port: number,
  backlog: number | undefined,
): Promise<number> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error) => reject(err);
    server.once("error", onError);
    server.listen({ host, port, backlog: backlog ?? DEFAULT_LISTEN_BACKLOG }, () => {
      server.off("error", onError);
      resolve((server.address() as AddressInfo).port);
    });
  });
}

class ConnectionTracker {
  readonly sockets = new Set<Socket | Duplex>();
  readonly sessions = new Set<Http2Session>();
  inflight = 0;
  private idle: (() => void) | null = null;

  constructor(readonly guard: TimeoutGuard) {}

  socket(socket: Socket | Duplex): void {
    this.sockets.add(socket);
    socket.once("close", () => this.sockets.delete(socket));
  }

  session(session: Http2Session): void {
    this.guard.h2Session(session);
    this.sessions.add(session);
    session.once("close", () => this.sessions.delete(session));
  }

  wrap(handler: RequestHandler): RequestHandler {
    return (req, res) => {
      this.inflight++;
      let done = false;
      const finish = () => {
        if (done) return;
        done = true;
        this.inflight--;
        if (this.inflight === 0) this.idle?.();
      };
      res.once("close", finish);
      res.once("finish", finish);
      this.guard.request(req, res);
      if ("stream" in req && req.stream) {
        const stream = req.stream;
        // For HTTP/2 the compat response reports "finish" only when the whole stream closes, which
        // a client that never half-closes (a bidi Session) delays forever. The request is done
        // once the response is fully sent.
        stream.once("finish", () => {
          finish();
          // Then ask a client that is still sending to stop, with RST_STREAM(NO_ERROR) as RFC 9113
          // §8.1 allows after a complete response. The grace period lets the client read the
          // trailers first (some clients drop them when the reset arrives right behind them).
          const timer = setTimeout(() => {
            if (!stream.readableEnded && !stream.destroyed && !stream.closed)
              stream.close(http2.constants.NGHTTP2_NO_ERROR);
          }, HALF_OPEN_GRACE_MS);
          timer.unref();
          stream.once("close", () => clearTimeout(timer));
        });
      }
      handler(req, res);
    };
  }

  /**
   * A stream a StreamRoute serves: in flight until its response is complete, then, like wrap()
   * does for compat requests, a client still sending after the grace period is reset.
   */
  rawStream(stream: ServerHttp2Stream): void {
    this.inflight++;
    (stream as TrackedStream)[TRACKER] = this;
    stream.once("close", rawStreamDone);
    stream.once("finish", rawStreamFinished);
  }

  rawDone(): void {
    this.inflight--;
    if (this.inflight === 0) this.idle?.();
  }

  /** Sockets whose connection is HTTP/2 (their session is closed with GOAWAY instead). */
  readonly h2Sockets = new WeakSet<object>();

  private waitUntil(
    deadline: number,
    done: () => boolean,
    subscribe: (check: () => void) => void,
  ): Promise<void> {
    if (done()) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, Math.max(0, deadline - Date.now()));
      timer.unref();
      subscribe(() => {
        if (done()) {
          clearTimeout(timer);
          resolve();
        }
      });
    });
  }

  /**
   * Graceful close: GOAWAY to HTTP/2 peers, let in-flight requests finish, end idle HTTP/1.1
   * connections, give everything until the deadline to close, then destroy what is left.
   */
  async drain(deadline: number): Promise<void> {
    for (const session of this.sessions) {
      if (!session.closed && !session.destroyed) session.close();
    }
    await this.waitUntil(
      deadline,
      () => this.inflight === 0,
      (check) => {
        this.idle = check;
      },
    );
    for (const socket of this.sockets) {
      if (!this.h2Sockets.has(socket) && (socket as { alpnProtocol?: string | false }).alpnProtocol !== "h2")
        socket.end();
    }
    await this.waitUntil(
      deadline,
      () => this.sessions.size === 0 && this.sockets.size === 0,
      (check) => {
        for (const x of [...this.sessions, ...this.sockets]) x.once("close", check);
      },
    );
    for (const session of this.sessions) session.destroy();
    for (const socket of this.sockets) socket.destroy();
  }
}

const TRACKER = Symbol("tracker");
type TrackedStream = ServerHttp2Stream & { [TRACKER]?: ConnectionTracker };

// Module-level listeners (not closures per stream): 10,000 agent streams each hold them.
function rawStreamDone(this: TrackedStream): void {
  const tracker = this[TRACKER];
  this[TRACKER] = undefined;
  tracker?.rawDone();
}
function rawStreamFinished(this: TrackedStream): void {
  rawStreamDone.call(this);
  setTimeout(closeHalfOpen, HALF_OPEN_GRACE_MS, this).unref();
}
function closeHalfOpen(stream: ServerHttp2Stream): void {
  if (!stream.readableEnded && !stream.destroyed && !stream.closed)
    stream.close(http2.constants.NGHTTP2_NO_ERROR);
}

/** Puts `route` in front of the compat layer's "stream" listener. */
function routeStreams(
  server: http2.Http2Server | http2.Http2SecureServer,
  tracker: ConnectionTracker,
  route: StreamRoute | undefined,
): void {
  if (!route) return;
  const compat = server.listeners("stream");
  if (compat.length !== 1)
    throw new Error(`expected one compat "stream" listener on the HTTP/2 server, found ${compat.length}`);
  const toCompat = compat[0] as (...args: unknown[]) => void;
  server.removeAllListeners("stream");
  server.on("stream", (stream: ServerHttp2Stream, headers: IncomingHttpHeaders, ...rest: unknown[]) => {
    if (route.claims(headers)) {
      tracker.rawStream(stream);
      route.serve(stream, headers);
    } else {
      toCompat.call(server, stream, headers, ...rest);
    }
  });
}

export async function listenTls(
  host: string,
  port: number,
  tls: TlsOptions,
  handler: RequestHandler,
  timeouts: ListenSettings = DEFAULT_CONNECTION_TIMEOUTS,
  route?: StreamRoute,
): Promise<Listener> {
  const tracker = new ConnectionTracker(new TimeoutGuard(timeouts));
  const ticketKeys = tls.ticketKeys ? loadTicketKeys(tls.ticketKeys.file, tls.ticketKeys.option) : undefined;
  const server = http2.createSecureServer(
    {
      ...resumptionOptions(tls.ca, tls.requestClientCert ?? true, ticketKeys),
      cert: tls.cert,
      key: tls.key,
      ca: tls.ca,
      requestCert: tls.requestClientCert ?? true,
      rejectUnauthorized: false,
      allowHTTP1: true,
      maxSessionMemory: 32,
      settings: { maxHeaderListSize: MAX_HEADER_BYTES },
      maxHeaderSize: MAX_HEADER_BYTES,
      handshakeTimeout: timeouts.handshakeMs,
    } as http2.SecureServerOptions,
    tracker.wrap(handler),
  );
  // The TLS server never listens itself: a plain TCP server accepts (paused, nothing read) and
  // the handshake gate hands connections over as handshakes finish (handshake-gate.ts).
  const gate = new HandshakeGate(
    { maxInFlight: timeouts.maxHandshakes ?? DEFAULT_MAX_HANDSHAKES, maxWaiting: MAX_WAITING_HANDSHAKES },
    (socket) => server.emit("connection", socket),
  );
  const tcp = net.createServer({ pauseOnConnect: true, noDelay: true }, (socket) => gate.offer(socket));
  server.on("secureConnection", (socket) => {
    gate.secured(socket);
    tracker.socket(socket);
    if (socket.alpnProtocol !== "h2") tracker.guard.http1Socket(socket);
  });
  server.on("session", (session) => tracker.session(session));
  routeStreams(server, tracker, route);
  // A peer that fails the handshake (no TLS, garbage) or breaks HTTP/2 framing only loses its
  // own connection; none of it may take the server down.
  server.on("tlsClientError", () => {});
  server.on("sessionError", () => {});
  const bound = await listenOn(tcp, host, port, timeouts.backlog);
  const stopWatching =
    tls.ticketKeys && ticketKeys
      ? watchTicketKeys(
          tls.ticketKeys.file,
          tls.ticketKeys.option,
          ticketKeys,
          (keys) => server.setTicketKeys(keys),
          tls.ticketKeys.onReloadError,
        )
      : undefined;
  tcp.once("close", () => {
    stopWatching?.();
    gate.closeWaiting();
  });
  return listener(`https://${hostForUrl(host)}:${bound}`, bound, tcp, tracker, undefined, gate);
}

/**
 * The Listener over a bound server: closing stops accepting, drops idle HTTP/1.1 keep-alives
 * (`http1`, when one serves HTTP/1.1), and waits for open requests up to the deadline.
 */
function listener(
  url: string,
  port: number,
  server: net.Server,
  tracker: ConnectionTracker,
  http1?: http.Server,
  gate?: HandshakeGate,
): Listener {
  return {
    url,
    port,
    handshakes: () => gate?.stats(),
    async close(deadlineMs) {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      gate?.closeWaiting();
      http1?.closeIdleConnections();
      await tracker.drain(Date.now() + deadlineMs);
      await closed;
    },
  };
}

const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

/** A Duplex over `socket` that first replays `head` (the bytes read to sniff the protocol). */
function replaying(socket: Socket, head: Buffer): Duplex {
  const duplex = new Duplex({
    read() {
      socket.resume();
    },
    write(chunk, encoding, callback) {
      socket.write(chunk, encoding, callback);
    },
    final(callback) {
      socket.end();
      callback();
    },
    destroy(err, callback) {
      socket.destroy(err ?? undefined);
      callback(err);
    },
  });
  duplex.push(head);
  socket.on("data", (chunk) => {
    if (!duplex.push(chunk)) socket.pause();
  });
  socket.on("end", () => duplex.push(null));
  socket.on("error", (err) => duplex.destroy(err));
  socket.on("close", () => duplex.destroy());
  Object.assign(duplex, {
    remoteAddress: socket.remoteAddress,
    remotePort: socket.remotePort,
    encrypted: false,
  });
  return duplex;
}

export async function listenInsecure(
  host: string,
  port: number,
  handler: RequestHandler,
  timeouts: ListenSettings = DEFAULT_CONNECTION_TIMEOUTS,
  route?: StreamRoute,
): Promise<Listener> {
  const tracker = new ConnectionTracker(new TimeoutGuard(timeouts));
  const wrapped = tracker.wrap(handler);
  const h2c = http2.createServer(
    { settings: { maxHeaderListSize: MAX_HEADER_BYTES } } as http2.ServerOptions,
    wrapped,
  );
  const h1 = http.createServer({ maxHeaderSize: MAX_HEADER_BYTES }, wrapped);
  h2c.on("session", (session) => tracker.session(session));
  h2c.on("sessionError", () => {});
  routeStreams(h2c, tracker, route);
  // noDelay: nghttp2 batches its own frames; with Nagle each small write after a large one waited
  // for the peer's delayed ACK (≈ 40 ms), and a 2.8 MB answer on a reused connection took 2.5 s.
  const server = net.createServer({ noDelay: true }, (socket) => {
    tracker.socket(socket);
    const identified = tracker.guard.handshake(socket);
    let head = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      head = Buffer.concat([head, chunk]);
      const n = Math.min(head.length, PREFACE.length);
      const isH2 = head.subarray(0, n).equals(PREFACE.subarray(0, n));
      if (isH2 && head.length < PREFACE.length) return;
      socket.off("data", onData);
      identified();
      if (isH2) {
        tracker.h2Sockets.add(socket);
        h2c.emit("connection", replaying(socket, head));
      } else {
        socket.pause();
        socket.unshift(head);
        tracker.guard.http1Socket(socket);
        h1.emit("connection", socket);
        socket.resume();
      }
    };
    socket.on("data", onData);
    socket.on("error", () => {});
  });
  const bound = await listenOn(server, host, port, timeouts.backlog);
  return listener(`http://${hostForUrl(host)}:${bound}`, bound, server, tracker, h1);
}

/** A plain HTTP/1.1 listener for --metrics-listen. */
export async function listenPlainHttp(
  host: string,
  port: number,
  handler: RequestHandler,
  timeouts: ListenSettings = DEFAULT_CONNECTION_TIMEOUTS,
): Promise<Listener> {
  const tracker = new ConnectionTracker(new TimeoutGuard(timeouts));
  const server = http.createServer({ maxHeaderSize: MAX_HEADER_BYTES }, tracker.wrap(handler));
  server.on("connection", (socket) => {
    tracker.socket(socket);
    tracker.guard.http1Socket(socket);
  });
  const bound = await listenOn(server, host, port, timeouts.backlog);
  return listener(`http://${hostForUrl(host)}:${bound}`, bound, server, tracker, server);
}
