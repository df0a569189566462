/**
 * CreateRollout input: validation of every parameter (nothing is stored unless all of it is
 * valid) and target resolution against the fleet and the release. Pure: the service hands in
 * the machines and the release it read, and gets back either the plan or a precise complaint.
 */
import { machineIdProblem, tagsProblem } from "../../common/ids.js";
import { ValidationError } from "../../common/validation.js";
import { OnFailure as OnFailureEnum, RolloutStrategy } from "../../gen/nixfleet/v1/fleet_pb.js";
import { cacheUrlProblem } from "../input-rules.js";
import type { MachineRecord, OnFailure, ReleaseRecord, Strategy } from "../store/records.js";
import { batchSizesProblem, effectiveBatchSizes, planBatches } from "./batch-plan.js";
import { parseFailureThreshold } from "./threshold.js";

export const DEFAULT_HEALTH_TIMEOUT_SECONDS = 300;
export const MAX_DURATION_SECONDS = 86_400;
export const MAX_TARGET_HOSTS = 10_000;

export interface RolloutRequestInput {
  releaseId: string;
  target: { tags: readonly string[]; hosts: readonly string[] } | undefined;
  strategy: number;
  batchSizes: readonly string[];
  failureThreshold: string;
  onFailure: number;
  healthTimeoutSeconds: number;
  soakSeconds: number;
  cacheUrl: string;
}

export type RolloutTargetSpec = { kind: "tags"; tags: string[] } | { kind: "hosts"; hosts: string[] };

export interface ValidRolloutRequest {
  releaseId: string;
  target: RolloutTargetSpec;
  strategy: Strategy;
  /** The effective sizes (the strategy's own for ALL_AT_ONCE and CANARY). */
  batchSizes: string[];
  failureThreshold: string;
  onFailure: OnFailure;
  healthTimeoutSeconds: number;
  soakSeconds: number;
  /** Empty: use the release's. */
  cacheUrl: string;
}

const STRATEGIES: Partial<Record<number, Strategy>> = {
  [RolloutStrategy.ALL_AT_ONCE]: "all_at_once",
  [RolloutStrategy.CANARY]: "canary",
  [RolloutStrategy.STAGED]: "staged",
};

/** Validates everything that does not depend on stored state; throws ValidationError. */
export function validateRolloutRequest(input: RolloutRequestInput): ValidRolloutRequest {
  const tags = input.target?.tags ?? [];
  const hosts = input.target?.hosts ?? [];
  if (tags.length > 0 && hosts.length > 0)
    throw new ValidationError("target", "give either tags or hosts, not both");
  if (tags.length === 0 && hosts.length === 0)
    throw new ValidationError("target", "give the machines to deploy to: target.tags or target.hosts");
  let target: RolloutTargetSpec;
  if (tags.length > 0) {
    const bad = tagsProblem(tags);
    if (bad) throw new ValidationError(`target.tags[${bad.index}]`, bad.reason);
    target = { kind: "tags", tags: [...new Set(tags)].sort() };
  } else {
    if (hosts.length > MAX_TARGET_HOSTS)
      throw new ValidationError(
        "target.hosts",
        `at most ${MAX_TARGET_HOSTS} hosts allowed, got ${hosts.length}`,
      );
    const seen = new Map<string, number>();
    for (const [i, host] of hosts.entries()) {
      const problem = machineIdProblem(host);
      if (problem) throw new ValidationError(`target.hosts[${i}]`, problem);
      const first = seen.get(host);
      if (first !== undefined)
        throw new ValidationError(`target.hosts[${i}]`, `${host} is listed twice (also at index ${first})`);
      seen.set(host, i);
    }
    target = { kind: "hosts", hosts: [...hosts] };
  }

  const strategy = STRATEGIES[input.strategy];
  if (!strategy) throw new ValidationError("strategy", "must be ALL_AT_ONCE, CANARY or STAGED");
  if (strategy === "staged") {
    const bad = batchSizesProblem(input.batchSizes);
    if (bad)
      throw new ValidationError(bad.index === null ? "batch_sizes" : `batch_sizes[${bad.index}]`, bad.reason);
  } else if (input.batchSizes.length > 0) {
    throw new ValidationError(
      "batch_sizes",
      `only a STAGED rollout takes batch sizes; ${strategy.toUpperCase()} plans its own`,
    );
  }

  const threshold = parseFailureThreshold(input.failureThreshold);
  if (typeof threshold === "string") throw new ValidationError("failure_threshold", threshold);

  let onFailure: OnFailure;
  if (input.onFailure === OnFailureEnum.UNSPECIFIED || input.onFailure === OnFailureEnum.PAUSE)
    onFailure = "pause";
  else if (input.onFailure === OnFailureEnum.REVERT) onFailure = "revert";
  else throw new ValidationError("on_failure", `unknown value ${input.onFailure}; use PAUSE or REVERT`);

  if (input.healthTimeoutSeconds > MAX_DURATION_SECONDS)
    throw new ValidationError(
      "health_timeout_seconds",
      `at most ${MAX_DURATION_SECONDS} (one day), got ${input.healthTimeoutSeconds}`,
    );
  if (input.soakSeconds > MAX_DURATION_SECONDS)
    throw new ValidationError(
      "soak_seconds",
      `at most ${MAX_DURATION_SECONDS} (one day), got ${input.soakSeconds}`,
    );

  if (input.cacheUrl !== "") {
    const problem = cacheUrlProblem(input.cacheUrl);
    if (problem) throw new ValidationError("cache_url", problem);
  }

  return {
    releaseId: input.releaseId,
    target,
    strategy,
    batchSizes: effectiveBatchSizes(strategy, input.batchSizes),
    failureThreshold: input.failureThreshold === "" ? "0" : input.failureThreshold,
    onFailure,
    healthTimeoutSeconds:
      input.healthTimeoutSeconds === 0 ? DEFAULT_HEALTH_TIMEOUT_SECONDS : input.healthTimeoutSeconds,
    soakSeconds: input.soakSeconds,
    cacheUrl: input.cacheUrl,
  };
}

export interface PlannedMachine {
  machineId: string;
  targetGeneration: string;
}

export type TargetResolution =
  | { ok: true; batches: PlannedMachine[][]; skipped: string[] }
  | { ok: false; code: "not_found" | "failed_precondition"; message: string };

function describeTarget(target: RolloutTargetSpec): string {
  return target.kind === "tags" ? `tags ${target.tags.join(",")}` : `hosts ${target.hosts.join(",")}`;
}

/**
 * Picks the machines a rollout deploys to and plans its batches.
 * `candidates`: for a tag target, the machines having all the tags (any lifecycle); for a host
 * target, the machines found for the hosts (missing ones are simply absent).
 */
/** What choosing a machine needs of it. */
export type Candidate = Pick<MachineRecord, "id" | "lifecycle" | "activeRollout">;

export function resolveTargets(
  request: ValidRolloutRequest,
  candidates: readonly Candidate[],
  release: ReleaseRecord,
): TargetResolution {
  const entries = new Map(release.entries.map((e) => [e.hostname, e.storePath]));
  const byId = new Map(candidates.map((m) => [m.id, m]));
  let chosen: Candidate[];
  const skipped: string[] = [];

  if (request.target.kind === "hosts") {
    chosen = [];
    for (const host of request.target.hosts) {
      const machine = byId.get(host);
      if (!machine)
        return {
          ok: false,
          code: "not_found",
          message: `machine ${host} is not registered; register it or let its agent report first`,
        };
      if (machine.lifecycle !== "active")
        return {
          ok: false,
          code: "failed_precondition",
          message: `machine ${host} is ${machine.lifecycle}; only ACTIVE machines can be targeted`,
        };
      if (!entries.has(host))
        return {
          ok: false,
          code: "failed_precondition",
          message: `release ${release.id} has no entry for host ${host}`,
        };
      chosen.push(machine);
    }
  } else {
    const active = [...candidates]
      .filter((m) => m.lifecycle === "active")
      .sort((a, b) => (a.id < b.id ? -1 : 1));
    if (active.length === 0)
      return {
        ok: false,
        code: "failed_precondition",
        message: `no active machines match ${describeTarget(request.target)}`,
      };
    chosen = [];
    for (const m of active) {
      if (entries.has(m.id)) chosen.push(m);
      else skipped.push(m.id);
    }
    if (chosen.length === 0)
      return {
        ok: false,
        code: "failed_precondition",
        message: `none of the ${active.length} active machines matching ${describeTarget(request.target)} has an entry in release ${release.id} (${active
          .slice(0, 5)
          .map((m) => m.id)
          .join(", ")}${active.length > 5 ? ", …" : ""})`,
      };
  }

  for (const m of chosen) {
    if (m.activeRollout)
      return {
        ok: false,
        code: "failed_precondition",
        message: `machine ${m.id} is already in active rollout ${m.activeRollout.rolloutId} (${m.activeRollout.status}); finish, pause and cancel, or wait for it first`,
      };
  }

  const planned = chosen.map((m) => ({ machineId: m.id, targetGeneration: entries.get(m.id)! }));
  return { ok: true, batches: planBatches(planned, request.batchSizes), skipped };
}
