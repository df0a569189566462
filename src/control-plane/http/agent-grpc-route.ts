/**
 * The gRPC protocol of what agents call — Session (grpc-session.ts) and the unary Report,
 * ReportHealth and GetDesiredGeneration (grpc-unary.ts) — as one route on the raw HTTP/2 streams
 * of the listener, ahead of Connect, which serves every other protocol and RPC.
 */
import type { IncomingHttpHeaders, ServerHttp2Stream } from "node:http2";
import { claimsSession, type GrpcSessionOptions, SESSION_PATH, serveSession } from "./grpc-session.js";
import { claimsUnary, type GrpcUnaryOptions, serveUnary } from "./grpc-unary.js";
import type { StreamRoute } from "./listener.js";

export function agentGrpcRoute(session: GrpcSessionOptions, unary: GrpcUnaryOptions): StreamRoute {
  return {
    claims: (headers: IncomingHttpHeaders) => claimsSession(headers) || claimsUnary(headers),
    serve: (stream: ServerHttp2Stream, headers: IncomingHttpHeaders) => {
      if (headers[":path"] === SESSION_PATH) serveSession(session, stream, headers);
      else serveUnary(unary, stream, headers);
    },
  };
}
