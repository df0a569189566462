/**
 * Executor leadership as pure decisions over the one lease row (holder, epoch, expires_at). The
 * store loads the row under a row lock together with the database's clock, asks these functions
 * what to write, and saves it in the same transaction — so every replica decides from the same
 * row and the same clock, whatever their own clocks say.
 *
 * The epoch is the fencing token: it grows by one whenever the lease changes holder, never
 * otherwise, so "the stored epoch equals mine" means "nobody has led since I became leader".
 */

/**
 * The lease's default TTL. A killed leader is replaced within about TTL + TTL/3 (its lease runs
 * out, then the next claim of another replica takes it); a leader whose renewals stall for a TTL
 * (database failover, a long pause) loses it. Six seconds: takeover within ~8 s, and a primary
 * failover of a few seconds rides through.
 */
export const DEFAULT_EXECUTOR_LEASE_MS = 6000;

export interface LeaseRow {
  /** The holding replica's instance id ('' before anyone held it). */
  holder: string;
  epoch: number;
  /** Milliseconds since the epoch, on the database's clock; at or before `now` = expired. */
  expiresAt: number;
}

export type LeaseDecision =
  /** I hold it: extend it; the epoch stays (nobody else led in between). */
  | { kind: "renew"; row: LeaseRow }
  /** Free or expired: take it with the next epoch, which fences the previous holder. */
  | { kind: "acquire"; row: LeaseRow }
  /** Another replica holds a live lease: write nothing. */
  | { kind: "follow"; row: LeaseRow };

/**
 * What a replica `me` claiming the lease at `now` (database clock) for `ttlMs` writes.
 *
 * Renewing keeps the epoch even when the lease had already expired: the holder is still `me`, so
 * nobody acquired it meanwhile, and the writes of my term stay valid. A new instance (a restarted
 * process has a new id) always acquires with a new epoch.
 */
export function decideLease(current: LeaseRow, me: string, now: number, ttlMs: number): LeaseDecision {
  if (me === "") throw new Error("a lease holder id must not be empty");
  if (current.holder === me)
    return { kind: "renew", row: { holder: me, epoch: current.epoch, expiresAt: now + ttlMs } };
  if (current.holder !== "" && current.expiresAt > now) return { kind: "follow", row: current };
  return { kind: "acquire", row: { holder: me, epoch: current.epoch + 1, expiresAt: now + ttlMs } };
}

/**
 * What a leader stepping down (shutdown) writes: the lease expired now, so another replica takes
 * it at its next attempt instead of waiting out the TTL. Null when it is no longer ours — then
 * there is nothing to give back.
 */
export function decideRelease(current: LeaseRow, me: string, epoch: number, now: number): LeaseRow | null {
  if (current.holder !== me || current.epoch !== epoch) return null;
  return { ...current, expiresAt: Math.min(current.expiresAt, now) };
}

/** Whether an executor write fenced with `epoch` may go ahead given the stored row. */
export function epochCurrent(stored: LeaseRow, epoch: number): boolean {
  return stored.epoch === epoch;
}

/**
 * The local deadline of a lease granted by a claim sent at `sentAt` (this process's monotonic
 * clock): the database set expires_at = its now + ttl at some moment after `sentAt`, so counting
 * the TTL from `sentAt` never overestimates how long we hold it (clock rates aside).
 */
export function localDeadline(sentAt: number, ttlMs: number): number {
  return sentAt + ttlMs;
}
