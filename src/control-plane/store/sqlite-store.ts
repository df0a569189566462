/**
 * The embedded SQLite backend (the default): better-sqlite3 under Kysely's SQLite dialect. One
 * connection; Kysely hands it to one caller at a time, and writes run in IMMEDIATE transactions
 * (the write lock taken up front, so two processes never deadlock on a read-to-write upgrade).
 */
import { Kysely, SqliteDialect, type SqliteDialectConfig, sql } from "kysely";
import type { Ctx } from "./context.js";
import {
  type MigrationResult,
  type OpenDatabaseOptions,
  openDatabase,
  type SqliteDatabase,
} from "./database.js";
import { KyselyFleetStore } from "./kysely-store.js";
import type { Tables } from "./tables.js";

/**
 * How long after a write transaction the WAL is checkpointed. SQLite's own automatic checkpoint
 * runs inside the COMMIT that grows the WAL past 1000 pages: at 10,000 machines a rollout's
 * creation and its batch start each paid 20–45 ms of copying pages in their commits, before any
 * push could leave. A timer runs it a moment later instead, after what the commit set off (the
 * pushes, an RPC's answer) — the same work, off the path that waits. At most one per this delay
 * while writes go on: a checkpoint syncs the WAL and the database file (with `synchronous =
 * NORMAL` commits themselves do not), so a small write must not cost one each.
 */
const CHECKPOINT_DELAY_MS = 1000;
const AUTOCHECKPOINT_BACKSTOP_PAGES = 10_000;

/** Distinct statement texts kept prepared; `IN (…)` lists of varying length make a few hundred. */
const STATEMENT_CACHE = 2000;

/**
 * better-sqlite3 with its prepared statements cached by text. Kysely's SQLite driver prepares
 * every query anew, and preparing costs far more than running (a machine read: ~20× as much).
 */
function cachingDatabase(db: SqliteDatabase): SqliteDialectConfig["database"] {
  const cache = new Map<string, ReturnType<SqliteDatabase["prepare"]>>();
  return {
    close: () => db.close(),
    prepare: (source: string) => {
      let stmt = cache.get(source);
      if (!stmt) {
        if (cache.size >= STATEMENT_CACHE) cache.clear();
        stmt = db.prepare(source);
        cache.set(source, stmt);
      }
      return stmt;
    },
  } as SqliteDialectConfig["database"];
}

export class SqliteFleetStore extends KyselyFleetStore {
  private checkpointTimer: NodeJS.Timeout | null = null;

  constructor(readonly db: SqliteDatabase) {
    super(new Kysely<Tables>({ dialect: new SqliteDialect({ database: cachingDatabase(db) }) }), "sqlite");
    // SQLite's own checkpoint stays as a backstop for writes outside transaction(), at ten times
    // its default size, so the timer does the work in the normal case.
    db.pragma(`wal_autocheckpoint = ${AUTOCHECKPOINT_BACKSTOP_PAGES}`);
  }

  static async open(
    options: OpenDatabaseOptions,
  ): Promise<{ store: SqliteFleetStore; migration: MigrationResult }> {
    const { db, migration } = await openDatabase(options);
    return { store: new SqliteFleetStore(db), migration };
  }

  protected transaction<T>(fn: (ctx: Ctx) => Promise<T>): Promise<T> {
    return this.kysely.connection().execute(async (conn) => {
      await sql`BEGIN IMMEDIATE`.execute(conn);
      try {
        const result = await fn({ q: conn, kind: "sqlite" });
        await sql`COMMIT`.execute(conn);
        this.scheduleCheckpoint();
        return result;
      } catch (err) {
        if (this.db.inTransaction) await sql`ROLLBACK`.execute(conn);
        throw err;
      }
    });
  }

  /** A checkpoint (PASSIVE: never waits for readers) shortly after the writes; one at a time. */
  private scheduleCheckpoint(): void {
    if (this.checkpointTimer) return;
    this.checkpointTimer = setTimeout(() => {
      this.checkpointTimer = null;
      if (!this.db.open) return;
      // A transaction spanning the timer (never on SQLite's synchronous calls, but be safe): later.
      if (this.db.inTransaction) {
        this.scheduleCheckpoint();
        return;
      }
      try {
        this.db.pragma("wal_checkpoint(PASSIVE)");
      } catch {
        // Another process holds the database (a busy checkpoint): the next write schedules one.
      }
    }, CHECKPOINT_DELAY_MS);
    this.checkpointTimer.unref();
  }

  async close(): Promise<void> {
    await this.evidence.idle();
    if (this.checkpointTimer) clearTimeout(this.checkpointTimer);
    this.checkpointTimer = null;
    if (this.db.open) await this.kysely.destroy();
  }
}
