/**
 * Opening the SQLite file and bringing its schema up to date. Both happen before the control
 * plane is ready, while the listener already answers UNAVAILABLE, so waiting for a database lock
 * held by another process (a `keys create`, a backup, a second control plane by mistake) must not
 * block the event loop: the connection runs with busy_timeout 0 during start-up and retries with
 * timers instead of SQLite's blocking busy handler.
 */
import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import Database from "better-sqlite3";
import { LATEST_SCHEMA_VERSION, MIGRATIONS, type Migration } from "./schema.js";

export type SqliteDatabase = Database.Database;

export class DatabaseStartupError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "DatabaseStartupError";
  }
}

export interface OpenDatabaseOptions {
  path: string;
  /** SQLite busy_timeout once running (ms): how long a write waits for another writer. */
  busyTimeoutMs?: number;
  /** How long start-up keeps retrying while another process holds the database locked (ms). */
  lockWaitMs?: number;
  /** Replaces the built-in migrations (tests of the runner). */
  migrations?: readonly Migration[];
  /** Called once when start-up has to wait for a lock, so the operator sees why. */
  onLockWait?: (message: string) => void;
  now?: () => number;
}

export interface MigrationResult {
  from: number;
  to: number;
  applied: Migration[];
}

function isBusy(err: unknown): boolean {
  const code = (err as { code?: string }).code;
  return code === "SQLITE_BUSY" || code === "SQLITE_LOCKED" || code === "SQLITE_BUSY_SNAPSHOT";
}

/** The schema version recorded in the database (0 for a fresh file). */
export function schemaVersion(db: SqliteDatabase): number {
  const table = db
    .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'")
    .get();
  if (!table) return 0;
  const row = db.prepare("SELECT max(version) AS v FROM schema_version").get() as { v: number | null };
  return row.v ?? 0;
}

/** Which migrations still need to run; refuses a database newer than the code. */
export function pendingMigrations(current: number, migrations: readonly Migration[]): Migration[] {
  const latest = migrations.length ? migrations[migrations.length - 1]!.version : 0;
  if (current > latest) {
    throw new DatabaseStartupError(
      `the database schema is at version ${current}, newer than this control plane knows (${latest}); ` +
        "run the newer nixfleet-control-plane or restore a backup taken before the upgrade",
    );
  }
  for (const [i, m] of migrations.entries()) {
    if (m.version !== i + 1)
      throw new Error(`migration list is not contiguous at ${m.name} (version ${m.version})`);
  }
  return migrations.filter((m) => m.version > current);
}

/**
 * Applies pending migrations, each in its own IMMEDIATE transaction together with its
 * schema_version row, so a failure leaves the database at the last complete version.
 */
export function applyMigrations(
  db: SqliteDatabase,
  migrations: readonly Migration[] = MIGRATIONS,
  now: () => number = Date.now,
): MigrationResult {
  const from = schemaVersion(db);
  const applied: Migration[] = [];
  for (const migration of pendingMigrations(from, migrations)) {
    const run = db.transaction(() => {
      db.exec(
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL) STRICT",
      );
      // Another process may have migrated while we waited for the lock.
      if (schemaVersion(db) >= migration.version) return false;
      db.exec(migration.sql);
      db.prepare("INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)").run(
        migration.version,
        migration.name,
        now(),
      );
      return true;
    });
    try {
      if (run.immediate()) applied.push(migration);
    } catch (err) {
      if (isBusy(err)) throw err;
      throw new DatabaseStartupError(
        `migration ${migration.version} (${migration.name}) failed: ${(err as Error).message}; ` +
          `the database was left at schema version ${schemaVersion(db)}`,
      );
    }
  }
  return { from, to: schemaVersion(db), applied };
}

async function retryWhileBusy<T>(
  what: string,
  path: string,
  deadline: number,
  onLockWait: ((m: string) => void) | undefined,
  fn: () => T,
): Promise<T> {
  let delay = 25;
  let told = false;
  for (;;) {
    try {
      return fn();
    } catch (err) {
      if (!isBusy(err)) throw err;
      if (Date.now() >= deadline) {
        throw new DatabaseStartupError(
          `${what}: the database ${path} stayed locked by another process; ` +
            "check that no other control plane uses the same --db-path, then retry",
        );
      }
      if (!told) {
        onLockWait?.(`${what}: ${path} is locked by another process; waiting`);
        told = true;
      }
      await sleep(delay);
      delay = Math.min(delay * 2, 500);
    }
  }
}

/** Opens (creating if needed) the database file and migrates it; resolves when it is usable. */
export async function openDatabase(options: OpenDatabaseOptions): Promise<{
  db: SqliteDatabase;
  migration: MigrationResult;
}> {
  const deadline = Date.now() + (options.lockWaitMs ?? 60_000);
  let db: SqliteDatabase;
  try {
    if (options.path !== ":memory:") mkdirSync(dirname(options.path), { recursive: true });
    db = new Database(options.path);
  } catch (err) {
    throw new DatabaseStartupError(
      `cannot open the database ${options.path}: ${(err as Error).message}; ` +
        "check that --db-path points into a writable directory",
    );
  }
  try {
    db.pragma("busy_timeout = 0");
    await retryWhileBusy("enabling WAL", options.path, deadline, options.onLockWait, () =>
      db.pragma("journal_mode = WAL"),
    );
    db.pragma("foreign_keys = ON");
    // WAL + NORMAL: a committed transaction survives a process crash; only an OS crash or power
    // loss can lose the last transactions, never corrupt the file.
    db.pragma("synchronous = NORMAL");
    const migration = await retryWhileBusy("migrating", options.path, deadline, options.onLockWait, () =>
      applyMigrations(db, options.migrations ?? MIGRATIONS, options.now),
    );
    db.pragma(`busy_timeout = ${options.busyTimeoutMs ?? 5000}`);
    return { db, migration };
  } catch (err) {
    db.close();
    if (err instanceof DatabaseStartupError) throw err;
    throw new DatabaseStartupError(
      `cannot use the database ${options.path}: ${(err as Error).message}; ` +
        "is it a nixfleet control-plane database (not an agent journal or another file)?",
    );
  }
}

export { LATEST_SCHEMA_VERSION };
