/**
 * The gRPC protocol of the agent's unary RPCs (Report, ReportHealth, GetDesiredGeneration) served
 * straight on node:http2 streams, without Connect: Connect's unary pipeline (web Headers, an
 * abort controller and signal per call, async-iterable transforms, the compat request/response
 * objects) cost several times the SQLite write behind a Report (docs/control-plane.md). The
 * handlers are the Connect service's own (services/agent-unary.ts); this file only does the
 * protocol, the way Connect's gRPC handler does it:
 *
 * - grpc-encoding (gzip/br, unknown → UNIMPLEMENTED naming the supported ones) and grpc-timeout
 *   (DEADLINE_EXCEEDED when it passes; a write already started still completes);
 * - exactly one length-prefixed message (none or two: UNIMPLEMENTED, a cut-off one:
 *   INVALID_ARGUMENT, over the size limit: RESOURCE_EXHAUSTED), undecodable → INVALID_ARGUMENT;
 * - then what Connect's interceptors check: the availability phase and the agent connection's
 *   client certificate (API keys are not accepted here, as on the Connect route);
 * - the answer: HEADERS, one DATA frame, the status in trailers (errors trailers-only), and one
 *   count in the RPC metrics.
 *
 * Every other protocol (Connect, Connect JSON, gRPC-web, gRPC+json) stays with Connect.
 */
import {
  constants,
  type IncomingHttpHeaders,
  type OutgoingHttpHeaders,
  type ServerHttp2Stream,
} from "node:http2";
import { performance } from "node:perf_hooks";
import type { DescMethodUnary } from "@bufbuild/protobuf";
import {
  create,
  type DescMessage,
  fromBinary,
  type MessageInitShape,
  type MessageShape,
  toBinary,
} from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Compression } from "@connectrpc/connect/protocol";
import type { Logger } from "../../common/logger.js";
import { AgentService } from "../../gen/nixfleet/v1/agent_pb.js";
import { availabilityError, type Phase } from "../auth/interceptors.js";
import { agentConnectionDecision, type PeerIdentity, peerIdentityOfStream } from "../auth/peer-identity.js";
import type { ControlPlaneMetrics } from "../metrics.js";
import type { AgentUnary } from "../services/agent-unary.js";
import { toConnectError } from "../services/errors.js";
import { type GrpcFrame, splitFrames } from "./grpc-frames.js";
import { isBinaryGrpc, OK_TRAILERS, RESPONSE_HEADERS, requestTerms, statusHeaders } from "./grpc-protocol.js";

export interface GrpcUnaryOptions {
  unary: AgentUnary;
  metrics: ControlPlaneMetrics;
  logger: Logger;
  phase: () => Phase;
  allowInsecure: boolean;
  maxMessageBytes: number;
  /**
   * A request whose body stops arriving before its end is reset (CANCEL) after this long without
   * bytes, as the listener's guard does for every compat request (connection-timeouts.ts idleMs).
   */
  halfOpenTimeoutMs: number;
}

interface UnaryMethod {
  path: string;
  input: DescMessage;
  output: DescMessage;
  call(unary: AgentUnary, peer: PeerIdentity, req: unknown): Promise<unknown>;
}

function method<I extends DescMessage, O extends DescMessage>(
  m: DescMethodUnary<I, O>,
  call: (unary: AgentUnary, peer: PeerIdentity, req: MessageShape<I>) => Promise<MessageInitShape<O>>,
): [string, UnaryMethod] {
  const path = `/${m.parent.typeName}/${m.name}`;
  return [path, { path, input: m.input, output: m.output, call: call as UnaryMethod["call"] }];
}

const METHODS = new Map<string, UnaryMethod>([
  method(AgentService.method.report, (u, peer, req) => u.report(peer, req)),
  method(AgentService.method.reportHealth, (u, peer, req) => u.reportHealth(peer, req)),
  method(AgentService.method.getDesiredGeneration, (u, peer, req) => u.getDesiredGeneration(peer, req)),
]);

/** Whether a request is one of the agent's unary RPCs in the binary gRPC protocol. */
export function claimsUnary(headers: IncomingHttpHeaders): boolean {
  return headers[":method"] === "POST" && METHODS.has(headers[":path"] ?? "") && isBinaryGrpc(headers);
}

const STATE = Symbol("grpcUnary");
type Stream = ServerHttp2Stream & { [STATE]?: UnaryCall };

/** Serves a claimed stream. */
export function serveUnary(
  o: GrpcUnaryOptions,
  stream: ServerHttp2Stream,
  headers: IncomingHttpHeaders,
): void {
  const call = new UnaryCall(o, METHODS.get(headers[":path"]!)!, stream as Stream);
  (stream as Stream)[STATE] = call;
  stream.on("data", onData);
  stream.on("end", onEnd);
  stream.on("error", onError);
  stream.on("close", onClose);
  stream.on("wantTrailers", onWantTrailers);
  stream.setTimeout(o.halfOpenTimeoutMs, onHalfOpen);
  call.start(headers);
}

function onData(this: Stream, chunk: Buffer): void {
  this[STATE]?.receive(chunk);
}
function onEnd(this: Stream): void {
  this.setTimeout(0);
  this[STATE]?.requestEnded();
}
function onHalfOpen(this: Stream): void {
  this.close(constants.NGHTTP2_CANCEL);
}
function onError(): void {
  // A reset or broken connection; "close" follows.
}
function onClose(this: Stream): void {
  this[STATE]?.closed();
}
function onWantTrailers(this: Stream): void {
  if (!this.destroyed) this.sendTrailers(OK_TRAILERS);
}
function deadlineExpired(call: UnaryCall): void {
  call.finish(new ConnectError("the operation timed out (grpc-timeout)", Code.DeadlineExceeded));
}

class UnaryCall {
  private readonly started = performance.now();
  private compression: Compression | null = null;
  private pending: Buffer | null = null;
  private message: GrpcFrame | null = null;
  private extra = false;
  private done = false;
  private deadline: NodeJS.Timeout | null = null;

  constructor(
    private readonly o: GrpcUnaryOptions,
    private readonly m: UnaryMethod,
    private readonly stream: Stream,
  ) {}

  /** What Connect's gRPC handler checks before reading the body: compression and timeout. */
  start(headers: IncomingHttpHeaders): void {
    const terms = requestTerms(headers);
    if (terms.error) {
      this.finish(terms.error);
      return;
    }
    this.compression = terms.compression;
    if (terms.timeoutMs !== undefined) this.deadline = setTimeout(deadlineExpired, terms.timeoutMs, this);
  }

  receive(chunk: Buffer): void {
    if (this.done) return;
    try {
      const split = splitFrames(this.pending, chunk, this.o.maxMessageBytes);
      this.pending = split.rest;
      for (const frame of split.frames) {
        if (this.message) this.extra = true;
        else this.message = frame;
      }
    } catch (err) {
      this.finish(toConnectError(err));
    }
  }

  requestEnded(): void {
    if (this.done) return;
    // A reset (RST_STREAM, e.g. CANCEL) also ends the readable side: that is the client leaving.
    if (this.stream.aborted) {
      this.closed();
      return;
    }
    if (this.pending) {
      this.finish(new ConnectError("protocol error: incomplete envelope", Code.InvalidArgument));
      return;
    }
    if (!this.message || this.extra) {
      this.finish(
        new ConnectError(
          `protocol error: ${this.message ? "received extra" : "missing"} input message for unary method`,
          Code.Unimplemented,
        ),
      );
      return;
    }
    const { compressed, payload } = this.message;
    this.message = null;
    if (!compressed) {
      this.run(payload);
      return;
    }
    if (!this.compression) {
      this.finish(
        new ConnectError(
          "grpc-encoding: a message is flagged as compressed, but the request names no compression",
          Code.InvalidArgument,
        ),
      );
      return;
    }
    this.compression.decompress(payload, this.o.maxMessageBytes).then(
      (bytes) => this.run(bytes),
      (err: unknown) => this.finish(ConnectError.from(err, Code.InvalidArgument)),
    );
  }

  /** Decodes the request, checks what Connect's interceptors check, and calls the handler. */
  private run(bytes: Uint8Array): void {
    if (this.done) return;
    let req: unknown;
    try {
      req = fromBinary(this.m.input, bytes);
    } catch (err) {
      this.finish(
        new ConnectError(
          `request: not a valid binary ${this.m.input.typeName}: ${err instanceof Error ? err.message : String(err)}`,
          Code.InvalidArgument,
        ),
      );
      return;
    }
    const refused = availabilityError(this.o.phase());
    if (refused) {
      this.finish(refused);
      return;
    }
    const peer = peerIdentityOfStream(this.stream);
    const decision = agentConnectionDecision(peer, this.o.allowInsecure);
    if (!decision.ok) {
      this.finish(new ConnectError(decision.message, decision.code));
      return;
    }
    this.m.call(this.o.unary, peer, req).then(
      (res) => this.answer(res),
      (err: unknown) => this.failed(err),
    );
  }

  private answer(res: unknown): void {
    if (this.done) return;
    const payload = toBinary(this.m.output, create(this.m.output, res as MessageInitShape<DescMessage>));
    const frame = Buffer.allocUnsafe(5 + payload.length);
    frame[0] = 0;
    frame.writeUInt32BE(payload.length, 1);
    frame.set(payload, 5);
    this.end(null);
    const stream = this.stream;
    if (stream.destroyed || stream.closed) return;
    stream.respond(RESPONSE_HEADERS, { waitForTrailers: true });
    stream.end(frame);
  }

  private failed(err: unknown): void {
    // The handlers map their errors (guarded); anything else is a bug, answered as Connect does.
    if (!(err instanceof ConnectError)) this.o.logger.error({ err }, `${this.m.path} failed`);
    this.finish(err instanceof ConnectError ? err : toConnectError(err));
  }

  /** Answers with an error, trailers-only (the status in the only HEADERS frame). */
  finish(error: ConnectError): void {
    if (this.done) return;
    this.end(error.code);
    const stream = this.stream;
    if (stream.destroyed || stream.closed) return;
    stream.respond({ ...RESPONSE_HEADERS, ...statusHeaders(error) } as OutgoingHttpHeaders, {
      endStream: true,
    });
  }

  /** The stream closed before an answer: the client went away (a started write still completes). */
  closed(): void {
    if (!this.done) this.end(Code.Canceled);
    this.stream[STATE] = undefined;
  }

  private end(code: Code | null): void {
    this.done = true;
    this.pending = null;
    this.message = null;
    if (this.deadline) clearTimeout(this.deadline);
    this.deadline = null;
    this.o.metrics.rpcDone(this.m.path, code, (performance.now() - this.started) / 1000);
  }
}
