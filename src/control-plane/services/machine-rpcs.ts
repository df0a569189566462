/** FleetService: registering machines, their lifecycle, history and one-off desired generations. */

import type { ServiceImpl } from "@connectrpc/connect";
import { machineIdProblem } from "../../common/ids.js";
import { storePathProblem } from "../../common/store-path.js";
import { check, ValidationError } from "../../common/validation.js";
import type { FleetService } from "../../gen/nixfleet/v1/fleet_pb.js";
import { MachineLifecycle } from "../../gen/nixfleet/v1/types_pb.js";
import { cacheUrlProblem } from "../input-rules.js";
import type { Lifecycle } from "../store/records.js";
import { healthReportToProto, LIFECYCLE_FROM_PROTO, reportToProto } from "./convert.js";
import { checkTags, type FleetRpcKit, lifecycleFilter, principal, tagMatch } from "./fleet-rpc-kit.js";
import { decodeToken, encodeToken, pageSize } from "./paging.js";

export function machineRpcs(k: FleetRpcKit): Partial<ServiceImpl<typeof FleetService>> {
  const { o, store, now, handle, machine, mustGetMachine } = k;
  return {
    registerMachine: (req, ctx) =>
      handle("RegisterMachine", async () => {
        check("machine_id", machineIdProblem(req.machineId));
        checkTags("tags", req.tags);
        let lifecycle: Lifecycle | null = null;
        if (req.lifecycle !== MachineLifecycle.UNSPECIFIED) {
          lifecycle = LIFECYCLE_FROM_PROTO[req.lifecycle] ?? null;
          if (!lifecycle) throw new ValidationError("lifecycle", `unknown lifecycle ${req.lifecycle}`);
          if (lifecycle === "decommissioned")
            throw new ValidationError(
              "lifecycle",
              "a machine cannot be registered as DECOMMISSIONED; use SetMachineLifecycle",
            );
        }
        const result = await store().registerMachine(
          { id: req.machineId, tags: [...req.tags], lifecycle },
          principal(ctx).actor,
          now(),
        );
        o.fleetChanges.publish(req.machineId, "registered");
        return { machine: machine(result.machine), created: result.created };
      }),

    listMachines: (req) =>
      handle("ListMachines", async () => {
        checkTags("tags", req.tags);
        const limit = pageSize(req.pageSize, 500, 1000);
        const token = decodeToken(req.pageToken, { a: "string" });
        const rows = await store().listMachines({
          tags: req.tags,
          match: tagMatch(req.match),
          lifecycle: lifecycleFilter(req.lifecycle),
          afterId: token?.a ?? null,
          limit: limit + 1,
        });
        const page = rows.slice(0, limit);
        return {
          machines: page.map(machine),
          nextPageToken: rows.length > limit ? encodeToken({ a: page[page.length - 1]!.id }) : "",
        };
      }),

    getMachine: (req) =>
      handle("GetMachine", async () => {
        check("machine_id", machineIdProblem(req.machineId));
        return { machine: machine(await mustGetMachine(req.machineId)) };
      }),

    getMachineHistory: (req) =>
      handle("GetMachineHistory", async () => {
        check("machine_id", machineIdProblem(req.machineId));
        await mustGetMachine(req.machineId);
        const limit = pageSize(req.pageSize, 50, 200);
        const [reports, health] = await Promise.all([
          store().machineReports(req.machineId, limit),
          store().latestHealthReport(req.machineId),
        ]);
        return {
          reports: reports.map(reportToProto),
          latestHealth: health ? healthReportToProto(health) : undefined,
        };
      }),

    setMachineLifecycle: (req, ctx) =>
      handle("SetMachineLifecycle", async () => {
        check("machine_id", machineIdProblem(req.machineId));
        const lifecycle = LIFECYCLE_FROM_PROTO[req.lifecycle];
        if (!lifecycle)
          throw new ValidationError("lifecycle", "must be PENDING, ACTIVE, MAINTENANCE or DECOMMISSIONED");
        const result = await store().setLifecycle(req.machineId, lifecycle, principal(ctx).actor, now());
        o.fleetChanges.publish(req.machineId, "lifecycle");
        return { machine: machine(result.machine) };
      }),

    setDesiredGeneration: (req, ctx) =>
      handle("SetDesiredGeneration", async () => {
        check("machine_id", machineIdProblem(req.machineId));
        check("store_path", storePathProblem(req.storePath));
        if (req.cacheUrl !== "") check("cache_url", cacheUrlProblem(req.cacheUrl));
        const result = await store().setDesired(
          { machineId: req.machineId, storePath: req.storePath, cacheUrl: req.cacheUrl },
          principal(ctx).actor,
          now(),
        );
        o.notifier.desiredChanged(result.change);
        o.fleetChanges.publish(req.machineId, "desired");
        return { machine: machine(result.machine) };
      }),

    clearDesiredGeneration: (req, ctx) =>
      handle("ClearDesiredGeneration", async () => {
        check("machine_id", machineIdProblem(req.machineId));
        const result = await store().clearDesired(req.machineId, principal(ctx).actor, now());
        if (result.change) {
          o.notifier.desiredChanged(result.change);
          o.fleetChanges.publish(req.machineId, "desired");
        }
        return { machine: machine(result.machine) };
      }),
  };
}
