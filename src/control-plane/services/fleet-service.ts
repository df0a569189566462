/**
 * FleetService handlers: validate the request (INVALID_ARGUMENT naming the field, nothing
 * stored), call the store (one transaction per mutation, audited there), then push what changed.
 * Authentication and roles were already checked by the auth interceptor.
 */
import { randomUUID } from "node:crypto";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import {
  keyNameProblem,
  MAX_ID_LENGTH,
  machineIdProblem,
  releaseIdProblem,
  rolloutIdProblem,
  tagsProblem,
} from "../../common/ids.js";
import type { Logger } from "../../common/logger.js";
import { storePathProblem } from "../../common/store-path.js";
import { check, ValidationError } from "../../common/validation.js";
import { type FleetService, TagMatch } from "../../gen/nixfleet/v1/fleet_pb.js";
import { MachineLifecycle } from "../../gen/nixfleet/v1/types_pb.js";
import { generateSecret, hashSecret, newKeyId } from "../auth/api-keys.js";
import { type Principal, principalKey } from "../auth/interceptors.js";
import type { Clock } from "../clock.js";
import {
  cacheUrlProblem,
  lineProblem,
  MAX_FLAKE_REF_LENGTH,
  MAX_FLAKE_REV_LENGTH,
  MAX_REASON_LENGTH,
  platformProblem,
  textProblem,
} from "../input-rules.js";
import type { PushHub } from "../push/hub.js";
import { diffReleases } from "../releases/diff.js";
import type { RolloutExecutor } from "../rollouts/executor.js";
import type { RolloutNotifier } from "../rollouts/notifier.js";
import type { RolloutChanges } from "../rollouts/rollout-events.js";
import { resolveTargets, validateRolloutRequest } from "../rollouts/rollout-request.js";
import { isActiveStatus } from "../rollouts/state-machine.js";
import type { Lifecycle, MachineRecord, ReleaseEntryRecord, RolloutRecord } from "../store/records.js";
import type { FleetStore } from "../store/repository.js";
import {
  apiKeyToProto,
  auditToProto,
  healthReportToProto,
  isStale,
  LIFECYCLE_FROM_PROTO,
  type LiveView,
  machineStatusToProto,
  machineToProto,
  ROLE_FROM_PROTO,
  ROLE_TO_PROTO,
  ROLLOUT_STATUS_FROM_PROTO,
  releaseToProto,
  reportToProto,
  rolloutEventToProto,
  rolloutToProto,
} from "./convert.js";
import { toConnectError } from "./errors.js";
import { decodeToken, encodeToken, pageSize } from "./paging.js";

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
}

export const MAX_RELEASE_ENTRIES = 10_000;
const ALL_MACHINES = 1_000_000;

function principal(ctx: HandlerContext): Principal {
  const p = ctx.values.get(principalKey);
  if (!p) throw new ConnectError("no API key principal on an authenticated call", Code.Internal);
  return p;
}

function checkTags(field: string, tags: readonly string[]): void {
  const bad = tagsProblem(tags);
  if (bad) throw new ValidationError(`${field}[${bad.index}]`, bad.reason);
}

function tagMatch(value: number): "all" | "any" {
  if (value === TagMatch.UNSPECIFIED || value === TagMatch.ALL) return "all";
  if (value === TagMatch.ANY) return "any";
  throw new ValidationError("match", `unknown value ${value}; use ALL or ANY`);
}

function lifecycleFilter(value: number): Lifecycle | null {
  if (value === MachineLifecycle.UNSPECIFIED) return null;
  const lifecycle = LIFECYCLE_FROM_PROTO[value];
  if (!lifecycle) throw new ValidationError("lifecycle", `unknown lifecycle ${value}`);
  return lifecycle;
}

function requiredId(field: string, problem: string | undefined): void {
  check(field, problem);
}

export function fleetServiceImpl(o: FleetServiceOptions): Partial<ServiceImpl<typeof FleetService>> {
  const store = () => o.store();
  const now = () => o.clock.now();

  /** Maps errors to Connect codes; logs only the unexpected ones. */
  async function handle<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      const mapped = toConnectError(err);
      if (mapped.code === Code.Internal) o.logger.error({ err }, `${what} failed`);
      throw mapped;
    }
  }

  async function mustGetMachine(id: string): Promise<MachineRecord> {
    const machine = await store().getMachine(id);
    if (!machine) throw new ConnectError(`machine ${id} is not registered`, Code.NotFound);
    return machine;
  }

  async function mustGetRollout(id: string): Promise<RolloutRecord> {
    check("rollout_id", rolloutIdProblem(id));
    const rollout = await store().getRollout(id);
    if (!rollout) throw new ConnectError(`rollout ${id} does not exist`, Code.NotFound);
    return rollout;
  }

  const machine = (m: MachineRecord) => machineToProto(m, o.live);

  return {
    // ------------------------------------------------------------ machines
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
        return { machine: machine(result.machine) };
      }),

    clearDesiredGeneration: (req, ctx) =>
      handle("ClearDesiredGeneration", async () => {
        check("machine_id", machineIdProblem(req.machineId));
        const result = await store().clearDesired(req.machineId, principal(ctx).actor, now());
        if (result.change) o.notifier.desiredChanged(result.change);
        return { machine: machine(result.machine) };
      }),

    // ------------------------------------------------------------ releases
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
        requiredId("release_id", releaseIdProblem(req.releaseId));
        const release = await store().getRelease(req.releaseId);
        if (!release) throw new ConnectError(`release ${req.releaseId} does not exist`, Code.NotFound);
        return { release: releaseToProto(release) };
      }),

    diffReleases: (req) =>
      handle("DiffReleases", async () => {
        requiredId("from_release_id", releaseIdProblem(req.fromReleaseId));
        requiredId("to_release_id", releaseIdProblem(req.toReleaseId));
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
        requiredId("release_id", releaseIdProblem(req.releaseId));
        await store().deleteRelease(req.releaseId, principal(ctx).actor, now());
        return {};
      }),

    // ------------------------------------------------------------ rollouts
    createRollout: (req, ctx) =>
      handle("CreateRollout", async () => {
        requiredId("release_id", releaseIdProblem(req.releaseId));
        const valid = validateRolloutRequest({
          releaseId: req.releaseId,
          target: req.target,
          strategy: req.strategy,
          batchSizes: req.batchSizes,
          failureThreshold: req.failureThreshold,
          onFailure: req.onFailure,
          healthTimeoutSeconds: req.healthTimeoutSeconds,
          soakSeconds: req.soakSeconds,
          cacheUrl: req.cacheUrl,
        });
        const release = await store().getRelease(valid.releaseId);
        if (!release)
          throw new ConnectError(`release_id: release ${valid.releaseId} does not exist`, Code.NotFound);
        const candidates =
          valid.target.kind === "tags"
            ? await store().listMachines({
                tags: valid.target.tags,
                match: "all",
                lifecycle: null,
                afterId: null,
                limit: ALL_MACHINES,
              })
            : await store().getMachines(valid.target.hosts);
        const resolved = resolveTargets(valid, candidates, release);
        if (!resolved.ok)
          throw new ConnectError(
            resolved.message,
            resolved.code === "not_found" ? Code.NotFound : Code.FailedPrecondition,
          );
        const note = resolved.skipped.length
          ? `${resolved.skipped.length} matching machine${resolved.skipped.length === 1 ? "" : "s"} not in the release skipped: ${resolved.skipped.slice(0, 10).join(", ")}${resolved.skipped.length > 10 ? ", …" : ""}`
          : "";
        const id = `r-${randomUUID()}`;
        const created = await store().createRollout(
          {
            id,
            releaseId: valid.releaseId,
            targetTags: valid.target.kind === "tags" ? valid.target.tags : [],
            targetHosts: valid.target.kind === "hosts" ? valid.target.hosts : [],
            strategy: valid.strategy,
            batchSizes: valid.batchSizes,
            failureThreshold: valid.failureThreshold,
            onFailure: valid.onFailure,
            healthTimeoutSeconds: valid.healthTimeoutSeconds,
            soakSeconds: valid.soakSeconds,
            cacheUrl: valid.cacheUrl || release.cacheUrl,
            batches: resolved.batches,
            note,
          },
          principal(ctx).actor,
          now(),
        );
        o.notifier.applied(created);
        // The first batch starts before we answer, so the response shows it deploying.
        await o.executor().kick(id);
        return { rollout: rolloutToProto((await store().getRollout(id)) ?? created.rollout) };
      }),

    listRollouts: (req) =>
      handle("ListRollouts", async () => {
        let status = null;
        if (req.status !== 0) {
          status = ROLLOUT_STATUS_FROM_PROTO[req.status] ?? null;
          if (!status) throw new ValidationError("status", `unknown rollout status ${req.status}`);
        }
        if (req.releaseId !== "") check("release_id", releaseIdProblem(req.releaseId));
        const limit = pageSize(req.pageSize, 50, 500);
        const token = decodeToken(req.pageToken, { t: "number", i: "string" });
        const rows = await store().listRollouts({
          status,
          releaseId: req.releaseId === "" ? null : req.releaseId,
          before: token ? { createdAt: token.t, id: token.i } : null,
          limit: limit + 1,
        });
        const page = rows.slice(0, limit);
        const last = page[page.length - 1];
        return {
          rollouts: page.map(rolloutToProto),
          nextPageToken: rows.length > limit && last ? encodeToken({ t: last.createdAt, i: last.id }) : "",
        };
      }),

    getRollout: (req) =>
      handle("GetRollout", async () => {
        const rollout = await mustGetRollout(req.rolloutId);
        const events = await store().rolloutEvents(rollout.id, 0, 100_000);
        return { rollout: rolloutToProto(rollout), events: events.map(rolloutEventToProto) };
      }),

    pauseRollout: (req, ctx) =>
      handle("PauseRollout", async () => {
        check("rollout_id", rolloutIdProblem(req.rolloutId));
        check("reason", textProblem(req.reason, MAX_REASON_LENGTH));
        const change = await store().pauseRollout(req.rolloutId, req.reason, principal(ctx).actor, now());
        o.notifier.applied(change);
        return { rollout: rolloutToProto(change.rollout) };
      }),

    resumeRollout: (req, ctx) =>
      handle("ResumeRollout", async () => {
        check("rollout_id", rolloutIdProblem(req.rolloutId));
        const change = await store().resumeRollout(req.rolloutId, principal(ctx).actor, now());
        o.notifier.applied(change);
        await o.executor().kick(req.rolloutId);
        return { rollout: rolloutToProto((await store().getRollout(req.rolloutId)) ?? change.rollout) };
      }),

    cancelRollout: (req, ctx) =>
      handle("CancelRollout", async () => {
        check("rollout_id", rolloutIdProblem(req.rolloutId));
        check("reason", textProblem(req.reason, MAX_REASON_LENGTH));
        const actor = principal(ctx).actor;
        const change = await store().endRollout(
          req.rolloutId,
          {
            status: "cancelled",
            revert: req.revert,
            reason: req.reason || `cancelled by ${actor}${req.revert ? " (reverted)" : ""}`,
            actor,
            from: ["running", "paused"],
          },
          now(),
        );
        o.notifier.applied(change);
        return { rollout: rolloutToProto(change.rollout) };
      }),

    async *watchRollout(req, ctx) {
      const rollout = await handle("WatchRollout", () => mustGetRollout(req.rolloutId));
      let wake: (() => void) | null = null;
      let dirty = false;
      const unsubscribe = o.changes.subscribe(rollout.id, () => {
        dirty = true;
        wake?.();
      });
      const poll = setInterval(() => {
        dirty = true;
        wake?.();
      }, o.watchPollMs ?? 5000);
      const onAbort = () => wake?.();
      ctx.signal.addEventListener("abort", onAbort);
      try {
        const initial = await store().rolloutEvents(rollout.id, 0, 100_000);
        let lastId = initial.length ? initial[initial.length - 1]!.id : 0;
        yield { rollout: rolloutToProto(rollout) };
        let current = rollout;
        while (!ctx.signal.aborted) {
          if (!isActiveStatus(current.status)) {
            const rest = await store().rolloutEvents(rollout.id, lastId, 1000);
            if (rest.length === 0) return;
          }
          if (!dirty) {
            await new Promise<void>((resolve) => {
              wake = resolve;
            });
            wake = null;
          }
          dirty = false;
          if (ctx.signal.aborted) break;
          const events = await store().rolloutEvents(rollout.id, lastId, 1000);
          if (events.length === 0) continue;
          current = (await store().getRollout(rollout.id)) ?? current;
          for (const event of events) {
            lastId = event.id;
            yield { event: rolloutEventToProto(event), rollout: rolloutToProto(current) };
          }
        }
        // Interrupted (shutdown, or the client left): not the end of the rollout, so not OK.
        throw new ConnectError(
          "the watch was interrupted (is the control plane shutting down?); watch again",
          Code.Unavailable,
        );
      } finally {
        unsubscribe();
        clearInterval(poll);
        ctx.signal.removeEventListener("abort", onAbort);
      }
    },

    // ------------------------------------------------------------ fleet
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

    // ------------------------------------------------------------ API keys
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
        return { apiKey: apiKeyToProto(key) };
      }),
  };
}
