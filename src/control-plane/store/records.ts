/**
 * The control plane's domain records: what the store hands to services and the executor. They
 * use plain strings for states (the same words the SQLite columns hold) and milliseconds for
 * times; conversion to protobuf messages happens only at the RPC edge (services/convert.ts).
 */

export type Lifecycle = "pending" | "active" | "maintenance" | "decommissioned";
export type RolloutStatus = "running" | "paused" | "completed" | "failed" | "cancelled";
export type BatchStatus = "pending" | "deploying" | "succeeded" | "failed" | "cancelled";
export type GateState = "pending" | "healthy" | "unhealthy";
export type Strategy = "all_at_once" | "canary" | "staged";
export type OnFailure = "pause" | "revert";
export type Role = "readonly" | "deploy" | "admin";
export type RolloutEventType =
  | "created"
  | "batch_started"
  | "machine_healthy"
  | "machine_unhealthy"
  | "batch_succeeded"
  | "batch_failed"
  | "paused"
  | "resumed"
  | "completed"
  | "reverted"
  | "failed"
  | "cancelled";

export interface DesiredRecord {
  storePath: string;
  cacheUrl: string;
  /** Globally monotonic; a new value on every assignment, even to the same path. */
  revision: number;
  /** The rollout that assigned it; empty for one-off assignments. */
  rolloutId: string;
  setBy: string;
  setAt: number;
}

export interface HealthSummaryRecord {
  generation: string;
  allPassed: boolean;
  at: number;
  failing: string[];
}

export interface MachineRecord {
  id: string;
  lifecycle: Lifecycle;
  tags: string[];
  registeredAt: number;
  lastSeen: number | null;
  currentGeneration: string;
  agentVersion: string;
  uptimeSeconds: number;
  /** nixfleet.v1.Outcome number of the last report that carried one. */
  lastOutcome: number;
  lastMessage: string;
  lastReportAt: number | null;
  health: HealthSummaryRecord | null;
  desired: DesiredRecord | null;
  activeRollout: { rolloutId: string; batchIndex: number; status: RolloutStatus } | null;
}

export interface HealthResultRecord {
  name: string;
  /** nixfleet.v1.HealthCheckKind number. */
  kind: number;
  passed: boolean;
  durationMs: number;
  message: string;
}

export interface ReportInput {
  machineId: string;
  currentGeneration: string;
  desiredGeneration: string;
  desiredRevision: number;
  outcome: number;
  success: boolean;
  message: string;
  deploymentId: string;
  /** Replaces the machine's tags; null leaves them alone. */
  tags: string[] | null;
  agentVersion: string;
  uptimeSeconds: number;
  agentTime: number | null;
}

export interface HealthInput {
  machineId: string;
  generation: string;
  allPassed: boolean;
  results: HealthResultRecord[];
  postApply: boolean;
  deploymentId: string;
  agentTime: number | null;
}

export interface HelloInput {
  machineId: string;
  /** Empty when the agent does not say (Watch). */
  currentGeneration: string;
  tags: string[];
  agentVersion: string;
}

/**
 * What storing an agent contact tells its caller (AgentIntake): whom to announce and which
 * rollout to evaluate. Not the machine record: reading it back cost a sixth of a Report, and
 * nothing on the agent's path shows it.
 */
export interface AgentContactResult {
  machineId: string;
  /** The machine did not exist and was registered by this contact. */
  registered: boolean;
  /** The running rollout the machine is in, whose gate this contact may decide (null: none). */
  runningRolloutId: string | null;
}

export interface ReleaseEntryRecord {
  hostname: string;
  storePath: string;
  platform: string;
  tags: string[];
}

export interface ReleaseRecord {
  id: string;
  entries: ReleaseEntryRecord[];
  cacheUrl: string;
  flakeRef: string;
  flakeRev: string;
  createdAt: number;
  createdBy: string;
  hostCount: number;
}

export interface RolloutMachineRecord {
  machineId: string;
  batchIndex: number;
  targetGeneration: string;
  previousRecorded: boolean;
  /** The desired path before the batch first started; null when it had none (or not started). */
  previousGeneration: string | null;
  gateState: GateState;
  gateReason: string;
}

export interface BatchRecord {
  index: number;
  status: BatchStatus;
  startedAt: number | null;
  /**
   * The latest start's position in the evidence sequence (reports stored after it count for the
   * gate); also identifies that start, so a decision about an older start is refused.
   */
  startedSeq: number | null;
  completedAt: number | null;
  machines: RolloutMachineRecord[];
}

export interface RolloutRecord {
  id: string;
  releaseId: string;
  status: RolloutStatus;
  statusReason: string;
  targetTags: string[];
  targetHosts: string[];
  strategy: Strategy;
  batchSizes: string[];
  failureThreshold: string;
  onFailure: OnFailure;
  healthTimeoutSeconds: number;
  soakSeconds: number;
  cacheUrl: string;
  currentBatch: number;
  createdAt: number;
  updatedAt: number;
  createdBy: string;
  batches: BatchRecord[];
}

export interface RolloutEventRecord {
  id: number;
  rolloutId: string;
  type: RolloutEventType;
  batchIndex: number | null;
  machineId: string;
  message: string;
  actor: string;
  createdAt: number;
}

export interface ApiKeyRecord {
  id: string;
  name: string;
  role: Role;
  createdAt: number;
  createdBy: string;
  lastUsedAt: number | null;
  revokedAt: number | null;
}

export interface AuditRecord {
  id: number;
  timestamp: number;
  actor: string;
  action: string;
  target: string;
  detail: string;
}

/** A desired-generation write the push hub must deliver (desired null = cleared). */
export interface DesiredChange {
  machineId: string;
  desired: DesiredRecord | null;
}

/** A stored agent report, as GetMachineHistory shows it. */
export interface ReportRecord {
  receivedAt: number;
  outcome: number;
  success: boolean;
  message: string;
  currentGeneration: string;
  desiredGeneration: string;
  desiredRevision: number;
  deploymentId: string;
}

/** A stored health report with every check's result. */
export interface HealthReportRecord {
  receivedAt: number;
  generation: string;
  allPassed: boolean;
  results: HealthResultRecord[];
  postApply: boolean;
  deploymentId: string;
}
