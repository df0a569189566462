/**
 * Reading rollouts, their batches, machines and events, and the evidence the gate classifies.
 * rollouts.ts writes them; both are loading and saving only (the rules are ../rollouts/).
 */
import { type Selectable, sql } from "kysely";
import { gateEvidenceFor } from "../rollouts/decisions.js";
import type { Ctx } from "./context.js";
import { NotFoundError } from "./errors.js";
import type { BatchRecord, RolloutEventRecord, RolloutMachineRecord, RolloutRecord } from "./records.js";
import type { GateEvidence, RolloutFilter } from "./repository.js";
import type { RolloutBatchesTable, RolloutEventsTable, RolloutsTable } from "./tables.js";

export type EventRow = Omit<RolloutEventsTable, "id"> & { id: number };

export function toEvent(row: EventRow): RolloutEventRecord {
  return {
    id: row.id,
    rolloutId: row.rollout_id,
    type: row.type,
    batchIndex: row.batch_index,
    machineId: row.machine_id,
    message: row.message,
    actor: row.actor,
    createdAt: row.created_at,
  };
}

/** A rollout machine as one JSON array: the order `rolloutMachineRows` reads. */
type MachineRow = [
  machineId: string,
  batchIndex: number,
  targetGeneration: string,
  previousRecorded: number,
  previousGeneration: string | null,
  gateState: RolloutMachineRecord["gateState"],
  gateReason: string,
  position: number,
];

/**
 * A rollout's machines in batch and position order, one JSON array column per row: at 10,000
 * machines better-sqlite3 spent more building row objects property by property than running
 * the query (see machine-reads.ts).
 */
export async function rolloutMachineRows(ctx: Ctx, rolloutId: string): Promise<MachineRow[]> {
  const columns = sql.join([
    sql.ref("rm.machine_id"),
    sql.ref("rm.batch_index"),
    sql.ref("rm.target_generation"),
    sql.ref("rm.previous_recorded"),
    sql.ref("rm.previous_generation"),
    sql.ref("rm.gate_state"),
    sql.ref("rm.gate_reason"),
    sql.ref("rm.position"),
  ]);
  const row =
    ctx.kind === "postgres"
      ? sql<MachineRow | string>`json_build_array(${columns})`
      : sql<MachineRow | string>`json_array(${columns})`;
  const rows = await ctx.q
    .selectFrom("rollout_machines as rm")
    .select(row.as("r"))
    .where("rm.rollout_id", "=", rolloutId)
    .orderBy("rm.batch_index")
    .orderBy("rm.position")
    .execute();
  return rows.map(({ r }) => (typeof r === "string" ? (JSON.parse(r) as MachineRow) : r));
}

export function toMachineRecord(m: MachineRow): RolloutMachineRecord {
  return {
    machineId: m[0],
    batchIndex: m[1],
    targetGeneration: m[2],
    previousRecorded: m[3] === 1,
    previousGeneration: m[4],
    gateState: m[5],
    gateReason: m[6],
  };
}

/** Groups a rollout's machines (batch and position order) under its batch rows. */
export function assembleBatches(
  batchRows: readonly RolloutBatchesRow[],
  machines: readonly RolloutMachineRecord[],
): BatchRecord[] {
  const byBatch = new Map<number, RolloutMachineRecord[]>();
  for (const m of machines) {
    const list = byBatch.get(m.batchIndex);
    if (list) list.push(m);
    else byBatch.set(m.batchIndex, [m]);
  }
  return batchRows.map((b) => ({
    index: b.batch_index,
    status: b.status,
    startedAt: b.started_at,
    startedSeq: b.started_seq,
    completedAt: b.completed_at,
    machines: byBatch.get(b.batch_index) ?? [],
  }));
}

export type RolloutBatchesRow = Selectable<RolloutBatchesTable>;

export async function batchRows(ctx: Ctx, rolloutId: string): Promise<RolloutBatchesRow[]> {
  return ctx.q
    .selectFrom("rollout_batches")
    .selectAll()
    .where("rollout_id", "=", rolloutId)
    .orderBy("batch_index")
    .execute();
}

export async function toRollout(ctx: Ctx, row: RolloutsTable): Promise<RolloutRecord> {
  const machines = (await rolloutMachineRows(ctx, row.id)).map(toMachineRecord);
  return { ...rolloutFields(row), batches: assembleBatches(await batchRows(ctx, row.id), machines) };
}

/** A rollout record's own fields (all but its batches) from its row. */
export function rolloutFields(row: RolloutsTable): Omit<RolloutRecord, "batches"> {
  return {
    id: row.id,
    releaseId: row.release_id,
    status: row.status,
    statusReason: row.status_reason,
    targetTags: JSON.parse(row.target_tags),
    targetHosts: JSON.parse(row.target_hosts),
    strategy: row.strategy,
    batchSizes: JSON.parse(row.batch_sizes),
    failureThreshold: row.failure_threshold,
    onFailure: row.on_failure,
    healthTimeoutSeconds: row.health_timeout_seconds,
    soakSeconds: row.soak_seconds,
    cacheUrl: row.cache_url,
    currentBatch: row.current_batch,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
    createdBy: row.created_by,
  };
}

/** The rollout's row; on PostgreSQL locked until the transaction ends (writers call this first). */
export async function rolloutRow(ctx: Ctx, id: string, lock = false): Promise<RolloutsTable | undefined> {
  let query = ctx.q.selectFrom("rollouts").selectAll().where("id", "=", id);
  if (lock && ctx.kind === "postgres") query = query.forUpdate();
  return query.executeTakeFirst();
}

export async function requireRollout(ctx: Ctx, id: string): Promise<RolloutsTable> {
  const row = await rolloutRow(ctx, id, true);
  if (!row) throw new NotFoundError(`rollout ${id} does not exist`);
  return row;
}

export async function batchRow(ctx: Ctx, rolloutId: string, index: number) {
  return ctx.q
    .selectFrom("rollout_batches")
    .selectAll()
    .where("rollout_id", "=", rolloutId)
    .where("batch_index", "=", index)
    .executeTakeFirst();
}

/** A rollout without its machines: what the executor decides its next step from. */
export type RolloutHead = Omit<RolloutRecord, "batches"> & { batches: Omit<BatchRecord, "machines">[] };

/**
 * The rollout's fields and batches, not its machines: the executor evaluates a rollout on every
 * report from one of its machines, and reading 10,000 machine rows each time was most of that.
 */
export async function rolloutHead(ctx: Ctx, id: string): Promise<RolloutHead | undefined> {
  const row = await rolloutRow(ctx, id);
  if (!row) return undefined;
  const batches = (await batchRows(ctx, id)).map((b) => ({
    index: b.batch_index,
    status: b.status,
    startedAt: b.started_at,
    startedSeq: b.started_seq,
    completedAt: b.completed_at,
  }));
  return { ...rolloutFields(row), batches };
}

export async function getRollout(ctx: Ctx, id: string): Promise<RolloutRecord | undefined> {
  const row = await rolloutRow(ctx, id);
  return row ? toRollout(ctx, row) : undefined;
}

export async function listRollouts(ctx: Ctx, filter: RolloutFilter): Promise<RolloutRecord[]> {
  let query = ctx.q.selectFrom("rollouts").selectAll();
  if (filter.status !== null) query = query.where("status", "=", filter.status);
  if (filter.releaseId !== null) query = query.where("release_id", "=", filter.releaseId);
  if (filter.before) {
    const { createdAt, id } = filter.before;
    query = query.where((eb) =>
      eb.or([
        eb("created_at", "<", createdAt),
        eb.and([eb("created_at", "=", createdAt), eb("id", "<", id)]),
      ]),
    );
  }
  const rows = await query.orderBy("created_at", "desc").orderBy("id", "desc").limit(filter.limit).execute();
  const out: RolloutRecord[] = [];
  for (const r of rows) out.push(await toRollout(ctx, r));
  return out;
}

export async function rolloutEvents(
  ctx: Ctx,
  id: string,
  afterId: number,
  limit: number,
): Promise<RolloutEventRecord[]> {
  const rows = await ctx.q
    .selectFrom("rollout_events")
    .selectAll()
    .where("rollout_id", "=", id)
    .where("id", ">", afterId)
    .orderBy("id")
    .limit(limit)
    .execute();
  return rows.map(toEvent);
}

export async function runningRolloutIds(ctx: Ctx): Promise<string[]> {
  const rows = await ctx.q
    .selectFrom("rollouts")
    .select("id")
    .where("status", "=", "running")
    .orderBy("created_at")
    .orderBy("id")
    .execute();
  return rows.map((r) => r.id);
}

/**
 * The evidence the gate classifies, in three queries per batch: the batch's machines (with what
 * they run and their assignment's revision), and the outcome reports and health reports on the
 * target stored after the batch start. Which of them count is decided by gateEvidenceFor.
 */
export async function gateEvidence(ctx: Ctx, rolloutId: string, batchIndex: number): Promise<GateEvidence[]> {
  const batch = await batchRow(ctx, rolloutId, batchIndex);
  if (!batch || batch.started_seq === null) return [];
  const startedSeq = batch.started_seq;
  const machines = await ctx.q
    .selectFrom("rollout_machines as rm")
    .innerJoin("machines as m", "m.id", "rm.machine_id")
    .leftJoin("desired_generations as d", "d.machine_id", "rm.machine_id")
    .select(["rm.machine_id", "rm.target_generation", "m.current_generation", "d.revision"])
    .where("rm.rollout_id", "=", rolloutId)
    .where("rm.batch_index", "=", batchIndex)
    .orderBy("rm.position")
    .execute();
  const outcomes = await ctx.q
    .selectFrom("reports as r")
    .innerJoin("rollout_machines as rm", "rm.machine_id", "r.machine_id")
    .select([
      "r.machine_id",
      "r.outcome",
      "r.message",
      "r.desired_generation",
      "r.desired_revision",
      "r.received_at",
      "r.seq",
    ])
    .where("rm.rollout_id", "=", rolloutId)
    .where("rm.batch_index", "=", batchIndex)
    .where("r.seq", ">", startedSeq)
    .where("r.outcome", "!=", 0)
    .execute();
  const health = await ctx.q
    .selectFrom("health_reports as h")
    .innerJoin("rollout_machines as rm", (j) =>
      j.onRef("rm.machine_id", "=", "h.machine_id").onRef("rm.target_generation", "=", "h.generation"),
    )
    .select(["h.machine_id", "h.all_passed", "h.received_at", "h.seq", "h.results"])
    .where("rm.rollout_id", "=", rolloutId)
    .where("rm.batch_index", "=", batchIndex)
    .where("h.seq", ">", startedSeq)
    .execute();
  return gateEvidenceFor(
    machines.map((m) => ({
      machineId: m.machine_id,
      targetGeneration: m.target_generation,
      currentGeneration: m.current_generation,
      assignedRevision: m.revision ?? 0,
    })),
    outcomes.map((o) => ({
      machineId: o.machine_id,
      outcome: o.outcome,
      message: o.message,
      desiredGeneration: o.desired_generation,
      desiredRevision: o.desired_revision,
      receivedAt: o.received_at,
      seq: o.seq,
    })),
    health.map((h) => ({
      machineId: h.machine_id,
      allPassed: h.all_passed === 1,
      receivedAt: h.received_at,
      seq: h.seq,
      failing: (JSON.parse(h.results) as { name: string; passed: boolean }[])
        .filter((r) => !r.passed)
        .map((r) => r.name),
    })),
  );
}

export async function activeRolloutCount(ctx: Ctx): Promise<number> {
  const row = await ctx.q
    .selectFrom("rollouts")
    .select((eb) => eb.fn.countAll<number>().as("n"))
    .where("status", "in", ["running", "paused"])
    .executeTakeFirstOrThrow();
  return Number(row.n);
}

/** The oldest start of a deploying batch: reports after it are gate evidence and must be kept. */
export async function oldestDeployingStart(ctx: Ctx): Promise<{ at: number; seq: number } | null> {
  const row = await ctx.q
    .selectFrom("rollout_batches")
    .select((eb) => [eb.fn.min("started_at").as("at"), eb.fn.min("started_seq").as("seq")])
    .where("status", "=", "deploying")
    .executeTakeFirstOrThrow();
  return row.at === null || row.seq === null ? null : { at: Number(row.at), seq: Number(row.seq) };
}
