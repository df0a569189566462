/** FleetService: the fleet status (GetFleetStatus) and its stream of changes (WatchFleet). */

import type { ServiceImpl } from "@connectrpc/connect";
import type { FleetService } from "../../gen/nixfleet/v1/fleet_pb.js";
import { isStale, machineStatusToProto } from "./convert.js";
import { ALL_MACHINES, checkTags, type FleetRpcKit, tagMatch } from "./fleet-rpc-kit.js";

export function fleetStatusRpcs(k: FleetRpcKit): Partial<ServiceImpl<typeof FleetService>> {
  const { o, store, now, handle } = k;
  return {
    getFleetStatus: (req) =>
      handle("GetFleetStatus", async () => {
        checkTags("tags", req.tags);
        const machines = await store().listMachines({
          tags: req.tags,
          match: tagMatch(req.match),
          lifecycle: null,
          afterId: null,
          limit: ALL_MACHINES,
        });
        const t = now();
        let inSync = 0;
        let stale = 0;
        let healthy = 0;
        const statuses = machines.map((m) => {
          const s = machineStatusToProto(m, o.live, t, o.staleAfterMs);
          if (s.inSync) inSync++;
          if (isStale(m, o.live.lastSeen(m), t, o.staleAfterMs)) stale++;
          if (m.health?.allPassed) healthy++;
          return s;
        });
        return {
          machines: statuses,
          total: machines.length,
          inSync,
          stale,
          healthy,
          staleAfterSeconds: Math.round(o.staleAfterMs / 1000),
        };
      }),
  };
}
