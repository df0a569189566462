/**
 * Domain errors the store raises from inside its transactions (the transaction is rolled back,
 * nothing is half-written). The RPC layer maps them to Connect codes (services/errors.ts).
 */

/** The object named does not exist → NOT_FOUND. */
export class NotFoundError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "NotFoundError";
  }
}

/** The request conflicts with the current state → FAILED_PRECONDITION. */
export class ConflictError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConflictError";
  }
}

/** A unique name is taken → ALREADY_EXISTS. */
export class AlreadyExistsError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "AlreadyExistsError";
  }
}
