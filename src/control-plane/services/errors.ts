/**
 * Turns domain errors into Connect errors with the right code, and makes sure nothing else
 * (a bug, a SQLite error) leaks internals: unknown failures become INTERNAL with a generic
 * message and are logged with their stack by the caller.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { ValidationError } from "../../common/validation.js";
import { AlreadyExistsError, ConflictError, NotFoundError } from "../store/errors.js";

export function toConnectError(err: unknown): ConnectError {
  if (err instanceof ConnectError) return err;
  if (err instanceof ValidationError) return new ConnectError(err.message, Code.InvalidArgument);
  if (err instanceof NotFoundError) return new ConnectError(err.message, Code.NotFound);
  if (err instanceof ConflictError) return new ConnectError(err.message, Code.FailedPrecondition);
  if (err instanceof AlreadyExistsError) return new ConnectError(err.message, Code.AlreadyExists);
  const code = (err as { code?: string }).code;
  if (code === "SQLITE_BUSY" || code === "SQLITE_LOCKED")
    return new ConnectError("the database is busy; retry shortly", Code.Unavailable);
  return new ConnectError("internal error; the control plane logged the details", Code.Internal);
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

export function invalid(field: string, reason: string): ConnectError {
  return new ConnectError(`${field}: ${reason}`, Code.InvalidArgument);
}
