/**
 * Reading machines: the machine record (tags, desired generation, active rollout joined in), lists
 * by tags and lifecycle, and what an agent should run. machines.ts writes them.
 */
import { sql } from "kysely";
import { type Ctx, cachedRows, jsonList } from "./context.js";
import type { DesiredRecord, MachineRecord } from "./records.js";
import type { MachineFilter } from "./repository.js";

/** Joins a machine's tags into one column; the unit separator cannot occur in a tag. */
const TAG_SEPARATOR = "\u001f";

/**
 * The machine's tags, sorted, as one string: one correlated primary-key lookup per row inside the
 * same statement, instead of a second round of `IN (…)` queries 500 ids at a time (listing 10,000
 * machines spent more in those and in merging their rows than in the main query).
 */
function tagList(ctx: Ctx) {
  return ctx.kind === "postgres"
    ? sql`(SELECT string_agg(t.tag, chr(31) ORDER BY t.tag) FROM machine_tags t WHERE t.machine_id = m.id)`
    : // An ordered aggregate (SQLite ≥ 3.44; better-sqlite3 bundles its own): it walks the
      // primary key (machine_id, tag) in order, where an ordered sub-select cost a co-routine per
      // machine (≈ 40 % of listing 10,000 machines).
      sql`(SELECT group_concat(t.tag, char(31) ORDER BY t.tag) FROM machine_tags t WHERE t.machine_id = m.id)`;
}

/** The columns of a machine record, in the order `toMachine` reads them. */
const COLUMNS = [
  "m.id",
  "m.lifecycle",
  "m.registered_at",
  "m.last_seen",
  "m.current_generation",
  "m.agent_version",
  "m.uptime_seconds",
  "m.last_outcome",
  "m.last_message",
  "m.last_report_at",
  "m.health_generation",
  "m.health_all_passed",
  "m.health_at",
  "m.health_failing",
  "d.store_path",
  "d.cache_url",
  "d.revision",
  "d.rollout_id",
  "d.set_by",
  "d.set_at",
  "rm.rollout_id",
  "rm.batch_index",
  "r.status",
] as const;

type Row = [
  id: string,
  lifecycle: MachineRecord["lifecycle"],
  registeredAt: number,
  lastSeen: number | null,
  currentGeneration: string,
  agentVersion: string,
  uptimeSeconds: number,
  lastOutcome: number,
  lastMessage: string,
  lastReportAt: number | null,
  healthGeneration: string | null,
  healthAllPassed: number | null,
  healthAt: number | null,
  healthFailing: string | null,
  desiredStorePath: string | null,
  desiredCacheUrl: string | null,
  desiredRevision: number | null,
  desiredRolloutId: string | null,
  desiredSetBy: string | null,
  desiredSetAt: number | null,
  activeRolloutId: string | null,
  activeBatchIndex: number | null,
  activeStatus: NonNullable<MachineRecord["activeRollout"]>["status"] | null,
  tags: string | null,
];

/**
 * One machine per row, as a single JSON array column. better-sqlite3 builds a row object
 * property by property through V8's slow path: with the ~24 columns of a machine, listing 10,000
 * machines spent 2–4× as long building row objects as running the query; one string per row and
 * JSON.parse cost a fraction of that. PostgreSQL's json_build_array arrives already parsed.
 */
function machineQuery(ctx: Ctx) {
  const columns = sql.join([...COLUMNS.map((c) => sql.ref(c)), tagList(ctx)]);
  const row =
    ctx.kind === "postgres"
      ? sql<Row | string>`json_build_array(${columns})`
      : sql<Row | string>`json_array(${columns})`;
  return ctx.q
    .selectFrom("machines as m")
    .leftJoin("desired_generations as d", "d.machine_id", "m.id")
    .leftJoin("rollout_machines as rm", (j) => j.onRef("rm.machine_id", "=", "m.id").on("rm.active", "=", 1))
    .leftJoin("rollouts as r", "r.id", "rm.rollout_id")
    .select(row.as("r"));
}

function toMachine({ r }: { r: Row | string }): MachineRecord {
  const row: Row = typeof r === "string" ? (JSON.parse(r) as Row) : r;
  const [
    id,
    lifecycle,
    registeredAt,
    lastSeen,
    currentGeneration,
    agentVersion,
    uptimeSeconds,
    lastOutcome,
    lastMessage,
    lastReportAt,
    healthGeneration,
    healthAllPassed,
    healthAt,
    healthFailing,
    storePath,
    cacheUrl,
    revision,
    rolloutId,
    setBy,
    setAt,
    activeId,
    activeBatch,
    activeStatus,
    tags,
  ] = row;
  return {
    id,
    lifecycle,
    tags: tags ? tags.split(TAG_SEPARATOR) : [],
    registeredAt,
    lastSeen,
    currentGeneration,
    agentVersion,
    uptimeSeconds,
    lastOutcome,
    lastMessage,
    lastReportAt,
    health:
      healthAt === null
        ? null
        : {
            generation: healthGeneration ?? "",
            allPassed: healthAllPassed === 1,
            at: healthAt,
            failing: JSON.parse(healthFailing ?? "[]") as string[],
          },
    desired:
      storePath === null
        ? null
        : {
            storePath,
            cacheUrl: cacheUrl ?? "",
            revision: revision ?? 0,
            rolloutId: rolloutId ?? "",
            setBy: setBy ?? "",
            setAt: setAt ?? 0,
          },
    activeRollout:
      activeId === null
        ? null
        : { rolloutId: activeId, batchIndex: activeBatch ?? 0, status: activeStatus ?? "running" },
  };
}

export async function getMachine(ctx: Ctx, id: string): Promise<MachineRecord | undefined> {
  const [row] = await cachedRows(ctx, "machine", (p) => machineQuery(ctx).where("m.id", "=", p[0]), [id]);
  return row ? toMachine(row) : undefined;
}

/** Any number of machines in one query (the ids as one JSON parameter), sorted by id. */
export async function getMachines(ctx: Ctx, ids: readonly string[]): Promise<MachineRecord[]> {
  if (ids.length === 0) return [];
  const rows = await machineQuery(ctx)
    .where("m.id", "in", jsonList(ctx, [...new Set(ids)]))
    .execute();
  const machines = rows.map(toMachine);
  // Sorted here, not by the database: the same order (code units) whatever PostgreSQL's collation.
  return machines.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}

/** Narrows a machine query to the filter's tags and lifecycle, after `afterId`, sorted by id. */
function filtered<Q extends ReturnType<typeof machineQuery> | ReturnType<typeof statusQuery>>(
  query: Q,
  filter: Omit<MachineFilter, "limit">,
): Q {
  // The filter only adds WHERE clauses on m.*: the query's shape (and type) is unchanged.
  let q = query as ReturnType<typeof machineQuery>;
  const tags = [...new Set(filter.tags)];
  if (tags.length > 0) {
    if (filter.match === "all") {
      q = q.where("m.id", "in", (eb) =>
        eb
          .selectFrom("machine_tags")
          .select("machine_id")
          .where("tag", "in", tags)
          .groupBy("machine_id")
          .having((h) => h.fn.countAll(), "=", tags.length),
      );
    } else {
      q = q.where(({ exists, selectFrom }) =>
        exists(
          selectFrom("machine_tags as t")
            .select("t.tag")
            .whereRef("t.machine_id", "=", "m.id")
            .where("t.tag", "in", tags),
        ),
      );
    }
  }
  if (filter.lifecycle) q = q.where("m.lifecycle", "=", filter.lifecycle);
  if (filter.afterId !== null) q = q.where("m.id", ">", filter.afterId);
  return q.orderBy("m.id") as unknown as Q;
}

export async function listMachines(ctx: Ctx, filter: MachineFilter): Promise<MachineRecord[]> {
  return (await filtered(machineQuery(ctx), filter).limit(filter.limit).execute()).map(toMachine);
}

/**
 * A machine for the fleet status, cheaply: its id, the inputs of "last seen" and "stale", and a
 * version of everything else — equal version, equal status, so the caller keeps what it built
 * from the machine (`machineStatuses`) and re-reads only the machines whose version moved.
 */
export interface MachineStatusRow {
  id: string;
  lastSeen: number | null;
  registeredAt: number;
  version: string;
}

/**
 * The status version: the machine's own `status_version` (schema version 4: triggers bump it on
 * any write to a status column or to its tags), its desired generation's revision (every
 * assignment takes a fresh one; clearing deletes the row) and its active rollout and batch.
 */
function statusVersion(
  own: number | string,
  revision: number | null,
  rolloutId: string | null,
  batch: number | null,
): string {
  return `${own}:${revision ?? ""}:${rolloutId ?? ""}:${batch ?? ""}`;
}

/** Separators of the status rows' text; neither can occur in a machine or rollout id. */
const ROW_SEPARATOR = "\u001e";
const FIELD_SEPARATOR = "\u001f";

/**
 * The status rows' query: per machine one text (id, last seen, registered at, and the version
 * built as statusVersion builds it), all machines joined into one text by the database. Building
 * 10,000 row objects or parsing 10,000 JSON arrays cost more than the query itself; one string
 * and a split cost a fraction.
 */
function statusQuery(ctx: Ctx) {
  const text = (c: string) => sql`coalesce(CAST(${sql.ref(c)} AS TEXT), '')`;
  const row = sql<string>`${sql.join(
    [
      sql.ref("m.id"),
      sql.lit(FIELD_SEPARATOR),
      text("m.last_seen"),
      sql.lit(FIELD_SEPARATOR),
      text("m.registered_at"),
      sql.lit(FIELD_SEPARATOR),
      text("m.status_version"),
      sql.lit(":"),
      text("d.revision"),
      sql.lit(":"),
      text("rm.rollout_id"),
      sql.lit(":"),
      text("rm.batch_index"),
    ],
    sql` || `,
  )}`;
  return ctx.q
    .selectFrom("machines as m")
    .leftJoin("desired_generations as d", "d.machine_id", "m.id")
    .leftJoin("rollout_machines as rm", (j) => j.onRef("rm.machine_id", "=", "m.id").on("rm.active", "=", 1))
    .select(["m.id", row.as("r")]);
}

/** Every machine the filter picks, sorted by id, as status rows (GetFleetStatus). */
export async function machineStatusRows(
  ctx: Ctx,
  filter: Omit<MachineFilter, "afterId" | "limit">,
): Promise<MachineStatusRow[]> {
  const rows = filtered(statusQuery(ctx), { ...filter, afterId: null }).as("s");
  // SQLite concatenates in the sub-select's order (its primary-key scan); an ORDER BY in the
  // aggregate would sort the rows again (a temporary b-tree, ≈ 30 % of the query at 10,000), so
  // the order is checked below instead of asked for. PostgreSQL is asked.
  const all =
    ctx.kind === "postgres"
      ? sql<string | null>`string_agg(s.r, ${ROW_SEPARATOR} ORDER BY s.id)`
      : sql<string | null>`group_concat(s.r, ${ROW_SEPARATOR})`;
  const [result] = await ctx.q.selectFrom(rows).select(all.as("all")).execute();
  if (!result?.all) return [];
  let sorted = true;
  let previous = "";
  const out = result.all.split(ROW_SEPARATOR).map((line): MachineStatusRow => {
    const [id, lastSeen, registeredAt, version] = line.split(FIELD_SEPARATOR) as [
      string,
      string,
      string,
      string,
    ];
    if (id < previous) sorted = false;
    previous = id;
    return {
      id,
      lastSeen: lastSeen === "" ? null : Number(lastSeen),
      registeredAt: Number(registeredAt),
      version,
    };
  });
  return sorted ? out : out.sort((a, b) => (a.id < b.id ? -1 : 1));
}

/**
 * These machines' records with their status versions (sorted by id), read together: what is built
 * from a record is kept under the version read with it, so a write between this read and the
 * status rows' can only make the next call re-read the machine, never keep an old status.
 */
export async function machineStatuses(
  ctx: Ctx,
  ids: readonly string[],
): Promise<{ machine: MachineRecord; version: string }[]> {
  if (ids.length === 0) return [];
  const rows = await machineQuery(ctx)
    .select("m.status_version")
    .where("m.id", "in", jsonList(ctx, [...new Set(ids)]))
    .execute();
  const out = rows.map((row) => {
    const machine = toMachine(row);
    const version = statusVersion(
      row.status_version,
      machine.desired?.revision ?? null,
      machine.activeRollout?.rolloutId ?? null,
      machine.activeRollout?.batchIndex ?? null,
    );
    return { machine, version };
  });
  // Sorted here, not by the database: the same order (code units) whatever PostgreSQL's collation.
  return out.sort((a, b) => (a.machine.id < b.machine.id ? -1 : a.machine.id > b.machine.id ? 1 : 0));
}

/** What choosing a rollout's machines needs of each: its lifecycle and any active rollout. */
export type TargetCandidate = Pick<MachineRecord, "id" | "lifecycle" | "activeRollout">;

type CandidateRow = [
  id: string,
  lifecycle: MachineRecord["lifecycle"],
  activeId: string | null,
  activeBatch: number | null,
  activeStatus: NonNullable<MachineRecord["activeRollout"]>["status"] | null,
];

/**
 * The machines a rollout target names — having all `tags`, or the `hosts` (missing ones absent) —
 * with only what resolveTargets needs, sorted by id: CreateRollout lists the whole fleet before
 * its first push, and the full machine record (tags, health, desired) is most of that cost.
 */
export async function targetCandidates(
  ctx: Ctx,
  target: { tags: readonly string[] } | { hosts: readonly string[] },
): Promise<TargetCandidate[]> {
  const columns = sql.join([
    sql.ref("m.id"),
    sql.ref("m.lifecycle"),
    sql.ref("rm.rollout_id"),
    sql.ref("rm.batch_index"),
    sql.ref("r.status"),
  ]);
  const row =
    ctx.kind === "postgres"
      ? sql<CandidateRow | string>`json_build_array(${columns})`
      : sql<CandidateRow | string>`json_array(${columns})`;
  let query = ctx.q
    .selectFrom("machines as m")
    .leftJoin("rollout_machines as rm", (j) => j.onRef("rm.machine_id", "=", "m.id").on("rm.active", "=", 1))
    .leftJoin("rollouts as r", "r.id", "rm.rollout_id")
    .select(row.as("r"));
  if ("hosts" in target) {
    if (target.hosts.length === 0) return [];
    query = query.where("m.id", "in", jsonList(ctx, [...new Set(target.hosts)]));
  } else {
    const tags = [...new Set(target.tags)];
    query = query.where("m.id", "in", (eb) =>
      eb
        .selectFrom("machine_tags")
        .select("machine_id")
        .where("tag", "in", tags)
        .groupBy("machine_id")
        .having((h) => h.fn.countAll(), "=", tags.length),
    );
  }
  const rows = await query.execute();
  const out = rows.map(({ r }): TargetCandidate => {
    const [id, lifecycle, activeId, activeBatch, activeStatus] =
      typeof r === "string" ? (JSON.parse(r) as CandidateRow) : r;
    return {
      id,
      lifecycle,
      activeRollout:
        activeId === null
          ? null
          : { rolloutId: activeId, batchIndex: activeBatch ?? 0, status: activeStatus ?? "running" },
    };
  });
  // Sorted here, not by the database: the same order (code units) whatever PostgreSQL's collation.
  return out.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}

export async function desiredFor(
  ctx: Ctx,
  machineId: string,
): Promise<{ desired: DesiredRecord | null; inActiveRollout: boolean }> {
  const row = await ctx.q
    .selectFrom("desired_generations")
    .selectAll()
    .where("machine_id", "=", machineId)
    .executeTakeFirst();
  const active = await ctx.q
    .selectFrom("rollout_machines")
    .select("machine_id")
    .where("machine_id", "=", machineId)
    .where("active", "=", 1)
    .executeTakeFirst();
  return {
    desired: row
      ? {
          storePath: row.store_path,
          cacheUrl: row.cache_url,
          revision: row.revision,
          rolloutId: row.rollout_id,
          setBy: row.set_by,
          setAt: row.set_at,
        }
      : null,
    inActiveRollout: active !== undefined,
  };
}
