/** FleetService: rollouts — creating, listing, pausing, resuming, cancelling and watching them. */

import { randomUUID } from "node:crypto";
import type { ServiceImpl } from "@connectrpc/connect";
import { Code, ConnectError } from "@connectrpc/connect";
import { releaseIdProblem, rolloutIdProblem } from "../../common/ids.js";
import { check, ValidationError } from "../../common/validation.js";
import type { FleetService } from "../../gen/nixfleet/v1/fleet_pb.js";
import { MAX_REASON_LENGTH, textProblem } from "../input-rules.js";
import { resolveTargets, validateRolloutRequest } from "../rollouts/rollout-request.js";
import { isActiveStatus } from "../rollouts/state-machine.js";
import { ROLLOUT_STATUS_FROM_PROTO, rolloutEventToProto, rolloutToProto } from "./convert.js";
import { type FleetRpcKit, principal } from "./fleet-rpc-kit.js";
import { decodeToken, encodeToken, pageSize } from "./paging.js";

export function rolloutRpcs(k: FleetRpcKit): Partial<ServiceImpl<typeof FleetService>> {
  const { o, store, now, handle, mustGetRollout } = k;
  return {
    createRollout: (req, ctx) =>
      handle("CreateRollout", async () => {
        check("release_id", releaseIdProblem(req.releaseId));
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
        const candidates = await store().targetCandidates(
          valid.target.kind === "tags" ? { tags: valid.target.tags } : { hosts: valid.target.hosts },
        );
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
  };
}
