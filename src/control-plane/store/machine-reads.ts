/**
 * Reading machines: the machine record (tags, desired generation, active rollout joined in), lists
 * by tags and lifecycle, and what an agent should run. machines.ts writes them.
 */
import { type Ctx, cachedRows, jsonList } from "./context.js";
import type { DesiredRecord, MachineRecord } from "./records.js";
import type { MachineFilter } from "./repository.js";

function machineQuery(ctx: Ctx) {
  return ctx.q
    .selectFrom("machines as m")
    .leftJoin("desired_generations as d", "d.machine_id", "m.id")
    .leftJoin("rollout_machines as rm", (j) => j.onRef("rm.machine_id", "=", "m.id").on("rm.active", "=", 1))
    .leftJoin("rollouts as r", "r.id", "rm.rollout_id")
    .selectAll("m")
    .select([
      "d.store_path as d_store_path",
      "d.cache_url as d_cache_url",
      "d.revision as d_revision",
      "d.rollout_id as d_rollout_id",
      "d.set_by as d_set_by",
      "d.set_at as d_set_at",
      "rm.rollout_id as ar_rollout_id",
      "rm.batch_index as ar_batch_index",
      "r.status as ar_status",
    ]);
}

type MachineRow = Awaited<ReturnType<ReturnType<typeof machineQuery>["executeTakeFirstOrThrow"]>>;

function toMachine(row: MachineRow, tags: string[]): MachineRecord {
  return {
    id: row.id,
    lifecycle: row.lifecycle,
    tags,
    registeredAt: row.registered_at,
    lastSeen: row.last_seen,
    currentGeneration: row.current_generation,
    agentVersion: row.agent_version,
    uptimeSeconds: row.uptime_seconds,
    lastOutcome: row.last_outcome,
    lastMessage: row.last_message,
    lastReportAt: row.last_report_at,
    health:
      row.health_at === null
        ? null
        : {
            generation: row.health_generation ?? "",
            allPassed: row.health_all_passed === 1,
            at: row.health_at,
            failing: JSON.parse(row.health_failing ?? "[]") as string[],
          },
    desired:
      row.d_store_path === null
        ? null
        : {
            storePath: row.d_store_path,
            cacheUrl: row.d_cache_url ?? "",
            revision: row.d_revision ?? 0,
            rolloutId: row.d_rollout_id ?? "",
            setBy: row.d_set_by ?? "",
            setAt: row.d_set_at ?? 0,
          },
    activeRollout:
      row.ar_rollout_id === null
        ? null
        : {
            rolloutId: row.ar_rollout_id,
            batchIndex: row.ar_batch_index ?? 0,
            status: row.ar_status ?? "running",
          },
  };
}

/** Adds the tags: one query for any number of machines (the ids as one JSON parameter). */
async function withTags(ctx: Ctx, rows: MachineRow[]): Promise<MachineRecord[]> {
  const tags = new Map<string, string[]>();
  if (rows.length > 0) {
    const found = await ctx.q
      .selectFrom("machine_tags")
      .select(["machine_id", "tag"])
      .where(
        "machine_id",
        "in",
        jsonList(
          ctx,
          rows.map((r) => r.id),
        ),
      )
      .orderBy("machine_id")
      .orderBy("tag")
      .execute();
    for (const t of found) {
      const list = tags.get(t.machine_id);
      if (list) list.push(t.tag);
      else tags.set(t.machine_id, [t.tag]);
    }
  }
  return rows.map((r) => toMachine(r, tags.get(r.id) ?? []));
}

/** One machine; `tags` when the caller has just written them (saves reading them back). */
export async function getMachine(
  ctx: Ctx,
  id: string,
  tags: string[] | null = null,
): Promise<MachineRecord | undefined> {
  const [row] = await cachedRows(ctx, "machine", (p) => machineQuery(ctx).where("m.id", "=", p[0]), [id]);
  if (!row) return undefined;
  if (tags) return toMachine(row, tags);
  const found = await cachedRows(
    ctx,
    "machine-tags",
    (p) => ctx.q.selectFrom("machine_tags").select("tag").where("machine_id", "=", p[0]).orderBy("tag"),
    [id],
  );
  return toMachine(
    row,
    found.map((t) => t.tag),
  );
}

export async function getMachines(ctx: Ctx, ids: readonly string[]): Promise<MachineRecord[]> {
  if (ids.length === 0) return [];
  const rows = await machineQuery(ctx)
    .where("m.id", "in", jsonList(ctx, [...new Set(ids)]))
    .execute();
  // Sorted here, not by the database: the same order (code units) whatever PostgreSQL's collation.
  rows.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  return withTags(ctx, rows);
}

export async function listMachines(ctx: Ctx, filter: MachineFilter): Promise<MachineRecord[]> {
  let query = machineQuery(ctx);
  const tags = [...new Set(filter.tags)];
  if (tags.length > 0) {
    if (filter.match === "all") {
      query = query.where("m.id", "in", (eb) =>
        eb
          .selectFrom("machine_tags")
          .select("machine_id")
          .where("tag", "in", tags)
          .groupBy("machine_id")
          .having((h) => h.fn.countAll(), "=", tags.length),
      );
    } else {
      query = query.where(({ exists, selectFrom }) =>
        exists(
          selectFrom("machine_tags as t")
            .select("t.tag")
            .whereRef("t.machine_id", "=", "m.id")
            .where("t.tag", "in", tags),
        ),
      );
    }
  }
  if (filter.lifecycle) query = query.where("m.lifecycle", "=", filter.lifecycle);
  if (filter.afterId !== null) query = query.where("m.id", ">", filter.afterId);
  return withTags(ctx, await query.orderBy("m.id").limit(filter.limit).execute());
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
