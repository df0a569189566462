/**
 * Group commit for agent evidence (reports, health reports): writes that arrive together share
 * one transaction, so a fleet's reports pay one BEGIN/COMMIT (and, on SQLite, one append of the
 * touched pages to the WAL) per group instead of per report. A write does what is particular to
 * it (its machine row) and leaves a row for the group's end, where `flush` writes them all at once
 * (the evidence rows and their sequence positions: two statements per group, not per report).
 *
 * - Durable before acknowledged: a write's promise settles only after its group committed.
 * - Isolated: a write that throws rejects with its own error, and the rest of the group commits.
 *   The group first runs as it is (a SAVEPOINT and its RELEASE per write cost as much as a third
 *   of a report's statements); when a write or the flush throws, that transaction is rolled back
 *   and the group runs once more with each write and its own flush inside its own SAVEPOINT, so
 *   the ones that fail again are rolled back alone (PostgreSQL aborts the whole transaction on a
 *   failed statement: only a savepoint keeps the rest). A write may thus run twice, but only one
 *   run is ever committed.
 * - A failed COMMIT (or anything that breaks the transaction itself) rejects every write of the
 *   group; nothing of it was stored.
 *
 * A group is whatever queued while the previous one ran, plus what arrives in the same turn of the
 * event loop (the drain starts from setImmediate, after the pending I/O callbacks have run).
 */
import { CompiledQuery } from "kysely";
import type { Ctx } from "./context.js";

/** Bounds how long one group holds the write lock. */
const MAX_GROUP = 128;

const SAVEPOINT = CompiledQuery.raw("SAVEPOINT evidence");
const RELEASE = CompiledQuery.raw("RELEASE SAVEPOINT evidence");
const ROLLBACK_TO = CompiledQuery.raw("ROLLBACK TO SAVEPOINT evidence");

/** What a write returns: its caller's answer, and the row it leaves for the group's flush. */
export interface Written<T, Row> {
  value: T;
  row: Row;
}

interface Pending<Row> {
  work: (ctx: Ctx) => Promise<Written<unknown, Row>>;
  resolve: (value: unknown) => void;
  reject: (err: unknown) => void;
}

type Outcome = { ok: true; value: unknown } | { ok: false; err: unknown };

/** A write of the group (or the flush) threw in the run without savepoints. */
class WriteFailed extends Error {
  constructor(readonly err: unknown) {
    super("a write of the group failed");
  }
}

export interface GroupCommitOptions<Row> {
  /** Runs `fn` in one transaction (the store's own; it may run `fn` again on a retryable abort). */
  transaction: <T>(fn: (ctx: Ctx) => Promise<T>) => Promise<T>;
  /** Writes the rows the group's writes left, in their order; the last work of its transaction. */
  flush: (ctx: Ctx, rows: Row[]) => Promise<void>;
  /** Errors that must abort the whole transaction so it is retried (PostgreSQL deadlocks). */
  abortsGroup?: (err: unknown) => boolean;
}

export class GroupCommit<Row> {
  private queue: Pending<Row>[] = [];
  private draining: Promise<void> | null = null;
  /**
   * Groups committed, writes in them, and groups run again with savepoints because a write
   * failed, for tests and the bench.
   */
  readonly stats = { groups: 0, writes: 0, isolatedReruns: 0 };

  constructor(private readonly o: GroupCommitOptions<Row>) {}

  /** Runs `work` in the next group; resolves with its value once that group committed. */
  submit<T>(work: (ctx: Ctx) => Promise<Written<T, Row>>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.queue.push({ work, resolve: resolve as (v: unknown) => void, reject });
      if (!this.draining) {
        this.draining = new Promise<void>((done) => setImmediate(() => void this.drain().finally(done)));
      }
    });
  }

  /** Resolves when every write submitted so far has settled (close waits for this). */
  async idle(): Promise<void> {
    while (this.draining) await this.draining;
  }

  private async drain(): Promise<void> {
    try {
      while (this.queue.length > 0) {
        const group = this.queue.splice(0, MAX_GROUP);
        await this.commit(group);
        // Let the I/O that arrived meanwhile queue up before the next group starts.
        if (this.queue.length > 0) await new Promise((r) => setImmediate(r));
      }
    } finally {
      this.draining = null;
    }
  }

  private async commit(group: Pending<Row>[]): Promise<void> {
    let outcomes: Outcome[];
    try {
      outcomes = await this.run(group);
    } catch (err) {
      for (const p of group) p.reject(err);
      return;
    }
    this.stats.groups++;
    this.stats.writes += group.length;
    group.forEach((p, i) => {
      const o = outcomes[i]!;
      if (o.ok) p.resolve(o.value);
      else p.reject(o.err);
    });
  }

  /** The group's outcomes once its transaction committed; throws when nothing of it was stored. */
  private async run(group: Pending<Row>[]): Promise<Outcome[]> {
    try {
      return await this.o.transaction(async (ctx) => {
        const outcomes: Outcome[] = [];
        const rows: Row[] = [];
        try {
          for (const p of group) {
            const { value, row } = await p.work(ctx);
            outcomes.push({ ok: true, value });
            rows.push(row);
          }
          await this.o.flush(ctx, rows);
        } catch (err) {
          // A deadlock must reach the store's transaction, which runs the group again.
          throw this.o.abortsGroup?.(err) ? err : new WriteFailed(err);
        }
        return outcomes;
      });
    } catch (err) {
      if (!(err instanceof WriteFailed)) throw err;
      // Alone in its transaction, the write's failure rolled back only itself.
      if (group.length === 1) return [{ ok: false, err: err.err }];
    }
    this.stats.isolatedReruns++;
    return this.o.transaction(async (ctx) => {
      const outcomes: Outcome[] = [];
      for (const p of group) outcomes.push(await this.isolated(ctx, p));
      return outcomes;
    });
  }

  private async isolated(ctx: Ctx, p: Pending<Row>): Promise<Outcome> {
    await ctx.q.executeQuery(SAVEPOINT);
    try {
      const { value, row } = await p.work(ctx);
      await this.o.flush(ctx, [row]);
      await ctx.q.executeQuery(RELEASE);
      return { ok: true, value };
    } catch (err) {
      if (this.o.abortsGroup?.(err)) throw err;
      // If the database already ended the transaction (SQLite does on some I/O errors), this
      // throws and the whole group fails, which is then the truth.
      await ctx.q.executeQuery(ROLLBACK_TO);
      await ctx.q.executeQuery(RELEASE);
      return { ok: false, err };
    }
  }
}
