/**
 * The PostgreSQL backend: pg's connection pool under Kysely's PostgreSQL dialect, for a fleet
 * served by several control-plane replicas on one database. Transactions run at READ COMMITTED;
 * what must not interleave takes a row lock (the rollout's row for rollout changes, the
 * evidence_sequence row for evidence order), and a transaction the server aborts as a deadlock
 * or serialization failure is run again.
 */
import { Kysely, PostgresDialect } from "kysely";
import type pg from "pg";
import type { Ctx } from "./context.js";
import type { MigrationResult } from "./database.js";
import { KyselyFleetStore } from "./kysely-store.js";
import { type OpenPostgresOptions, openPostgres } from "./pg-database.js";
import type { Tables } from "./tables.js";

const RETRYABLE = new Set(["40001", "40P01"]);
const ATTEMPTS = 5;

/** A deadlock or serialization failure: the whole transaction is run again. */
function retryable(err: unknown): boolean {
  const code = (err as { code?: string }).code;
  return code !== undefined && RETRYABLE.has(code);
}

export class PostgresFleetStore extends KyselyFleetStore {
  private closed = false;

  constructor(readonly pool: pg.Pool) {
    super(new Kysely<Tables>({ dialect: new PostgresDialect({ pool }) }), "postgres", retryable);
  }

  static async open(
    options: OpenPostgresOptions,
  ): Promise<{ store: PostgresFleetStore; migration: MigrationResult }> {
    const { pool, migration } = await openPostgres(options);
    return { store: new PostgresFleetStore(pool), migration };
  }

  protected async transaction<T>(fn: (ctx: Ctx) => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.kysely.transaction().execute((trx) => fn({ q: trx, kind: "postgres" }));
      } catch (err) {
        if (attempt >= ATTEMPTS || !retryable(err)) throw err;
      }
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.evidence.idle();
    await this.kysely.destroy();
  }
}
