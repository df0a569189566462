/**
 * Turns domain errors into Connect errors with the right code — in one place, for every handler —
 * and makes sure nothing else (a bug, a SQLite error) leaks internals: unknown failures become
 * INTERNAL with a generic message and are logged with their stack by the caller.
 *
 * Every error carries google.rpc details clients can act on without parsing the message: an
 * `ErrorInfo` with a stable reason (ERROR_REASONS) in the `nixfleet.dev` domain, and for bad input
 * a `BadRequest` naming the field and what was wrong with it.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { badRequestDetail, errorInfoDetail, type OutgoingDetail } from "../../common/error-details.js";
import { ValidationError } from "../../common/validation.js";
import { AlreadyExistsError, ConflictError, NotFoundError } from "../store/errors.js";

/** The ErrorInfo reasons, by the situation a client would handle. */
export const ERROR_REASONS = {
  invalidField: "INVALID_FIELD",
  notFound: "NOT_FOUND",
  stateConflict: "STATE_CONFLICT",
  alreadyExists: "ALREADY_EXISTS",
  databaseBusy: "DATABASE_BUSY",
  internal: "INTERNAL",
} as const;

function withDetails(message: string, code: Code, details: OutgoingDetail[]): ConnectError {
  return new ConnectError(message, code, undefined, details);
}

/** INVALID_ARGUMENT naming the field, as message ("field: reason") and as details. */
export function invalidArgument(field: string, reason: string): ConnectError {
  return withDetails(`${field}: ${reason}`, Code.InvalidArgument, [
    badRequestDetail([{ field, description: reason }]),
    errorInfoDetail(ERROR_REASONS.invalidField, { field }),
  ]);
}

/** The reason for a ConnectError a handler threw itself, by its code (NOT_FOUND → NOT_FOUND, …). */
const REASON_BY_CODE: Partial<Record<Code, string>> = {
  [Code.InvalidArgument]: "INVALID_REQUEST",
  [Code.NotFound]: ERROR_REASONS.notFound,
  [Code.FailedPrecondition]: ERROR_REASONS.stateConflict,
  [Code.AlreadyExists]: ERROR_REASONS.alreadyExists,
  [Code.PermissionDenied]: "PERMISSION_DENIED",
  [Code.Unauthenticated]: "UNAUTHENTICATED",
  [Code.ResourceExhausted]: "RESOURCE_EXHAUSTED",
  [Code.DeadlineExceeded]: "DEADLINE_EXCEEDED",
  [Code.Aborted]: "ABORTED",
  [Code.Unavailable]: "UNAVAILABLE",
};

export function toConnectError(err: unknown): ConnectError {
  if (err instanceof ConnectError) {
    // Thrown by a handler as is (`new ConnectError(…, Code.NotFound)`): give it the ErrorInfo
    // every error carries, here rather than at each throw.
    const reason = REASON_BY_CODE[err.code];
    if (err.details.length > 0 || !reason) return err;
    return new ConnectError(err.rawMessage, err.code, err.metadata, [errorInfoDetail(reason)], err.cause);
  }
  if (err instanceof ValidationError) return invalidArgument(err.field, err.reason);
  if (err instanceof NotFoundError)
    return withDetails(err.message, Code.NotFound, [errorInfoDetail(ERROR_REASONS.notFound)]);
  if (err instanceof ConflictError)
    return withDetails(err.message, Code.FailedPrecondition, [errorInfoDetail(ERROR_REASONS.stateConflict)]);
  if (err instanceof AlreadyExistsError)
    return withDetails(err.message, Code.AlreadyExists, [errorInfoDetail(ERROR_REASONS.alreadyExists)]);
  const code = (err as { code?: string }).code;
  if (code === "SQLITE_BUSY" || code === "SQLITE_LOCKED")
    return withDetails("the database is busy; retry shortly", Code.Unavailable, [
      errorInfoDetail(ERROR_REASONS.databaseBusy),
    ]);
  return withDetails("internal error; the control plane logged the details", Code.Internal, [
    errorInfoDetail(ERROR_REASONS.internal),
  ]);
}

export function isExpectedError(err: unknown): boolean {
  return (
    err instanceof ConnectError ||
    err instanceof ValidationError ||
    err instanceof NotFoundError ||
    err instanceof ConflictError ||
    err instanceof AlreadyExistsError
  );
}
