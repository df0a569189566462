/**
 * Input validation shared by the control plane (at the RPC edge), the agent (before it hands a
 * path to nix) and the CLI (before it sends anything). Validators return a reason string or
 * undefined, so each caller turns a failure into its own error type (ConnectError,
 * config error, usage error) while the rules stay in one place.
 */

/** Thrown where a bad value must stop the operation; `field` names what was wrong. */
export class ValidationError extends Error {
  constructor(
    readonly field: string,
    readonly reason: string,
  ) {
    super(`${field}: ${reason}`);
    this.name = "ValidationError";
  }
}

/** Throws a ValidationError naming `field` when `reason` is set. */
export function check(field: string, reason: string | undefined): void {
  if (reason !== undefined) throw new ValidationError(field, reason);
}
