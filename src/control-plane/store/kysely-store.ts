/**
 * FleetStore over Kysely: the one implementation of the repository for both backends. Each
 * method that writes is one transaction (its audit and rollout events included); the subclasses
 * (sqlite-store.ts, postgres-store.ts) only open the connection and say how a transaction starts.
 */
import type { Kysely } from "kysely";
import { type Announcement, announce, type TransactionAnnouncer } from "./announce.js";
import type { BackendKind, Ctx } from "./context.js";
import { type EvidenceRow, insertEvidence } from "./evidence.js";
import { GroupCommit } from "./group-commit.js";
import * as history from "./history.js";
import * as keys from "./keys-audit.js";
import * as lease from "./lease.js";
import * as machineReads from "./machine-reads.js";
import * as machines from "./machines.js";
import type { HealthInput, HelloInput, Lifecycle, ReportInput, Role } from "./records.js";
import * as releases from "./releases.js";
import type {
  AuditFilter,
  EndRolloutOptions,
  FleetCounts,
  FleetStore,
  MachineFilter,
  MachineGateUpdate,
  NewRelease,
  NewRollout,
  ReleaseFilter,
  RolloutChange,
  RolloutFilter,
} from "./repository.js";
import * as rolloutReads from "./rollout-reads.js";
import * as rollouts from "./rollouts.js";
import type { Tables } from "./tables.js";

const rolloutChanged = (change: RolloutChange | null): Announcement | null =>
  change ? { kind: "rollout", change } : null;

/** Rows deleted per prune transaction, so pruning never holds a write lock for long. */
const PRUNE_CHUNK = 5000;

export abstract class KyselyFleetStore implements FleetStore {
  /** Reports and health reports: group-committed (group-commit.ts), their rows by evidence.ts. */
  readonly evidence: GroupCommit<EvidenceRow>;

  protected constructor(
    readonly kysely: Kysely<Tables>,
    readonly kind: BackendKind,
    abortsGroup?: (err: unknown) => boolean,
  ) {
    this.evidence = new GroupCommit({
      transaction: (fn) => this.transaction(fn),
      flush: insertEvidence,
      abortsGroup,
    });
  }

  /** Runs `fn` in one transaction; a throw rolls everything back. */
  protected abstract transaction<T>(fn: (ctx: Ctx) => Promise<T>): Promise<T>;

  private announcer: TransactionAnnouncer | null = null;

  /**
   * From now on, writes that change desired generations or rollouts announce themselves to the
   * other replicas inside their transaction (announce.ts; PostgreSQL only).
   */
  announceWith(announcer: TransactionAnnouncer): void {
    this.announcer = announcer;
  }

  /** A write whose result other replicas must hear of: announced in the same transaction. */
  private announced<T>(fn: (ctx: Ctx) => Promise<T>, what: (result: T) => Announcement | null): Promise<T> {
    return this.transaction(async (c) => {
      const result = await fn(c);
      await announce(c, this.announcer, what(result));
      return result;
    });
  }

  abstract close(): Promise<void>;

  private get read(): Ctx {
    return { q: this.kysely, kind: this.kind };
  }

  async ping(): Promise<void> {
    await this.kysely.selectFrom("revision_counter").select("id").executeTakeFirst();
  }

  recordHello(input: HelloInput, now: number) {
    return this.transaction((c) => machines.recordHello(c, input, now));
  }
  recordReport(input: ReportInput, now: number) {
    return this.evidence.submit((c) => machines.recordReport(c, input, now));
  }
  recordHealth(input: HealthInput, now: number) {
    return this.evidence.submit((c) => machines.recordHealth(c, input, now));
  }
  desiredFor(machineId: string) {
    return machineReads.desiredFor(this.read, machineId);
  }

  getMachine(id: string) {
    return machineReads.getMachine(this.read, id);
  }
  getMachines(ids: readonly string[]) {
    return machineReads.getMachines(this.read, ids);
  }
  machineReports(machineId: string, limit: number) {
    return history.machineReports(this.read, machineId, limit);
  }
  latestHealthReport(machineId: string) {
    return history.latestHealthReport(this.read, machineId);
  }
  listMachines(filter: MachineFilter) {
    return machineReads.listMachines(this.read, filter);
  }
  machineStatusRows(filter: Omit<MachineFilter, "afterId" | "limit">) {
    return machineReads.machineStatusRows(this.read, filter);
  }
  machineStatuses(ids: readonly string[]) {
    return machineReads.machineStatuses(this.read, ids);
  }
  targetCandidates(target: { tags: readonly string[] } | { hosts: readonly string[] }) {
    return machineReads.targetCandidates(this.read, target);
  }
  registerMachine(
    input: { id: string; tags: string[]; lifecycle: Lifecycle | null },
    actor: string,
    now: number,
  ) {
    return this.transaction((c) => machines.registerMachine(c, input, actor, now));
  }
  setLifecycle(id: string, lifecycle: Lifecycle, actor: string, now: number) {
    return this.transaction((c) => machines.setLifecycle(c, id, lifecycle, actor, now));
  }
  setDesired(input: { machineId: string; storePath: string; cacheUrl: string }, actor: string, now: number) {
    return this.announced(
      (c) => machines.setDesired(c, input, actor, now),
      (r) => ({ kind: "desired", change: r.change }),
    );
  }
  clearDesired(machineId: string, actor: string, now: number) {
    return this.announced(
      (c) => machines.clearDesired(c, machineId, actor, now),
      (r) => (r.change ? { kind: "desired", change: r.change } : null),
    );
  }

  createRelease(input: NewRelease, actor: string, now: number) {
    return this.transaction((c) => releases.createRelease(c, input, actor, now));
  }
  getRelease(id: string) {
    return releases.getRelease(this.read, id);
  }
  listReleases(filter: ReleaseFilter) {
    return releases.listReleases(this.read, filter);
  }
  deleteRelease(id: string, actor: string, now: number) {
    return this.transaction((c) => releases.deleteRelease(c, id, actor, now));
  }

  createRollout(input: NewRollout, actor: string, now: number) {
    return this.announced((c) => rollouts.createRollout(c, input, actor, now), rolloutChanged);
  }
  getRollout(id: string) {
    return rolloutReads.getRollout(this.read, id);
  }
  rolloutHead(id: string) {
    return rolloutReads.rolloutHead(this.read, id);
  }
  listRollouts(filter: RolloutFilter) {
    return rolloutReads.listRollouts(this.read, filter);
  }
  rolloutEvents(id: string, afterId: number, limit: number) {
    return rolloutReads.rolloutEvents(this.read, id, afterId, limit);
  }
  runningRolloutIds() {
    return rolloutReads.runningRolloutIds(this.read);
  }
  gateEvidence(rolloutId: string, batchIndex: number) {
    return rolloutReads.gateEvidence(this.read, rolloutId, batchIndex);
  }
  startBatch(rolloutId: string, index: number, now: number, epoch: number | null = null) {
    return this.announced((c) => rollouts.startBatch(c, rolloutId, index, now, epoch), rolloutChanged);
  }
  recordGate(
    rolloutId: string,
    index: number,
    startedSeq: number,
    gates: readonly MachineGateUpdate[],
    now: number,
    epoch: number | null = null,
  ) {
    return this.announced(
      (c) => rollouts.recordGate(c, rolloutId, index, startedSeq, gates, now, epoch),
      (events) => ({ kind: "events", rolloutId, events }),
    );
  }
  finishBatch(
    rolloutId: string,
    index: number,
    startedSeq: number,
    result: { passed: boolean; message: string },
    now: number,
    epoch: number | null = null,
  ) {
    return this.announced(
      (c) => rollouts.finishBatch(c, rolloutId, index, startedSeq, result, now, epoch),
      rolloutChanged,
    );
  }

  claimExecutorLease(holder: string, ttlMs: number, now: number) {
    return this.transaction((c) => lease.claimLease(c, holder, ttlMs, now));
  }
  releaseExecutorLease(holder: string, epoch: number, now: number) {
    return this.transaction((c) => lease.releaseLease(c, holder, epoch, now));
  }
  executorLease() {
    return lease.readLease(this.read);
  }
  pauseRollout(id: string, reason: string, actor: string, now: number) {
    return this.announced((c) => rollouts.pauseRollout(c, id, reason, actor, now), rolloutChanged);
  }
  resumeRollout(id: string, actor: string, now: number) {
    return this.announced((c) => rollouts.resumeRollout(c, id, actor, now), rolloutChanged);
  }
  endRollout(id: string, options: EndRolloutOptions, now: number) {
    return this.announced((c) => rollouts.endRollout(c, id, options, now), rolloutChanged);
  }

  createApiKey(input: { id: string; name: string; role: Role; hash: string }, actor: string, now: number) {
    return this.transaction((c) => keys.createApiKey(c, input, actor, now));
  }
  listApiKeys(includeRevoked: boolean) {
    return keys.listApiKeys(this.read, includeRevoked);
  }
  revokeApiKey(key: string, callerId: string | null, actor: string, now: number) {
    return this.transaction((c) => keys.revokeApiKey(c, key, callerId, actor, now));
  }
  authenticateApiKey(hash: string, now: number) {
    return this.transaction((c) => keys.authenticateApiKey(c, hash, now));
  }
  listAudit(filter: AuditFilter) {
    return keys.listAudit(this.read, filter);
  }

  async fleetCounts(): Promise<FleetCounts> {
    const byLifecycle: Record<Lifecycle, number> = {
      pending: 0,
      active: 0,
      maintenance: 0,
      decommissioned: 0,
    };
    let total = 0;
    const rows = await this.kysely
      .selectFrom("machines")
      .select((eb) => ["lifecycle", eb.fn.countAll<number>().as("n")])
      .groupBy("lifecycle")
      .execute();
    for (const row of rows) {
      byLifecycle[row.lifecycle] = Number(row.n);
      total += Number(row.n);
    }
    const inSync = await this.kysely
      .selectFrom("machines as m")
      .innerJoin("desired_generations as d", "d.machine_id", "m.id")
      .select((eb) => eb.fn.countAll<number>().as("n"))
      .whereRef("m.current_generation", "=", "d.store_path")
      .executeTakeFirstOrThrow();
    return {
      total,
      byLifecycle,
      inSync: Number(inSync.n),
      activeRollouts: await rolloutReads.activeRolloutCount(this.read),
    };
  }

  async prune(cutoff: number): Promise<{ reports: number; healthReports: number }> {
    // Evidence a deploying batch may still count is kept: stored after its start (by sequence)
    // or, should the wall clock have stepped back, received after its start time.
    const keepFrom = await rolloutReads.oldestDeployingStart(this.read);
    const effective = keepFrom === null ? cutoff : Math.min(cutoff, keepFrom.at);
    const keepSeq = keepFrom === null ? Number.MAX_SAFE_INTEGER : keepFrom.seq;
    const chunked = async (table: "reports" | "health_reports") => {
      let deleted = 0;
      for (;;) {
        const result = await this.transaction((c) =>
          c.q
            .deleteFrom(table)
            .where("id", "in", (eb) =>
              eb
                .selectFrom(table)
                .select("id")
                .where("received_at", "<", effective)
                .where("seq", "<=", keepSeq)
                .orderBy("id")
                .limit(PRUNE_CHUNK),
            )
            .executeTakeFirst(),
        );
        const n = Number(result.numDeletedRows);
        deleted += n;
        if (n < PRUNE_CHUNK) return deleted;
      }
    };
    return { reports: await chunked("reports"), healthReports: await chunked("health_reports") };
  }
}
