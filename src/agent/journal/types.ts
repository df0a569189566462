/** The journal's records and how they map from rows. */
import type { ActivationHandle } from "../activation.js";

export const PHASES = [
  "fetching",
  "applying",
  "switching",
  "verifying",
  /** Confirm order: verified; the profile and the boot default move to the new generation. */
  "committing",
  "rolling_back",
  "done",
] as const;
export type Phase = (typeof PHASES)[number];

/** How a deployment activates (the agent's `activationOrder` when its intent was written). */
export type ActivationOrder = "confirm" | "switch";

/** How a deployment ended. INTERRUPTED: the agent stopped before the host changed; retried. */
export const FINAL_OUTCOMES = [
  "DEPLOYED",
  "ROLLED_BACK",
  /** Confirm order: the host rebooted during verification and booted the previous generation. */
  "ROLLED_BACK_BY_REBOOT",
  "ROLLBACK_FAILED",
  "FETCH_FAILED",
  "APPLY_FAILED",
  "DRY_RUN",
  "SWITCH_LOCKED",
  "FOREIGN_GENERATION",
  "INTERRUPTED",
] as const;
export type FinalOutcome = (typeof FINAL_OUTCOMES)[number];

export interface Deployment {
  id: string;
  desired: string;
  desiredRevision: bigint;
  rolloutId: string;
  cacheUrl: string | null;
  previous: string | null;
  previousProfileGeneration: number | null;
  phase: Phase;
  outcome: FinalOutcome | null;
  message: string | null;
  activation: ActivationHandle | null;
  rollbackActivation: ActivationHandle | null;
  rollbackReason: string | null;
  rollbackAttempts: number;
  /** "switch" for deployments journaled before the confirm window existed. */
  activationOrder: ActivationOrder;
  /** The kernel's boot id when the intent was written (null: unknown). */
  bootId: string | null;
  /** The profile / boot default may have moved to the new generation (commit started). */
  bootDefaultMoved: boolean;
  createdAt: number;
  updatedAt: number;
  finishedAt: number | null;
}

export interface PhaseRecord {
  phase: Phase;
  startedAt: number;
  endedAt: number | null;
  error: string | null;
}

export interface QuarantineEntry {
  path: string;
  revision: bigint;
  deploymentId: string | null;
  outcome: string;
  reason: string;
  createdAt: number;
}

/**
 * How an outbox row may be dropped before delivery:
 * - outcome: a deployment's outcome (and its progress and post-apply health) — never evicted;
 * - status: a steady-state report — the newest per coalesce key replaces older ones, bounded;
 * - health: periodic health history — the newest per generation replaces older ones, bounded.
 */
export const OUTBOX_CLASSES = ["outcome", "status", "health"] as const;
export type OutboxClass = (typeof OUTBOX_CLASSES)[number];

/** A row to queue: what the reporter sends, encoded, with how it may be coalesced. */
export interface OutboxRow {
  kind: "report" | "health";
  outcome: string;
  deploymentId: string;
  payload: Uint8Array;
  class: OutboxClass;
  /** status/health rows with the same key replace each other (newest wins). */
  coalesceKey?: string;
}

export interface OutboxItem extends OutboxRow {
  id: number;
  createdAt: number;
  attempts: number;
}

/** What settles a deployment, written in one transaction with its outcome. */
export interface Settlement {
  error?: string;
  /** The failed path, remembered at this revision (recovery relies on it being there). */
  quarantine?: { path: string; revision: bigint; outcome: string; reason: string };
  /** The reports the control plane must receive about this outcome. */
  reports?: readonly OutboxRow[];
  /** Post-apply health results for the history. */
  health?: HealthRecord;
}

export interface HealthRecord {
  generation: string;
  allPassed: boolean;
  postApply: boolean;
  deploymentId: string;
  results: unknown;
  at: number;
}

export interface DeploymentRow {
  id: string;
  desired: string;
  desired_revision: string;
  rollout_id: string;
  cache_url: string | null;
  previous: string | null;
  previous_profile_generation: number | null;
  phase: Phase;
  outcome: FinalOutcome | null;
  message: string | null;
  activation: string | null;
  rollback_activation: string | null;
  rollback_reason: string | null;
  rollback_attempts: number;
  activation_order: string | null;
  boot_id: string | null;
  boot_default_moved: number;
  created_at: number;
  updated_at: number;
  finished_at: number | null;
}

export function toDeployment(row: DeploymentRow): Deployment {
  return {
    id: row.id,
    desired: row.desired,
    desiredRevision: BigInt(row.desired_revision),
    rolloutId: row.rollout_id,
    cacheUrl: row.cache_url,
    previous: row.previous,
    previousProfileGeneration: row.previous_profile_generation,
    phase: row.phase,
    outcome: row.outcome,
    message: row.message,
    activation: row.activation ? (JSON.parse(row.activation) as ActivationHandle) : null,
    rollbackActivation: row.rollback_activation
      ? (JSON.parse(row.rollback_activation) as ActivationHandle)
      : null,
    rollbackReason: row.rollback_reason,
    rollbackAttempts: row.rollback_attempts,
    activationOrder: row.activation_order === "confirm" ? "confirm" : "switch",
    bootId: row.boot_id,
    bootDefaultMoved: row.boot_default_moved === 1,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
    finishedAt: row.finished_at,
  };
}

export interface PhaseUpdate {
  activation?: ActivationHandle | null;
  rollbackActivation?: ActivationHandle | null;
  rollbackReason?: string;
  rollbackAttempts?: number;
  bootDefaultMoved?: boolean;
  /** Recorded on the phase being closed. */
  error?: string;
}

/** How much history to keep. Unfinished deployments and quarantine entries are never pruned. */
export const RETENTION = {
  deployments: 500,
  healthRows: 2000,
  healthAgeMs: 7 * 24 * 3600 * 1000,
  /** Bounds status and periodic health rows only: outcomes are never evicted before delivery. */
  outboxItems: 200,
};
