/**
 * Connect interceptors that run before any handler:
 * - the availability gate: UNAVAILABLE until the database is migrated and again once shutdown
 *   begins, so clients retry instead of seeing half-initialised or vanishing state;
 * - authentication: FleetService needs an API key with the RPC's role; AgentService needs a
 *   verified client certificate (which machine it may act for is checked per request, against
 *   the machine_id in the message). Reflection is open: it only describes the public contract.
 */
import { Code, ConnectError, createContextKey, type Interceptor } from "@connectrpc/connect";
import { AgentService } from "../../gen/nixfleet/v1/agent_pb.js";
import { FleetService } from "../../gen/nixfleet/v1/fleet_pb.js";
import type { Clock } from "../clock.js";
import type { Role } from "../store/records.js";
import type { FleetStore } from "../store/repository.js";
import { hashSecret, parseBearer, roleAtLeast } from "./api-keys.js";
import { agentConnectionDecision, peerKey } from "./peer-identity.js";
import { requiredRole } from "./roles.js";

export type Phase = "starting" | "ready" | "stopping";

export interface Principal {
  keyId: string;
  keyName: string;
  role: Role;
  /** How audit events name this caller. */
  actor: string;
}

export const principalKey = createContextKey<Principal | null>(null, { description: "API key principal" });

/** UNAVAILABLE unless ready (also used by the raw gRPC Session path, which Connect does not serve). */
export function availabilityError(p: Phase): ConnectError | null {
  if (p === "starting")
    return new ConnectError(
      "the control plane is starting (database not ready yet); retry shortly",
      Code.Unavailable,
    );
  if (p === "stopping")
    return new ConnectError("the control plane is shutting down; retry shortly", Code.Unavailable);
  return null;
}

export function availabilityInterceptor(phase: () => Phase): Interceptor {
  return (next) => async (req) => {
    const refused = availabilityError(phase());
    if (refused) throw refused;
    return next(req);
  };
}

export interface AuthOptions {
  store: () => FleetStore;
  clock: Clock;
  allowInsecure: boolean;
}

export function authInterceptor(options: AuthOptions): Interceptor {
  return (next) => async (req) => {
    const service = req.service.typeName;
    if (service === FleetService.typeName) {
      const parsed = parseBearer(req.header.get("authorization"));
      if (!parsed.ok) throw new ConnectError(parsed.reason, Code.Unauthenticated);
      const key = await options.store().authenticateApiKey(hashSecret(parsed.secret), options.clock.now());
      if (!key) throw new ConnectError("unknown or revoked API key", Code.Unauthenticated);
      const needed = requiredRole(req.method.name);
      if (!roleAtLeast(key.role, needed)) {
        throw new ConnectError(
          `API key ${key.name} has role ${key.role}; ${req.method.name} needs ${needed} or higher`,
          Code.PermissionDenied,
        );
      }
      req.contextValues.set(principalKey, {
        keyId: key.id,
        keyName: key.name,
        role: key.role,
        actor: `apikey:${key.name}`,
      });
    } else if (service === AgentService.typeName) {
      const decision = agentConnectionDecision(req.contextValues.get(peerKey), options.allowInsecure);
      if (!decision.ok) throw new ConnectError(decision.message, decision.code);
    }
    return next(req);
  };
}
