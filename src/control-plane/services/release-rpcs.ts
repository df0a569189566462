/** FleetService: releases (immutable host → store path manifests). */

import { randomUUID } from "node:crypto";
import type { ServiceImpl } from "@connectrpc/connect";
import { Code, ConnectError } from "@connectrpc/connect";
import { machineIdProblem, releaseIdProblem } from "../../common/ids.js";
import { storePathProblem } from "../../common/store-path.js";
import { check, ValidationError } from "../../common/validation.js";
import type { FleetService } from "../../gen/nixfleet/v1/fleet_pb.js";
import {
  cacheUrlProblem,
  lineProblem,
  MAX_FLAKE_REF_LENGTH,
  MAX_FLAKE_REV_LENGTH,
  platformProblem,
} from "../input-rules.js";
import { diffReleases } from "../releases/diff.js";
import type { ReleaseEntryRecord } from "../store/records.js";
import { releaseToProto } from "./convert.js";
import { checkTags, type FleetRpcKit, principal } from "./fleet-rpc-kit.js";
import { decodeToken, encodeToken, pageSize } from "./paging.js";

export const MAX_RELEASE_ENTRIES = 10_000;

export function releaseRpcs(k: FleetRpcKit): Partial<ServiceImpl<typeof FleetService>> {
  const { store, now, handle } = k;
  return {
    createRelease: (req, ctx) =>
      handle("CreateRelease", async () => {
        if (req.entries.length === 0)
          throw new ValidationError("entries", "a release needs at least one entry");
        if (req.entries.length > MAX_RELEASE_ENTRIES)
          throw new ValidationError(
            "entries",
            `at most ${MAX_RELEASE_ENTRIES} entries allowed, got ${req.entries.length}`,
          );
        const seen = new Map<string, number>();
        const entries: ReleaseEntryRecord[] = req.entries.map((e, i) => {
          check(`entries[${i}].hostname`, machineIdProblem(e.hostname));
          const first = seen.get(e.hostname);
          if (first !== undefined)
            throw new ValidationError(
              `entries[${i}].hostname`,
              `${e.hostname} also appears at entries[${first}]`,
            );
          seen.set(e.hostname, i);
          check(`entries[${i}].store_path`, storePathProblem(e.storePath));
          check(`entries[${i}].platform`, platformProblem(e.platform));
          checkTags(`entries[${i}].tags`, e.tags);
          return { hostname: e.hostname, storePath: e.storePath, platform: e.platform, tags: [...e.tags] };
        });
        if (req.cacheUrl !== "") check("cache_url", cacheUrlProblem(req.cacheUrl));
        check("flake_ref", lineProblem(req.flakeRef, MAX_FLAKE_REF_LENGTH));
        check("flake_rev", lineProblem(req.flakeRev, MAX_FLAKE_REV_LENGTH));
        const release = await store().createRelease(
          {
            id: `rel-${randomUUID()}`,
            entries,
            cacheUrl: req.cacheUrl,
            flakeRef: req.flakeRef,
            flakeRev: req.flakeRev,
          },
          principal(ctx).actor,
          now(),
        );
        return { release: releaseToProto(release) };
      }),

    listReleases: (req) =>
      handle("ListReleases", async () => {
        if (req.host !== "") check("host", machineIdProblem(req.host));
        const limit = pageSize(req.pageSize, 20, 500);
        const token = decodeToken(req.pageToken, { t: "number", i: "string" });
        const rows = await store().listReleases({
          host: req.host === "" ? null : req.host,
          before: token ? { createdAt: token.t, id: token.i } : null,
          limit: limit + 1,
        });
        const page = rows.slice(0, limit);
        const last = page[page.length - 1];
        return {
          releases: page.map(releaseToProto),
          nextPageToken: rows.length > limit && last ? encodeToken({ t: last.createdAt, i: last.id }) : "",
        };
      }),

    getRelease: (req) =>
      handle("GetRelease", async () => {
        check("release_id", releaseIdProblem(req.releaseId));
        const release = await store().getRelease(req.releaseId);
        if (!release) throw new ConnectError(`release ${req.releaseId} does not exist`, Code.NotFound);
        return { release: releaseToProto(release) };
      }),

    diffReleases: (req) =>
      handle("DiffReleases", async () => {
        check("from_release_id", releaseIdProblem(req.fromReleaseId));
        check("to_release_id", releaseIdProblem(req.toReleaseId));
        const [from, to] = await Promise.all([
          store().getRelease(req.fromReleaseId),
          store().getRelease(req.toReleaseId),
        ]);
        if (!from)
          throw new ConnectError(
            `from_release_id: release ${req.fromReleaseId} does not exist`,
            Code.NotFound,
          );
        if (!to)
          throw new ConnectError(`to_release_id: release ${req.toReleaseId} does not exist`, Code.NotFound);
        return diffReleases(from.entries, to.entries);
      }),

    deleteRelease: (req, ctx) =>
      handle("DeleteRelease", async () => {
        check("release_id", releaseIdProblem(req.releaseId));
        await store().deleteRelease(req.releaseId, principal(ctx).actor, now());
        return {};
      }),
  };
}
