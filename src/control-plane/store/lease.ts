/**
 * The executor lease row: loading and saving only (../leader/lease.ts decides), and the fencing
 * check every executor write makes first.
 *
 * Locks on PostgreSQL: a claim takes the row FOR UPDATE; a fenced write takes it FOR SHARE and
 * keeps it until its transaction commits. So a takeover (which bumps the epoch) waits for a write
 * of the old term in progress, and a write of the old term that comes after the takeover sees the
 * new epoch and is refused: the deposed leader's writes and the new leader's never interleave.
 * On SQLite the whole transaction holds the database's write lock.
 */
import { sql } from "kysely";
import {
  decideLease,
  decideRelease,
  epochCurrent,
  type LeaseDecision,
  type LeaseRow,
} from "../leader/lease.js";
import type { Ctx } from "./context.js";

/** An executor write refused because another replica has led since `epoch` (nothing was written). */
export class StaleEpochError extends Error {
  constructor(
    readonly epoch: number,
    readonly current: LeaseRow,
  ) {
    super(
      `executor write refused: it carries epoch ${epoch}, but the executor lease is at epoch ${current.epoch} (held by ${current.holder || "nobody"}); this replica is no longer the leader`,
    );
    this.name = "StaleEpochError";
  }
}

/**
 * The lease table, kept out of tables.ts's Tables on purpose: `migrate` copies every table there,
 * and who leads is decided afresh by the replicas that run, never copied from another database.
 */
type LeaseTables = {
  executor_lease: { id: number; holder: string; epoch: number; expires_at: number };
};

const leaseDb = (ctx: Ctx) => ctx.q.withTables<LeaseTables>();

async function loadLease(ctx: Ctx, lock: "update" | "share"): Promise<LeaseRow> {
  let query = leaseDb(ctx)
    .selectFrom("executor_lease")
    .select(["holder", "epoch", "expires_at"])
    .where("id", "=", 1);
  if (ctx.kind === "postgres") query = lock === "update" ? query.forUpdate() : query.forShare();
  const row = await query.executeTakeFirst();
  // Seeded by the migration; a missing row means the schema was tampered with.
  if (!row) throw new Error("the executor_lease row is missing (schema damaged?)");
  return { holder: row.holder, epoch: Number(row.epoch), expiresAt: Number(row.expires_at) };
}

async function saveLease(ctx: Ctx, row: LeaseRow): Promise<void> {
  await leaseDb(ctx)
    .updateTable("executor_lease")
    .set({ holder: row.holder, epoch: row.epoch, expires_at: row.expiresAt })
    .where("id", "=", 1)
    .execute();
}

/**
 * The database's clock in ms on PostgreSQL — every replica compares expiry times on the same
 * clock, so skew between replica hosts cannot make two of them think they lead. SQLite has one
 * process, whose clock is the only one.
 */
async function databaseNow(ctx: Ctx, localNow: number): Promise<number> {
  if (ctx.kind !== "postgres") return localNow;
  const { rows } = await sql<{
    now: number;
  }>`SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS now`.execute(ctx.q);
  return Number(rows[0]!.now);
}

/** A decision plus the clock it used (the database's on PostgreSQL). */
export type LeaseClaim = LeaseDecision & { now: number };

export async function claimLease(
  ctx: Ctx,
  holder: string,
  ttlMs: number,
  localNow: number,
): Promise<LeaseClaim> {
  const current = await loadLease(ctx, "update");
  const now = await databaseNow(ctx, localNow);
  const decision = decideLease(current, holder, now, ttlMs);
  if (decision.kind !== "follow") await saveLease(ctx, decision.row);
  return { ...decision, now };
}

/** Gives the lease back (expires it now) if `holder` still holds it at `epoch`. */
export async function releaseLease(
  ctx: Ctx,
  holder: string,
  epoch: number,
  localNow: number,
): Promise<boolean> {
  const current = await loadLease(ctx, "update");
  const row = decideRelease(current, holder, epoch, await databaseNow(ctx, localNow));
  if (row) await saveLease(ctx, row);
  return row !== null;
}

export async function readLease(ctx: Ctx): Promise<LeaseRow> {
  return loadLease(ctx, "share");
}

/**
 * The fence: first statement of every executor write. `epoch` null is the sole process on SQLite
 * (always the leader, nothing to fence against). Throws StaleEpochError — rolling the whole
 * transaction back — when another replica has led since.
 */
export async function assertEpoch(ctx: Ctx, epoch: number | null | undefined): Promise<void> {
  if (epoch === null || epoch === undefined) return;
  const stored = await loadLease(ctx, "share");
  if (!epochCurrent(stored, epoch)) throw new StaleEpochError(epoch, stored);
}
