/**
 * The control plane's SQLite schema as an append-only list of migrations. A migration, once
 * released, is never edited: changes go into a new entry with the next version. Timestamps are
 * integer milliseconds since the epoch (UTC), so comparisons are numeric, never textual.
 */

export interface Migration {
  version: number;
  name: string;
  sql: string;
}

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: "initial schema",
    sql: `
CREATE TABLE machines (
  id                 TEXT PRIMARY KEY,
  lifecycle          TEXT NOT NULL CHECK (lifecycle IN ('pending', 'active', 'maintenance', 'decommissioned')),
  registered_at      INTEGER NOT NULL,
  last_seen          INTEGER,
  current_generation TEXT NOT NULL DEFAULT '',
  agent_version      TEXT NOT NULL DEFAULT '',
  uptime_seconds     INTEGER NOT NULL DEFAULT 0,
  last_outcome       INTEGER NOT NULL DEFAULT 0,
  last_message       TEXT NOT NULL DEFAULT '',
  last_report_at     INTEGER,
  -- The latest health report, denormalised so fleet status needs no per-machine max() query.
  health_generation  TEXT,
  health_all_passed  INTEGER,
  health_at          INTEGER,
  health_failing     TEXT
) STRICT;
CREATE INDEX machines_lifecycle ON machines (lifecycle);

CREATE TABLE machine_tags (
  machine_id TEXT NOT NULL REFERENCES machines (id) ON DELETE CASCADE,
  tag        TEXT NOT NULL,
  PRIMARY KEY (machine_id, tag)
) STRICT, WITHOUT ROWID;
CREATE INDEX machine_tags_by_tag ON machine_tags (tag, machine_id);

-- Hands out desired-generation revisions: one row, bumped on every assignment.
CREATE TABLE revision_counter (
  id    INTEGER PRIMARY KEY CHECK (id = 1),
  value INTEGER NOT NULL
) STRICT;
INSERT INTO revision_counter (id, value) VALUES (1, 0);

CREATE TABLE desired_generations (
  machine_id TEXT PRIMARY KEY REFERENCES machines (id) ON DELETE CASCADE,
  store_path TEXT NOT NULL,
  cache_url  TEXT NOT NULL DEFAULT '',
  revision   INTEGER NOT NULL,
  rollout_id TEXT NOT NULL DEFAULT '',
  set_by     TEXT NOT NULL,
  set_at     INTEGER NOT NULL
) STRICT;

CREATE TABLE reports (
  id                 INTEGER PRIMARY KEY AUTOINCREMENT,
  machine_id         TEXT NOT NULL REFERENCES machines (id) ON DELETE CASCADE,
  received_at        INTEGER NOT NULL,
  current_generation TEXT NOT NULL,
  desired_generation TEXT NOT NULL,
  desired_revision   INTEGER NOT NULL,
  outcome            INTEGER NOT NULL,
  success            INTEGER NOT NULL,
  message            TEXT NOT NULL,
  deployment_id      TEXT NOT NULL,
  agent_time         INTEGER
) STRICT;
CREATE INDEX reports_by_machine ON reports (machine_id, received_at);
CREATE INDEX reports_by_age ON reports (received_at);

CREATE TABLE health_reports (
  id            INTEGER PRIMARY KEY AUTOINCREMENT,
  machine_id    TEXT NOT NULL REFERENCES machines (id) ON DELETE CASCADE,
  received_at   INTEGER NOT NULL,
  generation    TEXT NOT NULL,
  all_passed    INTEGER NOT NULL,
  results       TEXT NOT NULL,
  post_apply    INTEGER NOT NULL,
  deployment_id TEXT NOT NULL,
  agent_time    INTEGER
) STRICT;
CREATE INDEX health_by_machine_generation ON health_reports (machine_id, generation, received_at);
CREATE INDEX health_by_age ON health_reports (received_at);

CREATE TABLE releases (
  id         TEXT PRIMARY KEY,
  cache_url  TEXT NOT NULL,
  flake_ref  TEXT NOT NULL,
  flake_rev  TEXT NOT NULL,
  host_count INTEGER NOT NULL,
  created_at INTEGER NOT NULL,
  created_by TEXT NOT NULL
) STRICT;
CREATE INDEX releases_by_age ON releases (created_at, id);

CREATE TABLE release_entries (
  release_id TEXT NOT NULL REFERENCES releases (id) ON DELETE CASCADE,
  hostname   TEXT NOT NULL,
  store_path TEXT NOT NULL,
  platform   TEXT NOT NULL,
  tags       TEXT NOT NULL,
  PRIMARY KEY (release_id, hostname)
) STRICT, WITHOUT ROWID;
CREATE INDEX release_entries_by_host ON release_entries (hostname, release_id);

CREATE TABLE rollouts (
  id                     TEXT PRIMARY KEY,
  -- No cascade: a release referenced by a rollout cannot be deleted.
  release_id             TEXT NOT NULL REFERENCES releases (id),
  status                 TEXT NOT NULL CHECK (status IN ('running', 'paused', 'completed', 'failed', 'cancelled')),
  status_reason          TEXT NOT NULL DEFAULT '',
  target_tags            TEXT NOT NULL,
  target_hosts           TEXT NOT NULL,
  strategy               TEXT NOT NULL CHECK (strategy IN ('all_at_once', 'canary', 'staged')),
  batch_sizes            TEXT NOT NULL,
  failure_threshold      TEXT NOT NULL,
  on_failure             TEXT NOT NULL CHECK (on_failure IN ('pause', 'revert')),
  health_timeout_seconds INTEGER NOT NULL,
  soak_seconds           INTEGER NOT NULL,
  cache_url              TEXT NOT NULL,
  current_batch          INTEGER NOT NULL DEFAULT 0,
  created_at             INTEGER NOT NULL,
  updated_at             INTEGER NOT NULL,
  created_by             TEXT NOT NULL
) STRICT;
CREATE INDEX rollouts_by_status ON rollouts (status);
CREATE INDEX rollouts_by_age ON rollouts (created_at, id);
CREATE INDEX rollouts_by_release ON rollouts (release_id);

CREATE TABLE rollout_batches (
  rollout_id   TEXT NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
  batch_index  INTEGER NOT NULL,
  status       TEXT NOT NULL CHECK (status IN ('pending', 'deploying', 'succeeded', 'failed', 'cancelled')),
  started_at   INTEGER,
  completed_at INTEGER,
  PRIMARY KEY (rollout_id, batch_index)
) STRICT, WITHOUT ROWID;

CREATE TABLE rollout_machines (
  rollout_id          TEXT NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
  machine_id          TEXT NOT NULL REFERENCES machines (id),
  batch_index         INTEGER NOT NULL,
  position            INTEGER NOT NULL,
  target_generation   TEXT NOT NULL,
  -- 1 while the rollout is running or paused; the unique index below allows one such row per
  -- machine, which is the "one active rollout per machine" rule, and doubles as the index that
  -- answers "is this machine in an active rollout?" without scanning rollouts.
  active              INTEGER NOT NULL,
  -- Recorded once, the first time the machine's batch starts; a resumed batch keeps it, so a
  -- later revert restores what the machine had before this rollout.
  previous_recorded   INTEGER NOT NULL DEFAULT 0,
  previous_generation TEXT,
  previous_cache_url  TEXT,
  previous_rollout_id TEXT,
  gate_state          TEXT NOT NULL DEFAULT 'pending' CHECK (gate_state IN ('pending', 'healthy', 'unhealthy')),
  gate_reason         TEXT NOT NULL DEFAULT '',
  PRIMARY KEY (rollout_id, machine_id),
  FOREIGN KEY (rollout_id, batch_index) REFERENCES rollout_batches (rollout_id, batch_index)
) STRICT, WITHOUT ROWID;
CREATE UNIQUE INDEX rollout_machines_one_active ON rollout_machines (machine_id) WHERE active = 1;
CREATE INDEX rollout_machines_by_batch ON rollout_machines (rollout_id, batch_index, position);

CREATE TABLE rollout_events (
  id          INTEGER PRIMARY KEY AUTOINCREMENT,
  rollout_id  TEXT NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
  type        TEXT NOT NULL,
  batch_index INTEGER,
  machine_id  TEXT NOT NULL DEFAULT '',
  message     TEXT NOT NULL,
  actor       TEXT NOT NULL,
  created_at  INTEGER NOT NULL
) STRICT;
CREATE INDEX rollout_events_by_rollout ON rollout_events (rollout_id, id);

CREATE TABLE api_keys (
  id           TEXT PRIMARY KEY,
  name         TEXT NOT NULL,
  role         TEXT NOT NULL CHECK (role IN ('readonly', 'deploy', 'admin')),
  key_hash     TEXT NOT NULL UNIQUE,
  created_at   INTEGER NOT NULL,
  created_by   TEXT NOT NULL,
  last_used_at INTEGER,
  revoked_at   INTEGER
) STRICT;
CREATE UNIQUE INDEX api_keys_live_name ON api_keys (name) WHERE revoked_at IS NULL;

CREATE TABLE audit_events (
  id        INTEGER PRIMARY KEY AUTOINCREMENT,
  timestamp INTEGER NOT NULL,
  actor     TEXT NOT NULL,
  action    TEXT NOT NULL,
  target    TEXT NOT NULL,
  detail    TEXT NOT NULL
) STRICT;
CREATE INDEX audit_by_time ON audit_events (timestamp);
CREATE INDEX audit_by_target ON audit_events (target, id);
`,
  },
  {
    version: 2,
    name: "a sequence orders reports and batch starts, apart from time",
    // "Received after the batch started" used to compare received_at with started_at, exact only
    // because the clock handed out strictly increasing milliseconds — a clock that traffic could
    // drive ahead of wall time. Time now comes from the wall clock; order comes from this
    // counter, bumped inside the writing transaction. Before this migration the stored times were
    // strictly increasing, so they seed the sequence and the old order is kept exactly.
    sql: `
CREATE TABLE evidence_sequence (
  id    INTEGER PRIMARY KEY CHECK (id = 1),
  value INTEGER NOT NULL
) STRICT;
ALTER TABLE reports ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE health_reports ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE rollout_batches ADD COLUMN started_seq INTEGER;
UPDATE reports SET seq = received_at;
UPDATE health_reports SET seq = received_at;
UPDATE rollout_batches SET started_seq = started_at;
INSERT INTO evidence_sequence (id, value) VALUES (1, max(
  (SELECT coalesce(max(received_at), 0) FROM reports),
  (SELECT coalesce(max(received_at), 0) FROM health_reports),
  (SELECT coalesce(max(started_at), 0) FROM rollout_batches)));
CREATE INDEX reports_by_machine_seq ON reports (machine_id, seq);
CREATE INDEX health_by_machine_generation_seq ON health_reports (machine_id, generation, seq);
`,
  },
  {
    version: 3,
    name: "the executor lease: which replica runs the rollout executor, and its fencing epoch",
    // One row. On SQLite one process owns the file, so it is never claimed there (the process is
    // always the leader); the table exists so both backends have one schema.
    sql: `
CREATE TABLE executor_lease (
  id         INTEGER PRIMARY KEY CHECK (id = 1),
  holder     TEXT NOT NULL,
  epoch      INTEGER NOT NULL,
  expires_at INTEGER NOT NULL
) STRICT;
INSERT INTO executor_lease (id, holder, epoch, expires_at) VALUES (1, '', 0, 0);
`,
  },
  {
    version: 4,
    name: "a machine's status version, bumped by every write that changes its fleet status",
    // GetFleetStatus keeps each machine's encoded status while this (with the desired revision
    // and the active rollout assignment, read beside it) is unchanged. Triggers, not the writers,
    // bump it, so no write path can forget; the WHEN clause skips the reports that change only
    // last_seen, uptime and last_report_at (most of them). No machine is ever deleted, so a
    // per-machine counter never repeats for one id. The columns are MachineStatus's (convert.ts).
    sql: `
ALTER TABLE machines ADD COLUMN status_version INTEGER NOT NULL DEFAULT 0;
CREATE TRIGGER machines_status_version
  AFTER UPDATE OF lifecycle, current_generation, agent_version, last_outcome, last_message,
    health_generation, health_all_passed, health_at, health_failing ON machines
  WHEN OLD.lifecycle IS NOT NEW.lifecycle
    OR OLD.current_generation IS NOT NEW.current_generation
    OR OLD.agent_version IS NOT NEW.agent_version
    OR OLD.last_outcome IS NOT NEW.last_outcome
    OR OLD.last_message IS NOT NEW.last_message
    OR OLD.health_generation IS NOT NEW.health_generation
    OR OLD.health_all_passed IS NOT NEW.health_all_passed
    OR OLD.health_at IS NOT NEW.health_at
    OR OLD.health_failing IS NOT NEW.health_failing
BEGIN
  UPDATE machines SET status_version = status_version + 1 WHERE id = NEW.id;
END;
CREATE TRIGGER machine_tags_added_status_version AFTER INSERT ON machine_tags
BEGIN
  UPDATE machines SET status_version = status_version + 1 WHERE id = NEW.machine_id;
END;
CREATE TRIGGER machine_tags_removed_status_version AFTER DELETE ON machine_tags
BEGIN
  UPDATE machines SET status_version = status_version + 1 WHERE id = OLD.machine_id;
END;
`,
  },
];

export const LATEST_SCHEMA_VERSION = MIGRATIONS[MIGRATIONS.length - 1]!.version;
