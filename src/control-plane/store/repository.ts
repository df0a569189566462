/**
 * The repository interface between the control plane's logic and its storage. Handlers and the
 * executor call these methods and never see SQL; every method that changes more than one row is
 * one transaction, including the audit event that records it. Methods are asynchronous so a
 * networked backend (PostgreSQL, for several replicas) can implement the same interface; the
 * embedded SQLite implementation is sqlite-store.ts, the PostgreSQL one
 * postgres-store.ts; both are kysely-store.ts, the queries written once.
 */

import type { LeaseRow } from "../leader/lease.js";
import type { HealthEvidence, OutcomeEvidence } from "../rollouts/gate.js";
import type { LeaseClaim } from "./lease.js";
import type { MachineStatusRow, TargetCandidate } from "./machine-reads.js";
import type {
  AgentContactResult,
  ApiKeyRecord,
  AuditRecord,
  DesiredChange,
  DesiredRecord,
  HealthInput,
  HealthReportRecord,
  HelloInput,
  Lifecycle,
  MachineRecord,
  OnFailure,
  ReleaseEntryRecord,
  ReleaseRecord,
  ReportInput,
  ReportRecord,
  Role,
  RolloutEventRecord,
  RolloutRecord,
  RolloutStatus,
  Strategy,
} from "./records.js";
import type { RolloutHead } from "./rollout-reads.js";

export interface MachineFilter {
  tags: readonly string[];
  match: "all" | "any";
  lifecycle: Lifecycle | null;
  /** Keyset pagination: machines with an id greater than this. */
  afterId: string | null;
  limit: number;
}

/** Keyset position in a newest-first list. */
export interface Cursor {
  createdAt: number;
  id: string;
}

export interface ReleaseFilter {
  host: string | null;
  before: Cursor | null;
  limit: number;
}

export interface RolloutFilter {
  status: RolloutStatus | null;
  releaseId: string | null;
  before: Cursor | null;
  limit: number;
}

export interface AuditFilter {
  actor: string | null;
  action: string | null;
  target: string | null;
  since: number | null;
  beforeId: number | null;
  limit: number;
}

export interface NewRelease {
  id: string;
  entries: ReleaseEntryRecord[];
  cacheUrl: string;
  flakeRef: string;
  flakeRev: string;
}

export interface NewRollout {
  id: string;
  releaseId: string;
  targetTags: string[];
  targetHosts: string[];
  strategy: Strategy;
  batchSizes: string[];
  failureThreshold: string;
  onFailure: OnFailure;
  healthTimeoutSeconds: number;
  soakSeconds: number;
  cacheUrl: string;
  batches: { machineId: string; targetGeneration: string }[][];
  /** Shown in the CREATED event (e.g. which tag-matched machines the release does not cover). */
  note: string;
}

/** What the gate needs to know about one machine of a deploying batch. */
export interface GateEvidence {
  machineId: string;
  targetGeneration: string;
  currentGeneration: string;
  latestOutcome: OutcomeEvidence | null;
  latestHealth: HealthEvidence | null;
  passingSince: number | null;
}

export interface MachineGateUpdate {
  machineId: string;
  state: "pending" | "healthy" | "unhealthy";
  reason: string;
}

export interface FleetCounts {
  total: number;
  byLifecycle: Record<Lifecycle, number>;
  inSync: number;
  activeRollouts: number;
}

export interface EndRolloutOptions {
  status: "failed" | "cancelled";
  revert: boolean;
  reason: string;
  actor: string;
  /** Refuse unless the rollout is in one of these (operator cancel: running or paused). */
  from: readonly RolloutStatus[];
}

export interface RolloutChange {
  rollout: RolloutRecord;
  events: RolloutEventRecord[];
  /** Desired generations written, for the push hub. */
  changes: DesiredChange[];
}

export interface FleetStore {
  close(): Promise<void>;
  /** Throws when the database cannot answer (readiness). */
  ping(): Promise<void>;

  // --- agents
  recordHello(input: HelloInput, now: number): Promise<AgentContactResult>;
  recordReport(input: ReportInput, now: number): Promise<AgentContactResult>;
  recordHealth(input: HealthInput, now: number): Promise<AgentContactResult>;
  desiredFor(machineId: string): Promise<{ desired: DesiredRecord | null; inActiveRollout: boolean }>;

  // --- machines
  getMachine(id: string): Promise<MachineRecord | undefined>;
  getMachines(ids: readonly string[]): Promise<MachineRecord[]>;
  /** The machine's reports, newest first, at most `limit`. */
  machineReports(machineId: string, limit: number): Promise<ReportRecord[]>;
  /** The machine's latest health report, or null before its first. */
  latestHealthReport(machineId: string): Promise<HealthReportRecord | null>;
  listMachines(filter: MachineFilter): Promise<MachineRecord[]>;
  /** Every machine the filter picks, sorted by id: last seen and a version of the rest of its status. */
  machineStatusRows(filter: Omit<MachineFilter, "afterId" | "limit">): Promise<MachineStatusRow[]>;
  /** These machines' records with their status versions, sorted by id (GetFleetStatus's changed ones). */
  machineStatuses(ids: readonly string[]): Promise<{ machine: MachineRecord; version: string }[]>;
  /** The machines a rollout target names, with only what choosing them needs (sorted by id). */
  targetCandidates(
    target: { tags: readonly string[] } | { hosts: readonly string[] },
  ): Promise<TargetCandidate[]>;
  registerMachine(
    input: { id: string; tags: string[]; lifecycle: Lifecycle | null },
    actor: string,
    now: number,
  ): Promise<{ machine: MachineRecord; created: boolean }>;
  setLifecycle(
    id: string,
    lifecycle: Lifecycle,
    actor: string,
    now: number,
  ): Promise<{ machine: MachineRecord; changed: boolean }>;
  setDesired(
    input: { machineId: string; storePath: string; cacheUrl: string },
    actor: string,
    now: number,
  ): Promise<{ machine: MachineRecord; change: DesiredChange }>;
  clearDesired(
    machineId: string,
    actor: string,
    now: number,
  ): Promise<{ machine: MachineRecord; change: DesiredChange | null }>;

  // --- releases
  createRelease(input: NewRelease, actor: string, now: number): Promise<ReleaseRecord>;
  getRelease(id: string): Promise<ReleaseRecord | undefined>;
  listReleases(filter: ReleaseFilter): Promise<ReleaseRecord[]>;
  deleteRelease(id: string, actor: string, now: number): Promise<void>;

  // --- rollouts
  createRollout(input: NewRollout, actor: string, now: number): Promise<RolloutChange>;
  getRollout(id: string): Promise<RolloutRecord | undefined>;
  /** The rollout's fields and batches without its machines (the executor's view). */
  rolloutHead(id: string): Promise<RolloutHead | undefined>;
  listRollouts(filter: RolloutFilter): Promise<RolloutRecord[]>;
  rolloutEvents(id: string, afterId: number, limit: number): Promise<RolloutEventRecord[]>;
  runningRolloutIds(): Promise<string[]>;
  gateEvidence(rolloutId: string, batchIndex: number): Promise<GateEvidence[]>;
  /**
   * Starts (or re-starts) a batch of a running rollout: records each machine's previous desired
   * generation the first time, assigns the target with a fresh revision, stamps started_at (wall
   * time) and started_seq (its place in the evidence sequence).
   * Returns null when the rollout is no longer running or the batch is not startable.
   *
   * `epoch` (here and in recordGate, finishBatch): the executor leader's fencing epoch; the write
   * throws StaleEpochError (store/lease.ts), writing nothing, when another replica has led since.
   * Null only for the sole process on SQLite, which is always the leader.
   */
  startBatch(
    rolloutId: string,
    index: number,
    now: number,
    epoch?: number | null,
  ): Promise<RolloutChange | null>;
  /**
   * Stores the gate's per-machine states; returns MACHINE_HEALTHY/UNHEALTHY events for changes.
   * Refused (nothing stored) unless the batch is still deploying from the start `startedSeq`.
   */
  recordGate(
    rolloutId: string,
    index: number,
    startedSeq: number,
    gates: readonly MachineGateUpdate[],
    now: number,
    epoch?: number | null,
  ): Promise<RolloutEventRecord[]>;
  /**
   * Ends a deploying batch (passed or failed) as rollouts/decisions.ts planFinishBatch decides
   * from the stored rollout: failing pauses it (on_failure PAUSE) or fails and reverts it
   * (REVERT); passing the last batch completes it. Null when the state moved on meanwhile.
   */
  finishBatch(
    rolloutId: string,
    index: number,
    startedSeq: number,
    result: { passed: boolean; message: string },
    now: number,
    epoch?: number | null,
  ): Promise<RolloutChange | null>;
  pauseRollout(id: string, reason: string, actor: string, now: number): Promise<RolloutChange>;
  resumeRollout(id: string, actor: string, now: number): Promise<RolloutChange>;
  endRollout(id: string, options: EndRolloutOptions, now: number): Promise<RolloutChange>;

  // --- executor leadership (../leader/): one lease row, decided by ../leader/lease.ts
  /** Takes, renews or (another replica holding it) leaves the lease, in one transaction. */
  claimExecutorLease(holder: string, ttlMs: number, now: number): Promise<LeaseClaim>;
  /** Expires the lease now if `holder` still holds it at `epoch` (a clean shutdown). */
  releaseExecutorLease(holder: string, epoch: number, now: number): Promise<boolean>;
  executorLease(): Promise<LeaseRow>;

  // --- API keys
  createApiKey(
    input: { id: string; name: string; role: Role; hash: string },
    actor: string,
    now: number,
  ): Promise<ApiKeyRecord>;
  listApiKeys(includeRevoked: boolean): Promise<ApiKeyRecord[]>;
  /** `key` is an id or a live key's name; `callerId` may not revoke itself. */
  revokeApiKey(key: string, callerId: string | null, actor: string, now: number): Promise<ApiKeyRecord>;
  /** The live key with this hash (and marks it used), or undefined. */
  authenticateApiKey(hash: string, now: number): Promise<ApiKeyRecord | undefined>;

  // --- audit, metrics, maintenance
  listAudit(filter: AuditFilter): Promise<AuditRecord[]>;
  fleetCounts(): Promise<FleetCounts>;
  /** Deletes reports and health reports received before `cutoff` that no deploying batch needs. */
  prune(cutoff: number): Promise<{ reports: number; healthReports: number }>;
}
