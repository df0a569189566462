/** FleetService: the audit log, the caller, and API keys. */

import { timestampMs } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import { keyNameProblem, MAX_ID_LENGTH } from "../../common/ids.js";
import { check, ValidationError } from "../../common/validation.js";
import type { FleetService } from "../../gen/nixfleet/v1/fleet_pb.js";
import { generateSecret, hashSecret, newKeyId } from "../auth/api-keys.js";
import { lineProblem } from "../input-rules.js";
import { apiKeyToProto, auditToProto, ROLE_FROM_PROTO, ROLE_TO_PROTO } from "./convert.js";
import { type FleetRpcKit, principal } from "./fleet-rpc-kit.js";
import { decodeToken, encodeToken, pageSize } from "./paging.js";

export function keyAuditRpcs(k: FleetRpcKit): Partial<ServiceImpl<typeof FleetService>> {
  const { o, store, now, handle } = k;
  return {
    listAuditEvents: (req) =>
      handle("ListAuditEvents", async () => {
        for (const [field, value] of [
          ["actor", req.actor],
          ["action", req.action],
          ["target", req.target],
        ] as const) {
          check(field, lineProblem(value, 256));
        }
        const limit = pageSize(req.pageSize, 100, 1000);
        const token = decodeToken(req.pageToken, { i: "number" });
        const rows = await store().listAudit({
          actor: req.actor || null,
          action: req.action || null,
          target: req.target || null,
          since: req.since ? timestampMs(req.since) : null,
          beforeId: token?.i ?? null,
          limit: limit + 1,
        });
        const page = rows.slice(0, limit);
        const last = page[page.length - 1];
        return {
          events: page.map(auditToProto),
          nextPageToken: rows.length > limit && last ? encodeToken({ i: last.id }) : "",
        };
      }),

    createApiKey: (req, ctx) =>
      handle("CreateApiKey", async () => {
        check("name", keyNameProblem(req.name));
        const role = ROLE_FROM_PROTO[req.role];
        if (!role) throw new ValidationError("role", "must be READONLY, DEPLOY or ADMIN");
        const secret = generateSecret();
        const key = await store().createApiKey(
          { id: newKeyId(), name: req.name, role, hash: hashSecret(secret) },
          principal(ctx).actor,
          now(),
        );
        return { apiKey: apiKeyToProto(key), secret };
      }),

    getCaller: (_req, ctx) =>
      handle("GetCaller", async () => {
        const p = principal(ctx);
        return { keyName: p.keyName, role: ROLE_TO_PROTO[p.role], actor: p.actor };
      }),

    listApiKeys: (req) =>
      handle("ListApiKeys", async () => ({
        apiKeys: (await store().listApiKeys(req.includeRevoked)).map(apiKeyToProto),
      })),

    revokeApiKey: (req, ctx) =>
      handle("RevokeApiKey", async () => {
        if (req.key === "") throw new ValidationError("key", "give the id or the name of the key to revoke");
        check("key", lineProblem(req.key, MAX_ID_LENGTH));
        const p = principal(ctx);
        const key = await store().revokeApiKey(req.key, p.keyId, p.actor, now());
        await o.revocations.check();
        return { apiKey: apiKeyToProto(key) };
      }),
  };
}
