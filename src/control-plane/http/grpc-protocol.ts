/**
 * What the raw gRPC paths (grpc-session.ts, grpc-unary.ts) share of the protocol: the
 * compressions they accept (Connect's own codecs, so both paths accept the same), the request
 * headers they read before the body, the response headers, and the status as trailers (Connect's encoder: grpc-status, percent-encoded
 * grpc-message, grpc-status-details-bin).
 */
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from "node:http2";
import type { ConnectError } from "@connectrpc/connect";
import { type Compression, compressionNegotiate } from "@connectrpc/connect/protocol";
import { parseTimeout, setTrailerStatus } from "@connectrpc/connect/protocol-grpc";
import { COMPRESSIONS } from "./compression.js";

export const RESPONSE_HEADERS: OutgoingHttpHeaders = {
  ":status": 200,
  "content-type": "application/grpc+proto",
  "grpc-accept-encoding": COMPRESSIONS.map((c) => c.name).join(","),
};

/** The status of a successful call, as trailers. */
export const OK_TRAILERS: OutgoingHttpHeaders = { "grpc-status": "0" };

/** Whether the request is the binary gRPC protocol (gRPC+json and the rest are Connect's). */
export function isBinaryGrpc(headers: IncomingHttpHeaders): boolean {
  const type = headers["content-type"];
  return type === "application/grpc" || type === "application/grpc+proto";
}

/** A header's value as one string (null: absent). */
export function header(value: string | string[] | undefined): string | null {
  if (value === undefined) return null;
  return Array.isArray(value) ? value.join(",") : value;
}

/** grpc-status, grpc-message (percent-encoded) and grpc-status-details-bin, by Connect's encoder. */
export function statusHeaders(error: ConnectError | null): OutgoingHttpHeaders {
  if (!error) return OK_TRAILERS;
  const out: OutgoingHttpHeaders = {};
  setTrailerStatus(new Headers(), error).forEach((value, key) => {
    out[key] = value;
  });
  return out;
}

/** What the request's headers ask for, as Connect's gRPC handler reads them before the body. */
export type RequestTerms =
  | { error: null; compression: Compression | null; timeoutMs: number | undefined }
  | { error: ConnectError };

/** grpc-encoding against the compressions we accept, and grpc-timeout. */
export function requestTerms(headers: IncomingHttpHeaders): RequestTerms {
  const negotiated = compressionNegotiate(
    COMPRESSIONS,
    header(headers["grpc-encoding"]),
    null,
    "grpc-accept-encoding",
  );
  if (negotiated.error) return { error: negotiated.error };
  const timeout = parseTimeout(header(headers["grpc-timeout"]), Number.MAX_SAFE_INTEGER);
  if (timeout.error) return { error: timeout.error };
  return { error: null, compression: negotiated.request, timeoutMs: timeout.timeoutMs };
}
