/** FleetService: the fleet status (GetFleetStatus) and its stream of changes (WatchFleet). */

import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { ValidationError } from "../../common/validation.js";
import {
  FleetChangeKind,
  type FleetService,
  FleetSnapshotPageSchema,
  SnapshotReason,
  WatchFleetResponseSchema,
} from "../../gen/nixfleet/v1/fleet_pb.js";
import { lineProblem } from "../input-rules.js";
import { type FeedEntry, type FeedWatcher, matchesFilter, type TagFilter } from "./fleet-feed.js";
import { checkTags, type FleetRpcKit, tagMatch } from "./fleet-rpc-kit.js";
import { FleetStatusEncoder, type FleetStatusFormat, isBinaryRequest } from "./fleet-status-encoder.js";

type WatchMessage = MessageInitShape<typeof WatchFleetResponseSchema>;

const MAX_SNAPSHOT_PAGE = 5000;
const DEFAULT_SNAPSHOT_PAGE = 1000;
/** Changes queued for one watcher before it is made to resync instead. */
export const DEFAULT_WATCH_QUEUE_LIMIT = 20_000;

export function fleetStatusRpcs(k: FleetRpcKit): Partial<ServiceImpl<typeof FleetService>> {
  const { o, store, now, handle } = k;
  const staleAfterSeconds = Math.round(o.staleAfterMs / 1000);
  const encoder = new FleetStatusEncoder(o.live, o.staleAfterMs);

  /**
   * A snapshot in pages, read after the watcher was registered so no change falls between: the
   * machines are read at once (one consistent read, through the encoder's kept statuses) and sent
   * in pages of `pageSize`.
   */
  async function* snapshot(
    filter: TagFilter,
    pageSize: number,
    reason: SnapshotReason,
    watcher: FeedWatcher,
    view: Set<string>,
    format: FleetStatusFormat,
  ): AsyncGenerator<WatchMessage> {
    watcher.reset();
    view.clear();
    const revision = o.feed.revision;
    const machines = await encoder.machines(
      store(),
      { tags: [...filter.tags], match: filter.match, lifecycle: null },
      now,
    );
    for (const m of machines) view.add(m.id);
    // An empty fleet is one page, first and last.
    for (let at = 0; at === 0 || at < machines.length; at += pageSize) {
      // Messages, not init shapes: creating one from an init shape drops unknown fields.
      const page = create(FleetSnapshotPageSchema, {
        first: at === 0,
        last: at + pageSize >= machines.length,
        reason,
        staleAfterSeconds,
      });
      encoder.attach(page, machines.slice(at, at + pageSize), format);
      yield create(WatchFleetResponseSchema, {
        epoch: o.feed.epoch,
        revision: BigInt(revision),
        message: { case: "snapshot", value: page },
      });
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
      const format = isBinaryRequest(ctx.requestHeader.get("content-type")) ? "binary" : "json";
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
          yield* snapshot(filter, pageSize, reason, watcher, view, format);
        }
        while (!ctx.signal.aborted) {
          await watcher.next();
          if (ctx.signal.aborted) break;
          if (watcher.overflowed) {
            yield* snapshot(filter, pageSize, SnapshotReason.SLOW_CONSUMER, watcher, view, format);
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
