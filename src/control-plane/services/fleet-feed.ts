/**
 * The shared source of every WatchFleet stream. It subscribes to FleetChanges, reads the changed
 * machines once per burst (one query for many changes, converted once for all watchers), numbers
 * the changes with a growing revision, keeps the latest ones for resuming, and hands them to each
 * watcher's bounded queue. A watcher whose queue overflows loses its queue and is told to resync.
 *
 * It also turns time into changes: while anyone watches, a timer finds machines that crossed the
 * stale threshold (or came back, e.g. by polling, which writes nothing) and publishes them.
 *
 * Idle cost: with no watcher it subscribes to nothing and holds nothing; the revisions it skipped
 * meanwhile cannot be resumed from (a resume then gets a fresh snapshot).
 */
import { randomUUID } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import type { Logger } from "../../common/logger.js";
import {
  FleetChangeKind as ChangeKindProto,
  type MachineStatus,
  MachineStatusSchema,
} from "../../gen/nixfleet/v1/fleet_pb.js";
import type { Clock } from "../clock.js";
import type { MachineRecord } from "../store/records.js";
import type { FleetStore } from "../store/repository.js";
import { isStale, type LiveView, machineStatusToProto } from "./convert.js";
import type { FleetChangeKind, FleetChanges } from "./fleet-changes.js";

const KIND_TO_PROTO: Record<FleetChangeKind, ChangeKindProto> = {
  registered: ChangeKindProto.REGISTERED,
  report: ChangeKindProto.REPORT,
  health: ChangeKindProto.HEALTH,
  desired: ChangeKindProto.DESIRED,
  connected: ChangeKindProto.CONNECTED,
  disconnected: ChangeKindProto.DISCONNECTED,
  stale: ChangeKindProto.STALE,
  fresh: ChangeKindProto.FRESH,
  lifecycle: ChangeKindProto.LIFECYCLE,
  rollout: ChangeKindProto.ROLLOUT,
};

export interface FeedEntry {
  revision: number;
  kind: ChangeKindProto;
  machineId: string;
  /** Null when the machine no longer exists. */
  machine: MachineStatus | null;
}

export interface TagFilter {
  tags: readonly string[];
  match: "all" | "any";
}

export function matchesFilter(tags: readonly string[], filter: TagFilter): boolean {
  if (filter.tags.length === 0) return true;
  return filter.match === "all"
    ? filter.tags.every((t) => tags.includes(t))
    : filter.tags.some((t) => tags.includes(t));
}

export interface FleetFeedOptions {
  changes: FleetChanges;
  store: () => FleetStore;
  live: LiveView;
  clock: Clock;
  logger: Logger;
  staleAfterMs: number;
  /** Changes kept for resuming (default 10,000). */
  historyLimit?: number;
  /** How often staleness is checked (default: a tenth of the threshold, 1–10 s). */
  staleCheckMs?: number;
}

/** What the feed knows of every machine while anyone watches: enough for staleness and filters. */
interface Known {
  record: Pick<MachineRecord, "id" | "lastSeen" | "registeredAt">;
  tags: readonly string[];
  stale: boolean;
}

export class FeedWatcher {
  /** Entries not yet taken by the stream. */
  private queue: FeedEntry[] = [];
  private wake: (() => void) | null = null;
  /** The queue overflowed and was dropped: the stream must send a fresh snapshot. */
  overflowed = false;

  constructor(
    readonly filter: TagFilter,
    private readonly limit: number,
    private readonly onOverflow: () => void,
  ) {}

  push(entry: FeedEntry): void {
    if (this.overflowed) return;
    if (this.queue.length >= this.limit) {
      this.onOverflow();
      this.resync();
      return;
    }
    this.queue.push(entry);
    this.notify();
  }

  /** Drops the queue and tells the stream to send a fresh snapshot. */
  resync(): void {
    this.queue = [];
    this.overflowed = true;
    this.notify();
  }

  notify(): void {
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }

  /** Everything queued so far. */
  take(): FeedEntry[] {
    const out = this.queue;
    this.queue = [];
    return out;
  }

  /** Starting a snapshot: what was queued is superseded by it. */
  reset(): void {
    this.queue = [];
    this.overflowed = false;
  }

  /** Resolves when something was queued (or notify() was called, e.g. on abort). */
  next(): Promise<void> {
    if (this.queue.length || this.overflowed) return Promise.resolve();
    return new Promise((resolve) => {
      this.wake = resolve;
    });
  }
}

export class FleetFeed {
  /** Names this process's sequence of revisions; a resume from another epoch resyncs. */
  readonly epoch = randomUUID();
  private revisionValue = 0;
  /** Resuming after a revision below this one cannot be honoured (changes were not kept). */
  private oldestResumable = 1;
  private readonly history: FeedEntry[] = [];
  private readonly watchers = new Set<FeedWatcher>();
  private readonly known = new Map<string, Known>();
  private pending = new Map<string, Set<FleetChangeKind>>();
  private flushing: Promise<void> | null = null;
  private unsubscribe: (() => void) | null = null;
  private staleTimer: NodeJS.Timeout | null = null;
  private loading: Promise<void> | null = null;
  /** Watchers made to resync because they fell behind (since start). */
  slowWatcherResyncs = 0;

  constructor(private readonly o: FleetFeedOptions) {}

  get revision(): number {
    return this.revisionValue;
  }

  get watcherCount(): number {
    return this.watchers.size;
  }

  /** Registers a watcher; changes are queued for it from now on. */
  async watch(filter: TagFilter, queueLimit: number): Promise<FeedWatcher> {
    const watcher = new FeedWatcher(filter, queueLimit, () => this.slowWatcherResyncs++);
    this.watchers.add(watcher);
    if (!this.unsubscribe) this.activate();
    await this.loading;
    return watcher;
  }

  unwatch(watcher: FeedWatcher): void {
    this.watchers.delete(watcher);
    if (this.watchers.size === 0) this.deactivate();
  }

  /**
   * The changes after `revision` for a resuming watcher, or null when they are not all held
   * (another epoch, or older than what is kept): the watcher needs a snapshot.
   */
  since(epoch: string, revision: number): FeedEntry[] | null {
    if (epoch !== this.epoch || revision < this.oldestResumable - 1 || revision > this.revisionValue)
      return null;
    const first = this.history.findIndex((e) => e.revision > revision);
    return first < 0 ? [] : this.history.slice(first);
  }

  /** Ids of the machines matching a filter, as far as the feed knows them (a resumed watcher's view). */
  idsMatching(filter: TagFilter): Set<string> {
    const ids = new Set<string>();
    for (const [id, k] of this.known) if (matchesFilter(k.tags, filter)) ids.add(id);
    return ids;
  }

  private activate(): void {
    // Revisions handed out before now are not resumable: nothing was recorded while unwatched.
    this.revisionValue++;
    this.oldestResumable = this.revisionValue + 1;
    this.unsubscribe = this.o.changes.subscribe((id, kind) => this.onChange(id, kind));
    // Machines the feed has never seen change still go stale: learn them all once.
    this.loading = this.o
      .store()
      .listMachines({ tags: [], match: "all", lifecycle: null, afterId: null, limit: 1_000_000 })
      .then((machines) => {
        const now = this.o.clock.now();
        for (const m of machines) this.remember(m, now);
      })
      .catch((err) => this.o.logger.error({ err }, "WatchFleet: reading the fleet for staleness failed"));
    const every = this.o.staleCheckMs ?? Math.min(10_000, Math.max(1000, this.o.staleAfterMs / 10));
    this.staleTimer = setInterval(() => this.checkStaleness(), every);
    this.staleTimer.unref();
  }

  private deactivate(): void {
    this.unsubscribe?.();
    this.unsubscribe = null;
    if (this.staleTimer) clearInterval(this.staleTimer);
    this.staleTimer = null;
    this.known.clear();
    this.history.length = 0;
    this.pending.clear();
  }

  private remember(m: MachineRecord, now: number): void {
    this.known.set(m.id, {
      record: { id: m.id, lastSeen: m.lastSeen, registeredAt: m.registeredAt },
      tags: m.tags,
      stale: isStale(m, this.o.live.lastSeen(m), now, this.o.staleAfterMs),
    });
  }

  private checkStaleness(): void {
    const now = this.o.clock.now();
    for (const [id, k] of this.known) {
      const stale = isStale(
        k.record as MachineRecord,
        this.o.live.lastSeen(k.record as MachineRecord),
        now,
        this.o.staleAfterMs,
      );
      if (stale !== k.stale) {
        k.stale = stale;
        this.onChange(id, stale ? "stale" : "fresh");
      }
    }
  }

  private onChange(machineId: string, kind: FleetChangeKind): void {
    let kinds = this.pending.get(machineId);
    if (!kinds) {
      kinds = new Set();
      this.pending.set(machineId, kinds);
    }
    kinds.add(kind);
    this.flushing ??= this.flushAll();
  }

  /** One flush at a time, so revisions follow the order the machines were read in. */
  private async flushAll(): Promise<void> {
    try {
      while (this.pending.size && this.unsubscribe) await this.flush();
    } finally {
      this.flushing = null;
    }
  }

  /** Reads every machine changed since the last flush in one query and hands the entries out. */
  private async flush(): Promise<void> {
    // Let the rest of this tick's changes (a rollout's thousands of desired generations) join.
    await new Promise((resolve) => setImmediate(resolve));
    const batch = this.pending;
    this.pending = new Map();
    let machines: MachineRecord[];
    try {
      machines = await this.o.store().getMachines([...batch.keys()]);
    } catch (err) {
      // The watchers cannot know what they missed: make them all resync.
      this.o.logger.error({ err }, "WatchFleet: reading changed machines failed; watchers resync");
      for (const w of this.watchers) w.resync();
      return;
    }
    if (!this.unsubscribe) return;
    const byId = new Map(machines.map((m) => [m.id, m]));
    const now = this.o.clock.now();
    const limit = this.o.historyLimit ?? 10_000;
    for (const [id, kinds] of batch) {
      const m = byId.get(id);
      let status: MachineStatus | null = null;
      if (m) {
        this.remember(m, now);
        status = create(MachineStatusSchema, machineStatusToProto(m, this.o.live, now, this.o.staleAfterMs));
      } else {
        this.known.delete(id);
      }
      for (const kind of kinds) {
        const entry: FeedEntry = {
          revision: ++this.revisionValue,
          kind: KIND_TO_PROTO[kind],
          machineId: id,
          machine: status,
        };
        this.history.push(entry);
        for (const w of this.watchers) w.push(entry);
      }
    }
    if (this.history.length > limit) {
      const drop = this.history.length - limit;
      this.oldestResumable = this.history[drop]!.revision;
      this.history.splice(0, drop);
    }
  }
}
