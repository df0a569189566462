/**
 * The least role each FleetService RPC needs, as fleet.proto's comments state. A method missing
 * from this table is refused (admin only), so adding an RPC without deciding its role fails
 * safe; a unit test checks the table covers the whole service.
 */
import type { Role } from "../store/records.js";

export const FLEET_METHOD_ROLES: Readonly<Record<string, Role>> = {
  RegisterMachine: "admin",
  ListMachines: "readonly",
  GetMachine: "readonly",
  GetMachineHistory: "readonly",
  SetMachineLifecycle: "admin",
  SetDesiredGeneration: "deploy",
  ClearDesiredGeneration: "deploy",
  CreateRelease: "deploy",
  ListReleases: "readonly",
  GetRelease: "readonly",
  DiffReleases: "readonly",
  DeleteRelease: "admin",
  CreateRollout: "deploy",
  ListRollouts: "readonly",
  GetRollout: "readonly",
  PauseRollout: "deploy",
  ResumeRollout: "deploy",
  CancelRollout: "deploy",
  WatchRollout: "readonly",
  GetFleetStatus: "readonly",
  WatchFleet: "readonly",
  ListAuditEvents: "readonly",
  GetCaller: "readonly",
  CreateApiKey: "admin",
  ListApiKeys: "admin",
  RevokeApiKey: "admin",
};

export function requiredRole(methodName: string): Role {
  return FLEET_METHOD_ROLES[methodName] ?? "admin";
}
