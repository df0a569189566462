/**
 * The tables as Kysely sees them: one description for both backends, so every query is written
 * once. Columns hold the same values on SQLite and PostgreSQL: milliseconds since the epoch and
 * sequence numbers as integers (BIGINT on PostgreSQL, read back as JS numbers), flags as 0/1
 * integers, lists and check results as JSON text.
 */
import type { Generated } from "kysely";
import type {
  BatchStatus,
  GateState,
  Lifecycle,
  OnFailure,
  Role,
  RolloutEventType,
  RolloutStatus,
  Strategy,
} from "./records.js";

export interface MachinesTable {
  id: string;
  lifecycle: Lifecycle;
  registered_at: number;
  last_seen: number | null;
  current_generation: Generated<string>;
  agent_version: Generated<string>;
  uptime_seconds: Generated<number>;
  last_outcome: Generated<number>;
  last_message: Generated<string>;
  last_report_at: number | null;
  health_generation: string | null;
  health_all_passed: number | null;
  health_at: number | null;
  health_failing: string | null;
  /** Bumped by triggers on every write that changes the machine's fleet status (schema version 4). */
  status_version: Generated<number>;
}

export interface DesiredTable {
  machine_id: string;
  store_path: string;
  cache_url: string;
  revision: number;
  rollout_id: string;
  set_by: string;
  set_at: number;
}

export interface ReportsTable {
  id: Generated<number>;
  machine_id: string;
  received_at: number;
  seq: number;
  current_generation: string;
  desired_generation: string;
  desired_revision: number;
  outcome: number;
  success: number;
  message: string;
  deployment_id: string;
  agent_time: number | null;
}

export interface HealthReportsTable {
  id: Generated<number>;
  machine_id: string;
  received_at: number;
  seq: number;
  generation: string;
  all_passed: number;
  results: string;
  post_apply: number;
  deployment_id: string;
  agent_time: number | null;
}

export interface ReleasesTable {
  id: string;
  cache_url: string;
  flake_ref: string;
  flake_rev: string;
  host_count: number;
  created_at: number;
  created_by: string;
}

export interface ReleaseEntriesTable {
  release_id: string;
  hostname: string;
  store_path: string;
  platform: string;
  tags: string;
}

export interface RolloutsTable {
  id: string;
  release_id: string;
  status: RolloutStatus;
  status_reason: string;
  target_tags: string;
  target_hosts: string;
  strategy: Strategy;
  batch_sizes: string;
  failure_threshold: string;
  on_failure: OnFailure;
  health_timeout_seconds: number;
  soak_seconds: number;
  cache_url: string;
  current_batch: number;
  created_at: number;
  updated_at: number;
  created_by: string;
}

export interface RolloutBatchesTable {
  rollout_id: string;
  batch_index: number;
  status: BatchStatus;
  started_at: number | null;
  started_seq: number | null;
  completed_at: number | null;
}

export interface RolloutMachinesTable {
  rollout_id: string;
  machine_id: string;
  batch_index: number;
  position: number;
  target_generation: string;
  active: number;
  previous_recorded: Generated<number>;
  previous_generation: string | null;
  previous_cache_url: string | null;
  previous_rollout_id: string | null;
  gate_state: Generated<GateState>;
  gate_reason: Generated<string>;
}

export interface RolloutEventsTable {
  id: Generated<number>;
  rollout_id: string;
  type: RolloutEventType;
  batch_index: number | null;
  machine_id: string;
  message: string;
  actor: string;
  created_at: number;
}

export interface ApiKeysTable {
  id: string;
  name: string;
  role: Role;
  key_hash: string;
  created_at: number;
  created_by: string;
  last_used_at: number | null;
  revoked_at: number | null;
}

export interface AuditEventsTable {
  id: Generated<number>;
  timestamp: number;
  actor: string;
  action: string;
  target: string;
  detail: string;
}

export interface CounterTable {
  id: number;
  value: number;
}

export interface Tables {
  machines: MachinesTable;
  machine_tags: { machine_id: string; tag: string };
  revision_counter: CounterTable;
  evidence_sequence: CounterTable;
  desired_generations: DesiredTable;
  reports: ReportsTable;
  health_reports: HealthReportsTable;
  releases: ReleasesTable;
  release_entries: ReleaseEntriesTable;
  rollouts: RolloutsTable;
  rollout_batches: RolloutBatchesTable;
  rollout_machines: RolloutMachinesTable;
  rollout_events: RolloutEventsTable;
  api_keys: ApiKeysTable;
  audit_events: AuditEventsTable;
}

/** The tables a migration copies, parents before children (foreign keys). */
export const TABLE_ORDER: readonly (keyof Tables)[] = [
  "machines",
  "machine_tags",
  "revision_counter",
  "evidence_sequence",
  "desired_generations",
  "reports",
  "health_reports",
  "releases",
  "release_entries",
  "rollouts",
  "rollout_batches",
  "rollout_machines",
  "rollout_events",
  "api_keys",
  "audit_events",
];
