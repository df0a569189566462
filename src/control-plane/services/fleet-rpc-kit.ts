/**
 * What every FleetService handler module shares: the service's options, error mapping, the
 * caller's principal, and the few lookups and request checks more than one resource needs.
 */
import { Code, ConnectError, type HandlerContext } from "@connectrpc/connect";
import { rolloutIdProblem, tagsProblem } from "../../common/ids.js";
import type { Logger } from "../../common/logger.js";
import { check, ValidationError } from "../../common/validation.js";
import { TagMatch } from "../../gen/nixfleet/v1/fleet_pb.js";
import { MachineLifecycle } from "../../gen/nixfleet/v1/types_pb.js";
import { type Principal, principalKey } from "../auth/interceptors.js";
import type { Clock } from "../clock.js";
import type { PushHub } from "../push/hub.js";
import type { RolloutExecutor } from "../rollouts/executor.js";
import type { RolloutNotifier } from "../rollouts/notifier.js";
import type { RolloutChanges } from "../rollouts/rollout-events.js";
import type { Lifecycle, MachineRecord, RolloutRecord } from "../store/records.js";
import type { FleetStore } from "../store/repository.js";
import { LIFECYCLE_FROM_PROTO, type LiveView, machineToProto } from "./convert.js";
import { toConnectError } from "./errors.js";
import type { FleetChanges } from "./fleet-changes.js";
import type { FleetFeed } from "./fleet-feed.js";

export interface FleetServiceOptions {
  store: () => FleetStore;
  clock: Clock;
  hub: PushHub;
  executor: () => RolloutExecutor;
  notifier: RolloutNotifier;
  changes: RolloutChanges;
  live: LiveView;
  logger: Logger;
  staleAfterMs: number;
  /** How often WatchRollout re-reads the store even without a notification (other writers). */
  watchPollMs?: number;
  /** Publishes operator changes to machines (WatchFleet's source, with the agents' own). */
  fleetChanges: FleetChanges;
  /** What WatchFleet streams are fed from. */
  feed: FleetFeed;
  /** Re-checked at once after RevokeApiKey, so this process's streams of that key end now. */
  revocations: { check(): Promise<void> };
  /** Changes queued per WatchFleet stream before it is resynced instead (default 20,000). */
  watchFleetQueueLimit?: number;
}

/** Enough for any fleet: listing calls that must see every machine pass it as their limit. */
export const ALL_MACHINES = 1_000_000;

export function principal(ctx: HandlerContext): Principal {
  const p = ctx.values.get(principalKey);
  if (!p) throw new ConnectError("no API key principal on an authenticated call", Code.Internal);
  return p;
}

export function checkTags(field: string, tags: readonly string[]): void {
  const bad = tagsProblem(tags);
  if (bad) throw new ValidationError(`${field}[${bad.index}]`, bad.reason);
}

export function tagMatch(value: number): "all" | "any" {
  if (value === TagMatch.UNSPECIFIED || value === TagMatch.ALL) return "all";
  if (value === TagMatch.ANY) return "any";
  throw new ValidationError("match", `unknown value ${value}; use ALL or ANY`);
}

export function lifecycleFilter(value: number): Lifecycle | null {
  if (value === MachineLifecycle.UNSPECIFIED) return null;
  const lifecycle = LIFECYCLE_FROM_PROTO[value];
  if (!lifecycle) throw new ValidationError("lifecycle", `unknown lifecycle ${value}`);
  return lifecycle;
}

/** The options plus the helpers built on them, handed to every handler module. */
export interface FleetRpcKit {
  o: FleetServiceOptions;
  store: () => FleetStore;
  now: () => number;
  /** Maps errors to Connect codes; logs only the unexpected ones. */
  handle<T>(what: string, fn: () => Promise<T>): Promise<T>;
  mustGetMachine(id: string): Promise<MachineRecord>;
  mustGetRollout(id: string): Promise<RolloutRecord>;
  machine(m: MachineRecord): ReturnType<typeof machineToProto>;
}

export function fleetRpcKit(o: FleetServiceOptions): FleetRpcKit {
  const store = () => o.store();
  return {
    o,
    store,
    now: () => o.clock.now(),
    async handle(what, fn) {
      try {
        return await fn();
      } catch (err) {
        const mapped = toConnectError(err);
        if (mapped.code === Code.Internal) o.logger.error({ err }, `${what} failed`);
        throw mapped;
      }
    },
    async mustGetMachine(id) {
      const machine = await store().getMachine(id);
      if (!machine) throw new ConnectError(`machine ${id} is not registered`, Code.NotFound);
      return machine;
    },
    async mustGetRollout(id) {
      check("rollout_id", rolloutIdProblem(id));
      const rollout = await store().getRollout(id);
      if (!rollout) throw new ConnectError(`rollout ${id} does not exist`, Code.NotFound);
      return rollout;
    },
    machine: (m) => machineToProto(m, o.live),
  };
}
