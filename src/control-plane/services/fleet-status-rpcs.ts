/** FleetService: the fleet status (GetFleetStatus) and its stream of changes (WatchFleet). */

import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { ValidationError } from "../../common/validation.js";
import {
  FleetChangeKind,
  type FleetService,
  MachineStatusSchema,
  SnapshotReason,
  type WatchFleetResponseSchema,
} from "../../gen/nixfleet/v1/fleet_pb.js";
import { lineProblem } from "../input-rules.js";
import { machineStatusToProto } from "./convert.js";
import { type FeedEntry, type FeedWatcher, matchesFilter, type TagFilter } from "./fleet-feed.js";
import { checkTags, type FleetRpcKit, tagMatch } from "./fleet-rpc-kit.js";
import { FleetStatusEncoder, isBinaryRequest } from "./fleet-status-encoder.js";

type WatchMessage = MessageInitShape<typeof WatchFleetResponseSchema>;

const MAX_SNAPSHOT_PAGE = 5000;
const DEFAULT_SNAPSHOT_PAGE = 1000;
/** Changes queued for one watcher before it is made to resync instead. */
export const DEFAULT_WATCH_QUEUE_LIMIT = 20_000;

export function fleetStatusRpcs(k: FleetRpcKit): Partial<ServiceImpl<typeof FleetService>> {
  const { o, store, now, handle } = k;
  const staleAfterSeconds = Math.round(o.staleAfterMs / 1000);
  const encoder = new FleetStatusEncoder(o.live, o.staleAfterMs);

  /** Statuses are created here (not left to Connect) so a page is converted exactly once. */
  const status = (m: Parameters<typeof machineStatusToProto>[0], t: number) =>
    create(MachineStatusSchema, machineStatusToProto(m, o.live, t, o.staleAfterMs));

  /** A snapshot in pages, read after the watcher was registered so no change falls between. */
  async function* snapshot(
    filter: TagFilter,
    pageSize: number,
    reason: SnapshotReason,
    watcher: FeedWatcher,
    view: Set<string>,
  ): AsyncGenerator<WatchMessage> {
    watcher.reset();
    view.clear();
    const revision = o.feed.revision;
    let afterId: string | null = null;
    for (let first = true; ; first = false) {
      const rows = await store().listMachines({
        tags: [...filter.tags],
        match: filter.match,
        lifecycle: null,
        afterId,
        limit: pageSize + 1,
      });
      const page = rows.slice(0, pageSize);
      const last = rows.length <= pageSize;
      const t = now();
      for (const m of page) view.add(m.id);
      yield {
        epoch: o.feed.epoch,
        revision: BigInt(revision),
        message: {
          case: "snapshot",
          value: { machines: page.map((m) => status(m, t)), first, last, reason, staleAfterSeconds },
        },
      };
      if (last) return;
      afterId = page[page.length - 1]!.id;
    }
  }

  /** A change as this watcher sees it: leaving its filter is a removal; others' machines are skipped. */
  function forWatcher(entry: FeedEntry, filter: TagFilter, view: Set<string>): WatchMessage | null {
    const matches = entry.machine !== null && matchesFilter(entry.machine.tags, filter);
    if (!matches && !view.has(entry.machineId)) return null;
    const removed = !matches;
    if (removed) view.delete(entry.machineId);
    else view.add(entry.machineId);
    return {
      epoch: o.feed.epoch,
      revision: BigInt(entry.revision),
      message: {
        case: "change",
        value: removed
          ? { kind: FleetChangeKind.REMOVED, machineId: entry.machineId }
          : { kind: entry.kind, machineId: entry.machineId, machine: entry.machine! },
      },
    };
  }

  return {
    getFleetStatus: (req, ctx) =>
      handle("GetFleetStatus", async () => {
        checkTags("tags", req.tags);
        return encoder.response(
          store(),
          { tags: req.tags, match: tagMatch(req.match), lifecycle: null },
          isBinaryRequest(ctx.requestHeader.get("content-type")) ? "binary" : "json",
          now,
          staleAfterSeconds,
        );
      }),

    async *watchFleet(req, ctx) {
      const { filter, pageSize } = await handle("WatchFleet", async () => {
        checkTags("tags", req.tags);
        const filter: TagFilter = { tags: [...new Set(req.tags)], match: tagMatch(req.match) };
        if (req.snapshotPageSize > MAX_SNAPSHOT_PAGE)
          throw new ValidationError(
            "snapshot_page_size",
            `at most ${MAX_SNAPSHOT_PAGE}, got ${req.snapshotPageSize}`,
          );
        const bad = lineProblem(req.resumeEpoch, 64);
        if (bad) throw new ValidationError("resume_epoch", bad);
        if (req.resumeRevision > 0n && req.resumeEpoch === "")
          throw new ValidationError(
            "resume_epoch",
            "required with resume_revision: pass back the epoch of the last message received",
          );
        return { filter, pageSize: req.snapshotPageSize || DEFAULT_SNAPSHOT_PAGE };
      });
      const watcher = await o.feed.watch(filter, o.watchFleetQueueLimit ?? DEFAULT_WATCH_QUEUE_LIMIT);
      const onAbort = () => watcher.notify();
      ctx.signal.addEventListener("abort", onAbort);
      try {
        const view = new Set<string>();
        const resumed =
          req.resumeEpoch === "" ? null : o.feed.since(req.resumeEpoch, Number(req.resumeRevision));
        if (resumed) {
          for (const id of o.feed.idsMatching(filter)) view.add(id);
          for (const entry of resumed) {
            const message = forWatcher(entry, filter, view);
            if (message) yield message;
          }
        } else {
          const reason = req.resumeEpoch === "" ? SnapshotReason.INITIAL : SnapshotReason.RESUME_GAP;
          yield* snapshot(filter, pageSize, reason, watcher, view);
        }
        while (!ctx.signal.aborted) {
          await watcher.next();
          if (ctx.signal.aborted) break;
          if (watcher.overflowed) {
            yield* snapshot(filter, pageSize, SnapshotReason.SLOW_CONSUMER, watcher, view);
            continue;
          }
          for (const entry of watcher.take()) {
            const message = forWatcher(entry, filter, view);
            if (message) yield message;
          }
        }
        throw new ConnectError(
          "the watch was interrupted (is the control plane shutting down?); watch again with resume_epoch and resume_revision",
          Code.Unavailable,
        );
      } finally {
        ctx.signal.removeEventListener("abort", onAbort);
        o.feed.unwatch(watcher);
      }
    },
  };
}
