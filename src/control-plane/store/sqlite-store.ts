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
  constructor(readonly db: SqliteDatabase) {
    super(new Kysely<Tables>({ dialect: new SqliteDialect({ database: cachingDatabase(db) }) }), "sqlite");
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
        return result;
      } catch (err) {
        if (this.db.inTransaction) await sql`ROLLBACK`.execute(conn);
        throw err;
      }
    });
  }

  async close(): Promise<void> {
    await this.evidence.idle();
    if (this.db.open) await this.kysely.destroy();
  }
}
