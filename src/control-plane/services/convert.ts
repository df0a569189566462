/**
 * Domain records → protobuf messages (init shapes), in one place so every RPC renders a machine,
 * rollout or key the same way.
 */
import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import {
  ApiKeyRole,
  type ApiKeySchema,
  type AuditEventSchema,
  BatchStatus,
  HealthState,
  MachineGateState,
  type MachineHealthReportSchema,
  type MachineReportSchema,
  type MachineSchema,
  type MachineStatusSchema,
  OnFailure as OnFailureEnum,
  type ReleaseSchema,
  type RolloutEventSchema,
  RolloutEventType,
  type RolloutSchema,
  RolloutStatus as RolloutStatusEnum,
  RolloutStrategy,
} from "../../gen/nixfleet/v1/fleet_pb.js";
import { type DesiredGenerationSchema, MachineLifecycle } from "../../gen/nixfleet/v1/types_pb.js";
import type {
  ApiKeyRecord,
  AuditRecord,
  BatchStatus as BatchStatusRecord,
  DesiredRecord,
  RolloutEventType as EventTypeRecord,
  GateState,
  HealthReportRecord,
  Lifecycle,
  MachineRecord,
  ReleaseRecord,
  ReportRecord,
  Role,
  RolloutEventRecord,
  RolloutRecord,
  RolloutStatus,
  Strategy,
} from "../store/records.js";

export type MachineInit = MessageInitShape<typeof MachineSchema>;

export const LIFECYCLE_TO_PROTO: Record<Lifecycle, MachineLifecycle> = {
  pending: MachineLifecycle.PENDING,
  active: MachineLifecycle.ACTIVE,
  maintenance: MachineLifecycle.MAINTENANCE,
  decommissioned: MachineLifecycle.DECOMMISSIONED,
};

export const LIFECYCLE_FROM_PROTO: Partial<Record<number, Lifecycle>> = {
  [MachineLifecycle.PENDING]: "pending",
  [MachineLifecycle.ACTIVE]: "active",
  [MachineLifecycle.MAINTENANCE]: "maintenance",
  [MachineLifecycle.DECOMMISSIONED]: "decommissioned",
};

export const ROLLOUT_STATUS_TO_PROTO: Record<RolloutStatus, RolloutStatusEnum> = {
  running: RolloutStatusEnum.RUNNING,
  paused: RolloutStatusEnum.PAUSED,
  completed: RolloutStatusEnum.COMPLETED,
  failed: RolloutStatusEnum.FAILED,
  cancelled: RolloutStatusEnum.CANCELLED,
};

export const ROLLOUT_STATUS_FROM_PROTO: Partial<Record<number, RolloutStatus>> = {
  [RolloutStatusEnum.RUNNING]: "running",
  [RolloutStatusEnum.PAUSED]: "paused",
  [RolloutStatusEnum.COMPLETED]: "completed",
  [RolloutStatusEnum.FAILED]: "failed",
  [RolloutStatusEnum.CANCELLED]: "cancelled",
};

const BATCH_STATUS: Record<BatchStatusRecord, BatchStatus> = {
  pending: BatchStatus.PENDING,
  deploying: BatchStatus.DEPLOYING,
  succeeded: BatchStatus.SUCCEEDED,
  failed: BatchStatus.FAILED,
  cancelled: BatchStatus.CANCELLED,
};

const GATE_STATE: Record<GateState, MachineGateState> = {
  pending: MachineGateState.PENDING,
  healthy: MachineGateState.HEALTHY,
  unhealthy: MachineGateState.UNHEALTHY,
};

const STRATEGY: Record<Strategy, RolloutStrategy> = {
  all_at_once: RolloutStrategy.ALL_AT_ONCE,
  canary: RolloutStrategy.CANARY,
  staged: RolloutStrategy.STAGED,
};

const EVENT_TYPE: Record<EventTypeRecord, RolloutEventType> = {
  created: RolloutEventType.CREATED,
  batch_started: RolloutEventType.BATCH_STARTED,
  machine_healthy: RolloutEventType.MACHINE_HEALTHY,
  machine_unhealthy: RolloutEventType.MACHINE_UNHEALTHY,
  batch_succeeded: RolloutEventType.BATCH_SUCCEEDED,
  batch_failed: RolloutEventType.BATCH_FAILED,
  paused: RolloutEventType.PAUSED,
  resumed: RolloutEventType.RESUMED,
  completed: RolloutEventType.COMPLETED,
  reverted: RolloutEventType.REVERTED,
  failed: RolloutEventType.FAILED,
  cancelled: RolloutEventType.CANCELLED,
};

export const ROLE_TO_PROTO: Record<Role, ApiKeyRole> = {
  readonly: ApiKeyRole.READONLY,
  deploy: ApiKeyRole.DEPLOY,
  admin: ApiKeyRole.ADMIN,
};

export const ROLE_FROM_PROTO: Partial<Record<number, Role>> = {
  [ApiKeyRole.READONLY]: "readonly",
  [ApiKeyRole.DEPLOY]: "deploy",
  [ApiKeyRole.ADMIN]: "admin",
};

const ts = (ms: number | null) => (ms === null ? undefined : timestampFromMs(ms));

export function desiredToProto(d: DesiredRecord): MessageInitShape<typeof DesiredGenerationSchema> {
  return {
    hash: d.storePath,
    cacheUrl: d.cacheUrl,
    revision: BigInt(d.revision),
    rolloutId: d.rolloutId,
    setAt: timestampFromMs(d.setAt),
  };
}

/** Presence the store does not know: open streams and recent contact held in memory. */
export interface LiveView {
  connected(machineId: string): boolean;
  lastSeen(machine: Pick<MachineRecord, "id" | "lastSeen">): number | null;
}

export function machineToProto(m: MachineRecord, live: LiveView): MachineInit {
  return {
    machineId: m.id,
    lifecycle: LIFECYCLE_TO_PROTO[m.lifecycle],
    tags: m.tags,
    registeredAt: timestampFromMs(m.registeredAt),
    lastSeen: ts(live.lastSeen(m)),
    currentGeneration: m.currentGeneration,
    desiredGeneration: m.desired ? desiredToProto(m.desired) : undefined,
    agentVersion: m.agentVersion,
    uptimeSeconds: BigInt(m.uptimeSeconds),
    lastOutcome: m.lastOutcome,
    lastMessage: m.lastMessage,
    connected: live.connected(m.id),
  };
}

export function machineStatusToProto(
  m: MachineRecord,
  live: LiveView,
  now: number,
  staleAfterMs: number,
): MessageInitShape<typeof MachineStatusSchema> {
  const lastSeen = live.lastSeen(m);
  const desired = m.desired?.storePath ?? "";
  return {
    machineId: m.id,
    lifecycle: LIFECYCLE_TO_PROTO[m.lifecycle],
    tags: m.tags,
    desiredGeneration: desired,
    currentGeneration: m.currentGeneration,
    inSync: desired !== "" && desired === m.currentGeneration,
    lastOutcome: m.lastOutcome,
    lastMessage: m.lastMessage,
    health: m.health
      ? {
          state: m.health.allPassed ? HealthState.HEALTHY : HealthState.UNHEALTHY,
          generation: m.health.generation,
          reportedAt: timestampFromMs(m.health.at),
          failingChecks: m.health.failing,
        }
      : { state: HealthState.UNKNOWN },
    lastSeen: ts(lastSeen),
    stale: isStale(m, lastSeen, now, staleAfterMs),
    connected: live.connected(m.id),
    activeRolloutId: m.activeRollout?.rolloutId ?? "",
    activeBatch: m.activeRollout?.batchIndex ?? 0,
    agentVersion: m.agentVersion,
  };
}

/** Not heard from for longer than the threshold; a machine never heard from counts from registration. */
export function isStale(
  m: Pick<MachineRecord, "registeredAt">,
  lastSeen: number | null,
  now: number,
  staleAfterMs: number,
): boolean {
  return now - (lastSeen ?? m.registeredAt) > staleAfterMs;
}

export function releaseToProto(r: ReleaseRecord): MessageInitShape<typeof ReleaseSchema> {
  return {
    id: r.id,
    entries: r.entries.map((e) => ({
      hostname: e.hostname,
      storePath: e.storePath,
      platform: e.platform,
      tags: e.tags,
    })),
    cacheUrl: r.cacheUrl,
    flakeRef: r.flakeRef,
    flakeRev: r.flakeRev,
    createdAt: timestampFromMs(r.createdAt),
    createdBy: r.createdBy,
    hostCount: r.hostCount,
  };
}

export function rolloutToProto(r: RolloutRecord): MessageInitShape<typeof RolloutSchema> {
  return {
    id: r.id,
    releaseId: r.releaseId,
    status: ROLLOUT_STATUS_TO_PROTO[r.status],
    statusReason: r.statusReason,
    target: { tags: r.targetTags, hosts: r.targetHosts },
    strategy: STRATEGY[r.strategy],
    batchSizes: r.batchSizes,
    failureThreshold: r.failureThreshold,
    onFailure: r.onFailure === "revert" ? OnFailureEnum.REVERT : OnFailureEnum.PAUSE,
    healthTimeoutSeconds: r.healthTimeoutSeconds,
    soakSeconds: r.soakSeconds,
    cacheUrl: r.cacheUrl,
    currentBatch: r.currentBatch,
    createdAt: timestampFromMs(r.createdAt),
    updatedAt: timestampFromMs(r.updatedAt),
    createdBy: r.createdBy,
    batches: r.batches.map((b) => {
      let healthy = 0;
      let unhealthy = 0;
      let pending = 0;
      for (const m of b.machines) {
        if (m.gateState === "healthy") healthy++;
        else if (m.gateState === "unhealthy") unhealthy++;
        else pending++;
      }
      return {
        index: b.index,
        status: BATCH_STATUS[b.status],
        startedAt: ts(b.startedAt),
        completedAt: ts(b.completedAt),
        healthy,
        unhealthy,
        pending,
        machines: b.machines.map((m) => ({
          machineId: m.machineId,
          state: GATE_STATE[m.gateState],
          reason: m.gateReason,
          targetGeneration: m.targetGeneration,
          previousGeneration: m.previousGeneration ?? "",
        })),
      };
    }),
  };
}

export function rolloutEventToProto(e: RolloutEventRecord): MessageInitShape<typeof RolloutEventSchema> {
  return {
    id: BigInt(e.id),
    rolloutId: e.rolloutId,
    type: EVENT_TYPE[e.type],
    ...(e.batchIndex !== null ? { batchIndex: e.batchIndex } : {}),
    machineId: e.machineId,
    message: e.message,
    actor: e.actor,
    createdAt: timestampFromMs(e.createdAt),
  };
}

export function apiKeyToProto(k: ApiKeyRecord): MessageInitShape<typeof ApiKeySchema> {
  return {
    id: k.id,
    name: k.name,
    role: ROLE_TO_PROTO[k.role],
    createdAt: timestampFromMs(k.createdAt),
    createdBy: k.createdBy,
    lastUsedAt: ts(k.lastUsedAt),
    revokedAt: ts(k.revokedAt),
  };
}

export function auditToProto(a: AuditRecord): MessageInitShape<typeof AuditEventSchema> {
  return {
    id: BigInt(a.id),
    timestamp: timestampFromMs(a.timestamp),
    actor: a.actor,
    action: a.action,
    target: a.target,
    detail: a.detail,
  };
}

export function reportToProto(r: ReportRecord): MessageInitShape<typeof MachineReportSchema> {
  return {
    receivedAt: timestampFromMs(r.receivedAt),
    outcome: r.outcome,
    success: r.success,
    message: r.message,
    currentGeneration: r.currentGeneration,
    desiredGeneration: r.desiredGeneration,
    desiredRevision: BigInt(r.desiredRevision),
    deploymentId: r.deploymentId,
  };
}

export function healthReportToProto(
  h: HealthReportRecord,
): MessageInitShape<typeof MachineHealthReportSchema> {
  return {
    receivedAt: timestampFromMs(h.receivedAt),
    generation: h.generation,
    allPassed: h.allPassed,
    results: h.results.map((x) => ({
      name: x.name,
      kind: x.kind,
      passed: x.passed,
      durationMs: x.durationMs,
      message: x.message,
    })),
    postApply: h.postApply,
    deploymentId: h.deploymentId,
  };
}
