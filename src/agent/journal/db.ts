/**
 * Opening the agent's SQLite file: WAL, synchronous=FULL (a journaled intent must survive power
 * loss, and the agent writes rarely), versioned migrations keyed by `PRAGMA user_version`, each
 * applied in its own transaction. A file that is not a database (torn by a disk fault) is moved
 * aside and a fresh one started, loudly: an agent that refuses to start forever helps nobody
 * (peer study §4 #17).
 */
import { existsSync, mkdirSync, renameSync } from "node:fs";
import { dirname } from "node:path";
import Database from "better-sqlite3";

export type Db = Database.Database;

/** Append-only: never edit a released migration, add a new one. */
export const MIGRATIONS: readonly string[] = [
  // 1: the deployment journal, its phase history, quarantine, report memory, health history, outbox.
  `
  CREATE TABLE deployments (
    id TEXT PRIMARY KEY,
    desired TEXT NOT NULL,
    desired_revision TEXT NOT NULL,
    rollout_id TEXT NOT NULL DEFAULT '',
    cache_url TEXT,
    previous TEXT,
    previous_profile_generation INTEGER,
    phase TEXT NOT NULL,
    outcome TEXT,
    message TEXT,
    activation TEXT,
    rollback_activation TEXT,
    rollback_reason TEXT,
    rollback_attempts INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    finished_at INTEGER
  ) STRICT;
  CREATE INDEX deployments_unfinished ON deployments (phase) WHERE phase <> 'done';
  CREATE INDEX deployments_created ON deployments (created_at);

  CREATE TABLE deployment_phases (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment_id TEXT NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    phase TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    ended_at INTEGER,
    error TEXT
  ) STRICT;
  CREATE INDEX deployment_phases_deployment ON deployment_phases (deployment_id, id);

  CREATE TABLE quarantine (
    path TEXT PRIMARY KEY,
    revision TEXT NOT NULL,
    deployment_id TEXT,
    outcome TEXT NOT NULL,
    reason TEXT NOT NULL,
    created_at INTEGER NOT NULL
  ) STRICT;

  CREATE TABLE last_reports (
    kind TEXT PRIMARY KEY,
    key TEXT NOT NULL,
    outcome TEXT NOT NULL,
    sent_at INTEGER NOT NULL
  ) STRICT;

  CREATE TABLE health_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    generation TEXT NOT NULL,
    all_passed INTEGER NOT NULL,
    post_apply INTEGER NOT NULL,
    deployment_id TEXT NOT NULL DEFAULT '',
    results TEXT NOT NULL,
    created_at INTEGER NOT NULL
  ) STRICT;
  CREATE INDEX health_history_created ON health_history (created_at);

  CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    outcome TEXT NOT NULL DEFAULT '',
    deployment_id TEXT NOT NULL DEFAULT '',
    payload BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
  ) STRICT;
  `,
  // 2: outbox classes. Rows queued by an older agent are kept as outcomes (never evicted).
  `
  ALTER TABLE outbox ADD COLUMN class TEXT NOT NULL DEFAULT 'outcome';
  ALTER TABLE outbox ADD COLUMN coalesce_key TEXT;
  CREATE INDEX outbox_coalesce ON outbox (class, coalesce_key);
  `,
  // 3: the confirm window. Deployments journaled by an older agent used the switch order
  // (activation_order NULL); boot_id is the kernel's boot id when the intent was written.
  `
  ALTER TABLE deployments ADD COLUMN activation_order TEXT;
  ALTER TABLE deployments ADD COLUMN boot_id TEXT;
  ALTER TABLE deployments ADD COLUMN boot_default_moved INTEGER NOT NULL DEFAULT 0;
  `,
];

export interface OpenResult {
  db: Db;
  /** Set when an unreadable file was moved aside: where it went. */
  movedAside?: string;
}

/**
 * Makes `db.prepare` return one compiled statement per SQL text: the journal prepares its
 * statements where it uses them, and compiling them anew on every write was a large share of
 * the agent's own CPU per deploy cycle. Safe because no caller switches a statement's mode
 * (pluck/raw/expand) or holds an iterator across another use of the same SQL.
 */
function cacheStatements(db: Db): void {
  const prepare = db.prepare.bind(db);
  const cache = new Map<string, Database.Statement>();
  db.prepare = ((sql: string) => {
    let statement = cache.get(sql);
    if (!statement) {
      statement = prepare(sql);
      cache.set(sql, statement);
    }
    return statement;
  }) as Db["prepare"];
}

function openAndMigrate(path: string): Db {
  const db = new Database(path);
  try {
    db.pragma("journal_mode = WAL");
    db.pragma("synchronous = FULL");
    db.pragma("foreign_keys = ON");
    db.pragma("busy_timeout = 5000");
    migrate(db);
    cacheStatements(db);
    return db;
  } catch (err) {
    db.close();
    throw err;
  }
}

export function migrate(db: Db): void {
  const current = db.pragma("user_version", { simple: true }) as number;
  if (current > MIGRATIONS.length) {
    throw new Error(
      `the journal was written by a newer agent (schema version ${current}, this agent knows ${MIGRATIONS.length}); ` +
        "upgrade the agent or move the database aside",
    );
  }
  for (let version = current; version < MIGRATIONS.length; version++) {
    db.transaction(() => {
      db.exec(MIGRATIONS[version]!);
      db.pragma(`user_version = ${version + 1}`);
    })();
  }
}

function isCorruption(err: unknown): boolean {
  const code = (err as { code?: string }).code ?? "";
  return (
    code === "SQLITE_NOTADB" || code === "SQLITE_CORRUPT" || /not a database|malformed/i.test(String(err))
  );
}

export function openDatabase(path: string): OpenResult {
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  try {
    return { db: openAndMigrate(path) };
  } catch (err) {
    if (!isCorruption(err)) throw err;
    const aside = `${path}.corrupt-${Date.now()}`;
    renameSync(path, aside);
    for (const suffix of ["-wal", "-shm"]) {
      if (existsSync(path + suffix)) renameSync(path + suffix, aside + suffix);
    }
    return { db: openAndMigrate(path), movedAside: aside };
  }
}
