/**
 * The gRPC protocol of AgentService/Session — what every agent speaks — served straight on
 * node:http2 streams, without Connect: with 10,000 agents, Connect's per-stream chain of
 * generators, promises and closures cost ≈ 56 KB of heap per stream and ≈ 2 s of CPU per fan-out
 * (docs/benchmarks.md). Here a stream is one GrpcSession object (plus its hub connection after
 * Hello); the stream's listeners are module-level functions that find it through a symbol, and
 * pushed messages are frames the hub encoded once.
 *
 * It does what the Connect path does for Session (services/agent-session.ts holds the shared
 * rules): the availability phase, the agent authentication of auth/peer-identity.ts, Hello and its
 * timeout, the message size limit, grpc-encoding gzip/br (Connect's own codecs), grpc-timeout,
 * decode errors as INVALID_ARGUMENT, metrics, and the status in trailers (grpc-status,
 * percent-encoded grpc-message, grpc-status-details-bin — Connect's encoder). Every other protocol
 * and RPC stays with Connect (`claims`).
 */
import type { IncomingHttpHeaders, OutgoingHttpHeaders, ServerHttp2Stream } from "node:http2";
import { performance } from "node:perf_hooks";
import { fromBinary } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Compression } from "@connectrpc/connect/protocol";
import type { Logger } from "../../common/logger.js";
import { type AgentMessage, AgentMessageSchema, AgentService } from "../../gen/nixfleet/v1/agent_pb.js";
import { availabilityError, type Phase } from "../auth/interceptors.js";
import { agentConnectionDecision, type PeerIdentity, peerIdentityOfStream } from "../auth/peer-identity.js";
import type { ControlPlaneMetrics } from "../metrics.js";
import { AgentConnection } from "../push/connection.js";
import type { PushHub } from "../push/hub.js";
import type { OutgoingMessage } from "../push/outgoing.js";
import { type AgentSessions, helloTimeoutError } from "../services/agent-session.js";
import { toConnectError } from "../services/errors.js";
import { type GrpcFrame, splitFrames } from "./grpc-frames.js";
import { isBinaryGrpc, RESPONSE_HEADERS, requestTerms, statusHeaders } from "./grpc-protocol.js";

export const SESSION_PATH = `/${AgentService.typeName}/${AgentService.method.session.name}`;

export interface GrpcSessionOptions {
  sessions: AgentSessions;
  hub: PushHub;
  metrics: ControlPlaneMetrics;
  logger: Logger;
  phase: () => Phase;
  allowInsecure: boolean;
  helloTimeoutMs: number;
  maxMessageBytes: number;
}

/** Whether a request is a gRPC (binary) Session — the rest, gRPC+json included, is Connect's. */
export function claimsSession(headers: IncomingHttpHeaders): boolean {
  return headers[":path"] === SESSION_PATH && headers[":method"] === "POST" && isBinaryGrpc(headers);
}

const STATE = Symbol("grpcSession");
type Stream = ServerHttp2Stream & { [STATE]?: GrpcSession };

/** Serves a claimed stream. */
export function serveSession(
  o: GrpcSessionOptions,
  stream: ServerHttp2Stream,
  headers: IncomingHttpHeaders,
): void {
  const s = new GrpcSession(o, stream as Stream, peerIdentityOfStream(stream));
  (stream as Stream)[STATE] = s;
  stream.on("data", onData);
  stream.on("end", onEnd);
  stream.on("error", onError);
  stream.on("close", onClose);
  stream.on("wantTrailers", onWantTrailers);
  s.start(headers);
}

function onData(this: Stream, chunk: Buffer): void {
  this[STATE]?.receive(chunk);
}
function onEnd(this: Stream): void {
  this[STATE]?.halfClosed();
}
function onError(): void {
  // A reset or broken connection; "close" follows and cleans up.
}
function onClose(this: Stream): void {
  this[STATE]?.closed();
}
function onWantTrailers(this: Stream): void {
  const trailers = this[STATE]?.trailers;
  if (trailers && !this.destroyed) this.sendTrailers(trailers);
}
function onDrain(this: Stream): void {
  this[STATE]?.drained();
}
function helloExpired(s: GrpcSession): void {
  s.fail(helloTimeoutError(s.o.helloTimeoutMs));
}
function deadlineExpired(s: GrpcSession): void {
  s.fail(new ConnectError("the operation timed out (grpc-timeout)", Code.DeadlineExceeded));
}

/** The hub's view of a Session on a raw stream: writes go straight to the HTTP/2 stream. */
class StreamConnection extends AgentConnection {
  constructor(
    machineId: string,
    openedAt: number,
    private readonly s: GrpcSession,
  ) {
    super(machineId, "session", openedAt);
  }
  protected writable(): boolean {
    return this.s.writable();
  }
  protected write(message: OutgoingMessage): void {
    this.s.write(message.frame());
  }
  protected wake(): void {
    this.s.waitForDrain();
  }
  protected end(error: ConnectError | null): void {
    this.s.finish(error);
  }
  /** The stream drained: write what waited. */
  drained(): void {
    this.flush();
  }
}

class GrpcSession {
  conn: StreamConnection | null = null;
  trailers: OutgoingHttpHeaders | null = null;
  private readonly started = performance.now();
  private pending: Buffer | null = null;
  /** Frames read while an earlier one is still being handled (a Hello, a report write). */
  private inbox: GrpcFrame[] | null = null;
  private compression: Compression | null = null;
  private busy = false;
  private clientDone = false;
  private ended = false;
  private headersSent = false;
  private drainWaiting = false;
  private helloTimer: NodeJS.Timeout | null = null;
  private deadline: NodeJS.Timeout | null = null;

  constructor(
    readonly o: GrpcSessionOptions,
    private readonly stream: Stream,
    private readonly peer: PeerIdentity,
  ) {}

  /** The checks Connect's interceptors and protocol handler make before reading a message. */
  start(headers: IncomingHttpHeaders): void {
    const refused = availabilityError(this.o.phase());
    if (refused) {
      this.finish(refused);
      return;
    }
    const decision = agentConnectionDecision(this.peer, this.o.allowInsecure);
    if (!decision.ok) {
      this.finish(new ConnectError(decision.message, decision.code));
      return;
    }
    const terms = requestTerms(headers);
    if (terms.error) {
      this.finish(terms.error);
      return;
    }
    this.compression = terms.compression;
    if (terms.timeoutMs !== undefined) this.deadline = setTimeout(deadlineExpired, terms.timeoutMs, this);
    this.helloTimer = setTimeout(helloExpired, this.o.helloTimeoutMs, this);
  }

  receive(chunk: Buffer): void {
    if (this.ended) return;
    let frames: GrpcFrame[];
    try {
      const split = splitFrames(this.pending, chunk, this.o.maxMessageBytes);
      this.pending = split.rest;
      frames = split.frames;
    } catch (err) {
      this.fail(err);
      return;
    }
    for (const frame of frames) {
      if (this.ended) return;
      if (frame.compressed && !this.compression) {
        this.fail(
          new ConnectError(
            "grpc-encoding: a message is flagged as compressed, but the request names no compression",
            Code.InvalidArgument,
          ),
        );
        return;
      }
      if (this.busy || this.inbox) {
        this.inbox ??= [];
        this.inbox.push(frame);
      } else {
        this.handle(frame);
      }
    }
  }

  /** Handles queued messages in order, one asynchronous step at a time. */
  private pump(): void {
    while (!this.busy && !this.ended && this.inbox) {
      const next = this.inbox.shift()!;
      if (this.inbox.length === 0) this.inbox = null;
      this.handle(next);
    }
    if (!this.busy && !this.inbox && this.clientDone && !this.ended) this.finish(null);
  }

  private handle(frame: GrpcFrame): void {
    if (frame.compressed) {
      // Rare (agents do not compress): the message waits for its decompression, the rest in order.
      this.wait(
        this.compression!.decompress(frame.payload, this.o.maxMessageBytes).then((bytes) =>
          this.ended ? undefined : this.dispatch(bytes),
        ),
      );
      return;
    }
    const result = this.dispatch(frame.payload);
    if (result) this.wait(result);
  }

  private dispatch(bytes: Uint8Array): Promise<void> | undefined {
    let msg: AgentMessage;
    try {
      msg = fromBinary(AgentMessageSchema, bytes);
    } catch (err) {
      this.fail(
        new ConnectError(
          `request: not a valid binary ${AgentMessageSchema.typeName}: ${err instanceof Error ? err.message : String(err)}`,
          Code.InvalidArgument,
        ),
      );
      return undefined;
    }
    if (this.conn) {
      try {
        return this.o.sessions.message(this.conn, msg);
      } catch (err) {
        this.fail(err);
        return undefined;
      }
    }
    return this.hello(msg);
  }

  private async hello(msg: AgentMessage): Promise<void> {
    if (this.helloTimer) clearTimeout(this.helloTimer);
    this.helloTimer = null;
    const machineId = await this.o.sessions.hello(this.peer, msg);
    if (this.ended) return;
    const conn = new StreamConnection(machineId, this.o.hub.now(), this);
    this.conn = conn;
    this.o.hub.register(conn);
    const initial = await this.o.sessions.initial(machineId);
    if (!conn.closed) conn.sendInitial(initial);
  }

  /** Reading pauses while an asynchronous step runs (HTTP/2 flow control holds the agent back). */
  private wait(step: Promise<unknown>): void {
    this.busy = true;
    this.stream.pause();
    step.then(
      () => {
        this.busy = false;
        if (this.ended) return;
        this.stream.resume();
        this.pump();
      },
      (err: unknown) => {
        this.busy = false;
        this.fail(err);
      },
    );
  }

  /** The client half-closed: like Connect, the Session ends normally once its messages are handled. */
  halfClosed(): void {
    // A reset (RST_STREAM with an error, e.g. CANCEL) also ends the readable side: a cancel, not an end.
    if (this.stream.aborted) {
      this.closed();
      return;
    }
    this.clientDone = true;
    this.pump();
  }

  writable(): boolean {
    return !this.ended && !this.stream.destroyed && !this.stream.writableNeedDrain;
  }

  write(frame: Buffer): void {
    if (!this.headersSent) this.respond();
    this.stream.write(frame);
  }

  waitForDrain(): void {
    if (this.drainWaiting || this.ended) return;
    this.drainWaiting = true;
    this.stream.once("drain", onDrain);
  }

  drained(): void {
    this.drainWaiting = false;
    this.conn?.drained();
  }

  private respond(): void {
    this.headersSent = true;
    this.stream.respond(RESPONSE_HEADERS, { waitForTrailers: true });
  }

  /** Ends the Session with an error from anywhere (mapped like Connect's handlers). */
  fail(err: unknown): void {
    if (this.ended) return;
    const mapped = this.conn ? this.o.sessions.failure(this.conn, err) : toConnectError(err);
    if (mapped?.code === Code.Internal && !this.conn) this.o.logger.error({ err }, "Session failed");
    this.finish(mapped);
  }

  /** Ends the response with the status (null: OK), once; the hub forgets the stream. */
  finish(error: ConnectError | null): void {
    if (this.conn && !this.conn.closed) {
      this.conn.close(error); // calls back here through StreamConnection.end
      return;
    }
    if (this.ended) return;
    this.ended = true;
    this.clearTimers();
    this.inbox = null;
    this.pending = null;
    if (this.conn) this.o.hub.detach(this.conn);
    this.count(error ? error.code : null);
    const stream = this.stream;
    if (stream.destroyed || stream.closed) return;
    const status = statusHeaders(error);
    if (!this.headersSent) {
      // Trailers-only: the status in the only HEADERS frame.
      this.headersSent = true;
      stream.respond({ ...RESPONSE_HEADERS, ...status }, { endStream: true });
    } else {
      this.trailers = status;
      stream.end();
    }
  }

  /** The stream closed (done, reset by the client, or the connection broke). */
  closed(): void {
    if (!this.ended) {
      this.ended = true;
      this.clearTimers();
      if (this.conn) {
        this.conn.close();
        this.o.hub.detach(this.conn);
      }
      this.count(Code.Canceled);
    }
    this.stream[STATE] = undefined;
  }

  private count(code: Code | null): void {
    this.o.metrics.rpcDone(SESSION_PATH, code, (performance.now() - this.started) / 1000);
  }

  private clearTimers(): void {
    if (this.helloTimer) clearTimeout(this.helloTimer);
    if (this.deadline) clearTimeout(this.deadline);
    this.helloTimer = null;
    this.deadline = null;
  }
}
