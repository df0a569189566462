/**
 * The embedded SQLite backend (the default): better-sqlite3 under Kysely's SQLite dialect. One
 * connection; Kysely hands it to one caller at a time, and writes run in IMMEDIATE transactions
 * (the write lock taken up front, so two processes never deadlock on a read-to-write upgrade).
 */
import { Kysely, SqliteDialect, sql } from "kysely";
import type { Ctx } from "./context.js";
import {
  type MigrationResult,
  type OpenDatabaseOptions,
  openDatabase,
  type SqliteDatabase,
} from "./database.js";
import { KyselyFleetStore } from "./kysely-store.js";
import type { Tables } from "./tables.js";

export class SqliteFleetStore extends KyselyFleetStore {
  constructor(readonly db: SqliteDatabase) {
    super(new Kysely<Tables>({ dialect: new SqliteDialect({ database: db }) }), "sqlite");
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
    if (this.db.open) await this.kysely.destroy();
  }
}
