/**
 * FleetService handlers: validate the request (INVALID_ARGUMENT naming the field, nothing
 * stored), call the store (one transaction per mutation, audited there), then push what changed.
 * Authentication and roles were already checked by the auth interceptor. One module per resource;
 * this one puts them together.
 */
import type { ServiceImpl } from "@connectrpc/connect";
import type { FleetService } from "../../gen/nixfleet/v1/fleet_pb.js";
import { type FleetServiceOptions, fleetRpcKit } from "./fleet-rpc-kit.js";
import { fleetStatusRpcs } from "./fleet-status-rpcs.js";
import { keyAuditRpcs } from "./key-audit-rpcs.js";
import { machineRpcs } from "./machine-rpcs.js";
import { releaseRpcs } from "./release-rpcs.js";
import { rolloutRpcs } from "./rollout-rpcs.js";

export type { FleetServiceOptions } from "./fleet-rpc-kit.js";
export { MAX_RELEASE_ENTRIES } from "./release-rpcs.js";

export function fleetServiceImpl(o: FleetServiceOptions): Partial<ServiceImpl<typeof FleetService>> {
  const kit = fleetRpcKit(o);
  return {
    ...machineRpcs(kit),
    ...releaseRpcs(kit),
    ...rolloutRpcs(kit),
    ...fleetStatusRpcs(kit),
    ...keyAuditRpcs(kit),
  };
}
