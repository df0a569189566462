/**
 * The embedded SQLite implementation of FleetStore. better-sqlite3 is synchronous, so every
 * method runs its transaction to completion before yielding: within one process no two store
 * calls ever interleave, and the async signatures exist for other backends.
 */

import {
  type MigrationResult,
  type OpenDatabaseOptions,
  openDatabase,
  type SqliteDatabase,
} from "./database.js";
import type { HealthInput, HelloInput, Lifecycle, ReportInput, Role } from "./records.js";
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
  RolloutFilter,
} from "./repository.js";
import { Sql } from "./sql.js";
import * as history from "./sqlite-history.js";
import * as keys from "./sqlite-keys-audit.js";
import * as machines from "./sqlite-machines.js";
import * as releases from "./sqlite-releases.js";
import * as rollouts from "./sqlite-rollouts.js";

/** Rows deleted per prune transaction, so pruning never holds the write lock for long. */
const PRUNE_CHUNK = 5000;

export class SqliteFleetStore implements FleetStore {
  private readonly sql: Sql;

  constructor(readonly db: SqliteDatabase) {
    this.sql = new Sql(db);
  }

  static async open(
    options: OpenDatabaseOptions,
  ): Promise<{ store: SqliteFleetStore; migration: MigrationResult }> {
    const { db, migration } = await openDatabase(options);
    return { store: new SqliteFleetStore(db), migration };
  }

  async close(): Promise<void> {
    if (this.db.open) this.db.close();
  }

  async ping(): Promise<void> {
    this.sql.get("SELECT 1 AS x");
  }

  async recordHello(input: HelloInput, now: number) {
    return machines.recordHello(this.sql, input, now);
  }
  async recordReport(input: ReportInput, now: number) {
    return machines.recordReport(this.sql, input, now);
  }
  async recordHealth(input: HealthInput, now: number) {
    return machines.recordHealth(this.sql, input, now);
  }
  async desiredFor(machineId: string) {
    return machines.desiredFor(this.sql, machineId);
  }

  async getMachine(id: string) {
    return machines.getMachine(this.sql, id);
  }
  async getMachines(ids: readonly string[]) {
    return machines.getMachines(this.sql, ids);
  }
  async machineReports(machineId: string, limit: number) {
    return history.machineReports(this.sql, machineId, limit);
  }
  async latestHealthReport(machineId: string) {
    return history.latestHealthReport(this.sql, machineId);
  }
  async listMachines(filter: MachineFilter) {
    return machines.listMachines(this.sql, filter);
  }
  async registerMachine(
    input: { id: string; tags: string[]; lifecycle: Lifecycle | null },
    actor: string,
    now: number,
  ) {
    return machines.registerMachine(this.sql, input, actor, now);
  }
  async setLifecycle(id: string, lifecycle: Lifecycle, actor: string, now: number) {
    return machines.setLifecycle(this.sql, id, lifecycle, actor, now);
  }
  async setDesired(
    input: { machineId: string; storePath: string; cacheUrl: string },
    actor: string,
    now: number,
  ) {
    return machines.setDesired(this.sql, input, actor, now);
  }
  async clearDesired(machineId: string, actor: string, now: number) {
    return machines.clearDesired(this.sql, machineId, actor, now);
  }

  async createRelease(input: NewRelease, actor: string, now: number) {
    return releases.createRelease(this.sql, input, actor, now);
  }
  async getRelease(id: string) {
    return releases.getRelease(this.sql, id);
  }
  async listReleases(filter: ReleaseFilter) {
    return releases.listReleases(this.sql, filter);
  }
  async deleteRelease(id: string, actor: string, now: number) {
    releases.deleteRelease(this.sql, id, actor, now);
  }

  async createRollout(input: NewRollout, actor: string, now: number) {
    return rollouts.createRollout(this.sql, input, actor, now);
  }
  async getRollout(id: string) {
    return rollouts.getRollout(this.sql, id);
  }
  async listRollouts(filter: RolloutFilter) {
    return rollouts.listRollouts(this.sql, filter);
  }
  async rolloutEvents(id: string, afterId: number, limit: number) {
    return rollouts.rolloutEvents(this.sql, id, afterId, limit);
  }
  async runningRolloutIds() {
    return rollouts.runningRolloutIds(this.sql);
  }
  async gateEvidence(rolloutId: string, batchIndex: number) {
    return rollouts.gateEvidence(this.sql, rolloutId, batchIndex);
  }
  async startBatch(rolloutId: string, index: number, now: number) {
    return rollouts.startBatch(this.sql, rolloutId, index, now);
  }
  async recordGate(
    rolloutId: string,
    index: number,
    startedSeq: number,
    gates: readonly MachineGateUpdate[],
    now: number,
  ) {
    return rollouts.recordGate(this.sql, rolloutId, index, startedSeq, gates, now);
  }
  async finishBatch(
    rolloutId: string,
    index: number,
    startedSeq: number,
    result: { passed: boolean; message: string; last: boolean; pause: boolean },
    now: number,
  ) {
    return rollouts.finishBatch(this.sql, rolloutId, index, startedSeq, result, now);
  }
  async pauseRollout(id: string, reason: string, actor: string, now: number) {
    return rollouts.pauseRollout(this.sql, id, reason, actor, now);
  }
  async resumeRollout(id: string, actor: string, now: number) {
    return rollouts.resumeRollout(this.sql, id, actor, now);
  }
  async endRollout(id: string, options: EndRolloutOptions, now: number) {
    return rollouts.endRollout(this.sql, id, options, now);
  }

  async createApiKey(
    input: { id: string; name: string; role: Role; hash: string },
    actor: string,
    now: number,
  ) {
    return keys.createApiKey(this.sql, input, actor, now);
  }
  async listApiKeys(includeRevoked: boolean) {
    return keys.listApiKeys(this.sql, includeRevoked);
  }
  async revokeApiKey(key: string, callerId: string | null, actor: string, now: number) {
    return keys.revokeApiKey(this.sql, key, callerId, actor, now);
  }
  async authenticateApiKey(hash: string, now: number) {
    return keys.authenticateApiKey(this.sql, hash, now);
  }

  async listAudit(filter: AuditFilter) {
    return keys.listAudit(this.sql, filter);
  }

  async fleetCounts(): Promise<FleetCounts> {
    const byLifecycle: Record<Lifecycle, number> = {
      pending: 0,
      active: 0,
      maintenance: 0,
      decommissioned: 0,
    };
    let total = 0;
    for (const row of this.sql.all<{ lifecycle: Lifecycle; n: number }>(
      "SELECT lifecycle, count(*) AS n FROM machines GROUP BY lifecycle",
    )) {
      byLifecycle[row.lifecycle] = row.n;
      total += row.n;
    }
    const inSync = this.sql.get<{ n: number }>(
      `SELECT count(*) AS n FROM machines m JOIN desired_generations d ON d.machine_id = m.id
       WHERE m.current_generation = d.store_path`,
    )!.n;
    return { total, byLifecycle, inSync, activeRollouts: rollouts.activeRolloutCount(this.sql) };
  }

  async prune(cutoff: number): Promise<{ reports: number; healthReports: number }> {
    // Evidence a deploying batch may still count is kept: stored after its start (by sequence)
    // or, should the wall clock have stepped back, received after its start time.
    const keepFrom = rollouts.oldestDeployingStart(this.sql);
    const effective = keepFrom === null ? cutoff : Math.min(cutoff, keepFrom.at);
    const keepSeq = keepFrom === null ? Number.MAX_SAFE_INTEGER : keepFrom.seq;
    const chunked = (table: string) => {
      let deleted = 0;
      for (;;) {
        const n = this.sql.tx(
          () =>
            this.sql.run(
              `DELETE FROM ${table} WHERE id IN (SELECT id FROM ${table} WHERE received_at < ? AND seq <= ? ORDER BY id LIMIT ${PRUNE_CHUNK})`,
              effective,
              keepSeq,
            ).changes,
        );
        deleted += n;
        if (n < PRUNE_CHUNK) return deleted;
      }
    };
    return { reports: chunked("reports"), healthReports: chunked("health_reports") };
  }
}
