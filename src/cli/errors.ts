/**
 * CLI failures and what the user sees. Exit codes: 0 ok, 1 the operation failed (or a rollout
 * being waited on did not complete), 2 usage (bad flags, bad settings). A ConnectError's code
 * is turned into words and a next step; stack traces are never printed.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { BadRequestSchema, fieldViolationsOf } from "../common/error-details.js";

export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;

/** Bad invocation: wrong flags or values, unusable settings. */
export class UsageError extends Error {
  override name = "UsageError";
}

/** An operation that ran and failed; `hint` says what to do next. */
export class CliFailure extends Error {
  override name = "CliFailure";
  constructor(
    message: string,
    readonly hint?: string,
  ) {
    super(message);
  }
}

function connectMessage(err: ConnectError, url: string): { message: string; hint?: string } {
  const detail = err.rawMessage;
  switch (err.code) {
    case Code.Unauthenticated:
      return {
        message: `the control plane did not accept the API key: ${detail}`,
        hint:
          "pass --api-key or set NIXFLEET_API_KEY; an admin creates keys with `nixfleet keys create`, " +
          "or on the control-plane host with `nixfleet-control-plane keys create --name NAME --role admin`",
      };
    case Code.PermissionDenied:
      return {
        message: `permission denied: ${detail}`,
        hint: "use an API key with a role that allows this (readonly < deploy < admin)",
      };
    case Code.InvalidArgument: {
      // The control plane names each bad field in a google.rpc.BadRequest; list them one a line.
      const violations = fieldViolationsOf(err.findDetails(BadRequestSchema));
      if (violations.length === 0) return { message: `invalid request: ${detail}` };
      return {
        message: ["invalid request:", ...violations.map((v) => `  ${v.field}: ${v.description}`)].join("\n"),
      };
    }
    case Code.NotFound:
      return { message: `not found: ${detail}` };
    case Code.AlreadyExists:
      return { message: `already exists: ${detail}` };
    case Code.FailedPrecondition:
      return { message: `refused: ${detail}` };
    case Code.ResourceExhausted:
      return { message: `limit reached: ${detail}` };
    case Code.DeadlineExceeded:
      return {
        message: `the control plane at ${url} did not answer in time`,
        hint: "retry, or raise --timeout",
      };
    case Code.Unavailable:
      return {
        message: `cannot reach the control plane at ${url}: ${detail}`,
        hint: "check that it is running and that --control-plane-url (NIXFLEET_CONTROL_PLANE_URL) points at it",
      };
    case Code.Unimplemented:
      return (
        notFoundAtUrl(detail, url) ?? {
          message: `the control plane does not support this call: ${detail}`,
          hint: "upgrade the control plane",
        }
      );
    default:
      return { message: `${Code[err.code] ?? "error"}: ${detail}` };
  }
}

/**
 * An HTTP 404 is not an old control plane (that answers "unimplemented" itself): nothing at this
 * URL serves the API. A path after host:port is the usual cause — the API lives at the root.
 */
function notFoundAtUrl(detail: string, url: string): { message: string; hint: string } | undefined {
  if (!/^HTTP 404\b/.test(detail)) return undefined;
  let path = "";
  try {
    path = new URL(url).pathname.replace(/\/+$/, "");
  } catch {
    // an unparsable URL was refused earlier; keep the generic words
  }
  return {
    message: `nothing at ${url} answers this call (${detail}): the control plane URL looks wrong`,
    hint: path
      ? `drop "${path}": the control plane serves its API at the root, e.g. ${url.slice(0, url.length - path.length)}`
      : "check that --control-plane-url (NIXFLEET_CONTROL_PLANE_URL) points at a nixfleet control plane, not another service",
  };
}

/**
 * Plain HTTP/2 to a port that speaks TLS: the server hangs up on bytes that are not a TLS
 * handshake, which surfaces as a cancelled or reset stream (what Node says, not a status the
 * server sent — a real plain-HTTP dev control plane's own errors must keep their words).
 */
const HUNG_UP = /stream closed with error code|ECONNRESET|socket hang up|premature close|PROTOCOL_ERROR/i;

function plainToTls(err: ConnectError, url: string): { message: string; hint: string } | undefined {
  if (!url.startsWith("http:") || !HUNG_UP.test(err.rawMessage)) return undefined;
  return {
    message: `the control plane at ${url} hung up on plain HTTP (${err.rawMessage})`,
    hint: `it probably speaks TLS: use ${url.replace(/^http:/, "https:")} (with --ca-cert if its CA is not in the system store)`,
  };
}

/** A TLS failure, named by what Node (OpenSSL) said, turned into what to check. */
function tlsProblem(detail: string): { message: string; hint: string } | undefined {
  if (
    /self[- ]signed|unable to (get|verify)|certificate (has expired|is not yet valid)|CERT_|DEPTH_ZERO/i.test(
      detail,
    )
  ) {
    return {
      message: `TLS: the control plane's certificate is not trusted: ${detail}`,
      hint: "pass --ca-cert (NIXFLEET_CA_CERT) with the CA that signed it, and check that the URL's host name is in the certificate",
    };
  }
  if (/altnames|Hostname\/IP does not match/i.test(detail)) {
    return {
      message: `TLS: the control plane's certificate is not for this address: ${detail}`,
      hint: "use the host name the certificate was issued for in --control-plane-url (see its subjectAltName)",
    };
  }
  if (/alert (handshake failure|certificate required|bad certificate|unknown ca)/i.test(detail)) {
    return {
      message: `TLS: the control plane refused the handshake: ${detail}`,
      hint: "it may require a client certificate: pass --client-cert and --client-key signed by its client CA",
    };
  }
  return undefined;
}

/** Turns any error into the lines to print and the exit code. */
export function describeError(err: unknown, url: string): { lines: string[]; exitCode: number } {
  if (err instanceof UsageError) return { lines: [`error: ${err.message}`], exitCode: EXIT_USAGE };
  if (err instanceof CliFailure) {
    return {
      lines: [`error: ${err.message}`, ...(err.hint ? [`hint: ${err.hint}`] : [])],
      exitCode: EXIT_FAILURE,
    };
  }
  if (err instanceof ConnectError) {
    const { message, hint } = tlsProblem(err.rawMessage) ?? plainToTls(err, url) ?? connectMessage(err, url);
    return { lines: [`error: ${message}`, ...(hint ? [`hint: ${hint}`] : [])], exitCode: EXIT_FAILURE };
  }
  const e = err as NodeJS.ErrnoException;
  return { lines: [`error: ${e?.message ?? String(err)}`], exitCode: EXIT_FAILURE };
}
