/**
 * Connecting to PostgreSQL and bringing its schema up to date. Several control planes (replicas)
 * may start at once against one database: the migrator takes a session-level advisory lock for
 * the whole run and reads the version only once it holds it, so exactly one replica applies all
 * pending migrations (each in its own transaction) and the others find nothing left to do. Per
 * migration locks let replicas split the list between them. The lock dies with the connection, so
 * a replica that crashes mid-run does not block the others.
 */
import pg from "pg";
import { DatabaseStartupError, type MigrationResult, pendingMigrations } from "./database.js";
import { PG_MIGRATIONS } from "./pg-schema.js";
import type { Migration } from "./schema.js";

/** Any constant both the migrator and an operator's `pg_locks` query can recognise ("nixfleet"). */
const MIGRATION_LOCK = 0x6e697866;

/** PostgreSQL's BIGINT (oid 20) as a JS number: times in ms and sequence positions fit easily. */
const INT8_OID = 20;

export interface OpenPostgresOptions {
  url: string;
  /** Connections this process keeps at most. */
  poolSize?: number;
  migrations?: readonly Migration[];
  now?: () => number;
}

/** The URL with its password hidden, for messages and logs. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = "***";
    return u.toString();
  } catch {
    return "(an unparsable database URL)";
  }
}

export function createPool(url: string, max = 10): pg.Pool {
  return new pg.Pool({
    connectionString: url,
    max,
    types: {
      getTypeParser: ((oid: number, format?: "text" | "binary") =>
        oid === INT8_OID ? (v: string) => Number(v) : pg.types.getTypeParser(oid, format)) as never,
    },
  });
}

async function schemaVersion(client: pg.PoolClient): Promise<number> {
  const table = await client.query("SELECT to_regclass('schema_version') AS t");
  if (table.rows[0].t === null) return 0;
  const row = await client.query("SELECT max(version) AS v FROM schema_version");
  return Number(row.rows[0].v ?? 0);
}

export async function applyPgMigrations(
  pool: pg.Pool,
  migrations: readonly Migration[] = PG_MIGRATIONS,
  now: () => number = Date.now,
): Promise<MigrationResult> {
  const client = await pool.connect();
  // A connection whose unlock failed goes back destroyed: its session (and lock) end with it.
  let broken: Error | undefined;
  try {
    await client.query("SELECT pg_advisory_lock($1)", [MIGRATION_LOCK]);
    try {
      await client.query(
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
      );
      const from = await schemaVersion(client);
      const applied: Migration[] = [];
      for (const migration of pendingMigrations(from, migrations)) {
        await client.query("BEGIN");
        try {
          await client.query(migration.sql);
          await client.query("INSERT INTO schema_version (version, name, applied_at) VALUES ($1, $2, $3)", [
            migration.version,
            migration.name,
            now(),
          ]);
          await client.query("COMMIT");
          applied.push(migration);
        } catch (err) {
          await client.query("ROLLBACK").catch(() => {});
          throw new DatabaseStartupError(
            `migration ${migration.version} (${migration.name}) failed: ${(err as Error).message}; ` +
              `the database was left at schema version ${await schemaVersion(client)}`,
          );
        }
      }
      return { from, to: await schemaVersion(client), applied };
    } finally {
      await client.query("SELECT pg_advisory_unlock($1)", [MIGRATION_LOCK]).catch((err: Error) => {
        broken = err;
      });
    }
  } finally {
    client.release(broken);
  }
}

/** Connects (checking the server answers) and migrates; resolves when the database is usable. */
export async function openPostgres(
  options: OpenPostgresOptions,
): Promise<{ pool: pg.Pool; migration: MigrationResult }> {
  const where = redactUrl(options.url);
  const pool = createPool(options.url, options.poolSize);
  // An idle connection the server drops (restart, failover) must not crash the process.
  pool.on("error", () => {});
  // Nor one checked out and between statements when the server ends it (a restart, or the
  // idle-in-transaction timeout a frozen executor leader meets, store/lease.ts): the next query
  // on it fails instead, its transaction rolls back, and the pool drops it.
  pool.on("connect", (client) => client.on("error", () => {}));
  try {
    await pool.query("SELECT 1");
  } catch (err) {
    await pool.end().catch(() => {});
    throw new DatabaseStartupError(
      `cannot connect to the database ${where}: ${(err as Error).message}; ` +
        "check --database-url (NIXFLEET_CP_DATABASE_URL): host, port, user, password and database name",
    );
  }
  try {
    const migration = await applyPgMigrations(pool, options.migrations ?? PG_MIGRATIONS, options.now);
    return { pool, migration };
  } catch (err) {
    await pool.end().catch(() => {});
    if (err instanceof DatabaseStartupError) throw err;
    throw new DatabaseStartupError(`cannot use the database ${where}: ${(err as Error).message}`);
  }
}
