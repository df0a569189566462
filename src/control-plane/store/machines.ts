/**
 * Writing machines, tags, desired generations, reports and health reports (machine-reads.ts
 * reads them).
 */

import { type Compilable, sql } from "kysely";
import { lifecycleAfterContact, lifecycleTransitionProblem } from "../registry/lifecycle.js";
import { audit, type Ctx, cachedRows, chunks, nextRevision, type Placeholders } from "./context.js";
import { ConflictError, NotFoundError } from "./errors.js";
import type { EvidenceRow } from "./evidence.js";
import type { Written } from "./group-commit.js";
import { getMachine } from "./machine-reads.js";
import type {
  AgentContactResult,
  DesiredChange,
  DesiredRecord,
  HealthInput,
  HelloInput,
  Lifecycle,
  MachineRecord,
  ReportInput,
} from "./records.js";

async function currentTags(ctx: Ctx, id: string): Promise<string[]> {
  const rows = await cachedRows(
    ctx,
    "machine-tags",
    (p) => ctx.q.selectFrom("machine_tags").select("tag").where("machine_id", "=", p[0]).orderBy("tag"),
    [id],
  );
  return rows.map((r) => r.tag);
}

/** Replaces a machine's tags (`old`: the stored ones); false when they are the same. */
async function replaceTags(
  ctx: Ctx,
  id: string,
  old: readonly string[],
  tags: readonly string[],
): Promise<boolean> {
  const next = sortedTags(tags);
  // Sorted here too: PostgreSQL's collation may order them differently from code units.
  const before = sortedTags(old);
  if (before.length === next.length && before.every((t, i) => t === next[i])) return false;
  await ctx.q.deleteFrom("machine_tags").where("machine_id", "=", id).execute();
  for (const part of chunks(next)) {
    await ctx.q
      .insertInto("machine_tags")
      .values(part.map((tag) => ({ machine_id: id, tag })))
      .execute();
  }
  return true;
}

function sortedTags(tags: readonly string[]): string[] {
  return [...new Set(tags)].sort();
}

function tagList(tags: readonly string[]): string {
  return sortedTags(tags).join(",") || "(none)";
}

/**
 * What an agent contact's UPDATE of its machine row returns: the lifecycle (a pre-registered
 * machine becomes active), the stored tags (to compare with what the agent says) and the running
 * rollout the machine is in (its gate may now decide). One statement where a read before the
 * write and a read of the whole machine record after it cost three (a sixth of a Report).
 */
interface ContactRow {
  lifecycle: Lifecycle;
  /** Sorted, joined by TAG_SEPARATOR; null: none. */
  tags: string | null;
  running_rollout: string | null;
}

/** Joins stored tags into one column; the unit separator cannot occur in a tag. */
const TAG_SEPARATOR = "\u001f";

function contactReturning(ctx: Ctx) {
  const tags =
    ctx.kind === "postgres"
      ? sql<
          string | null
        >`(SELECT string_agg(t.tag, chr(31) ORDER BY t.tag) FROM machine_tags t WHERE t.machine_id = machines.id)`
      : sql<
          string | null
        >`(SELECT group_concat(t.tag, char(31) ORDER BY t.tag) FROM machine_tags t WHERE t.machine_id = machines.id)`;
  const rollout = sql<
    string | null
  >`(SELECT rm.rollout_id FROM rollout_machines rm INNER JOIN rollouts r ON r.id = rm.rollout_id WHERE rm.machine_id = machines.id AND rm.active = 1 AND r.status = 'running')`;
  return [
    sql.ref<Lifecycle>("lifecycle").as("lifecycle"),
    tags.as("tags"),
    rollout.as("running_rollout"),
  ] as const;
}

/**
 * Stores an agent contact: `update` writes the machine row (returning ContactRow; nothing when the
 * machine is not registered yet). Registers the machine (ACTIVE) on first contact, moves a
 * pre-registered (PENDING) one to ACTIVE, and replaces its tags with what the agent says (null:
 * it did not say). All audited, because they change what rollouts may target.
 */
async function contact(
  ctx: Ctx,
  id: string,
  tags: readonly string[] | null,
  now: number,
  update: () => Promise<ContactRow | undefined>,
): Promise<AgentContactResult> {
  let row = await update();
  let registered = false;
  if (!row) {
    registered = await registerOnContact(ctx, id, now);
    row = await update();
    if (!row) throw new Error(`machine ${id} is missing right after its registration`);
  }
  await activateOnContact(ctx, id, row.lifecycle, now);
  if (tags !== null) {
    const old = row.tags === null ? [] : row.tags.split(TAG_SEPARATOR);
    if (await replaceTags(ctx, id, old, tags))
      await audit(ctx, now, `machine:${id}`, "machine.tags", id, `${tagList(old)} -> ${tagList(tags)}`);
  }
  return { machineId: id, registered, runningRolloutId: row.running_rollout };
}

/**
 * Registers a machine on its agent's first contact; false when another replica registered it
 * first (ON CONFLICT: two replicas may see a first contact at once; READ COMMITTED then sees
 * that row in the next statement).
 */
async function registerOnContact(ctx: Ctx, id: string, now: number): Promise<boolean> {
  const inserted = await ctx.q
    .insertInto("machines")
    .values({ id, lifecycle: "active", registered_at: now })
    .onConflict((oc) => oc.column("id").doNothing())
    .returning("id")
    .executeTakeFirst();
  if (!inserted) return false;
  await audit(
    ctx,
    now,
    `machine:${id}`,
    "machine.register",
    id,
    "registered on first contact (lifecycle active)",
  );
  return true;
}

async function activateOnContact(ctx: Ctx, id: string, lifecycle: Lifecycle, now: number): Promise<void> {
  const next = lifecycleAfterContact(lifecycle);
  if (next === lifecycle) return;
  const moved = await ctx.q
    .updateTable("machines")
    .set({ lifecycle: next })
    .where("id", "=", id)
    .where("lifecycle", "=", lifecycle)
    .executeTakeFirst();
  if (moved.numUpdatedRows > 0n)
    await audit(
      ctx,
      now,
      `machine:${id}`,
      "machine.lifecycle",
      id,
      `${lifecycle} -> ${next} (first contact)`,
    );
}

/** `column` unless the parameter is empty (agents that do not say keep what is stored). */
function keepIfEmpty(column: "current_generation" | "agent_version", param: never) {
  return sql<string>`CASE WHEN ${param} = '' THEN ${sql.ref(column)} ELSE ${param} END`;
}

/** The machine row's UPDATE of each kind of contact, compiled once (cachedQuery). */
function contactUpdate(
  ctx: Ctx,
  name: string,
  build: (p: Placeholders) => Compilable<ContactRow>,
  values: unknown[],
) {
  return async () => (await cachedRows(ctx, name, build, values))[0];
}

export async function recordHello(ctx: Ctx, input: HelloInput, now: number): Promise<AgentContactResult> {
  const update = contactUpdate(
    ctx,
    "hello-machine",
    (p) =>
      ctx.q
        .updateTable("machines")
        .set({
          last_seen: p[0],
          current_generation: keepIfEmpty("current_generation", p[1]),
          agent_version: keepIfEmpty("agent_version", p[2]),
        })
        .where("id", "=", p[3])
        .returning(contactReturning(ctx)),
    [now, input.currentGeneration, input.agentVersion, input.machineId],
  );
  return contact(ctx, input.machineId, input.tags, now, update);
}

/** Writes the machine row of a report; its evidence row is left for the group's end (evidence.ts). */
export async function recordReport(
  ctx: Ctx,
  input: ReportInput,
  now: number,
): Promise<Written<AgentContactResult, EvidenceRow>> {
  // One statement shape whatever the input: empty fields and outcome 0 keep the column.
  const update = contactUpdate(
    ctx,
    "report-machine",
    (p) =>
      ctx.q
        .updateTable("machines")
        .set({
          last_seen: p[0],
          last_report_at: p[0],
          uptime_seconds: p[1],
          current_generation: keepIfEmpty("current_generation", p[2]),
          agent_version: keepIfEmpty("agent_version", p[3]),
          last_outcome: sql<number>`CASE WHEN ${p[4]} = 0 THEN last_outcome ELSE ${p[4]} END`,
          last_message: sql<string>`CASE WHEN ${p[4]} = 0 THEN last_message ELSE ${p[5]} END`,
        })
        .where("id", "=", p[6])
        .returning(contactReturning(ctx)),
    [
      now,
      input.uptimeSeconds,
      input.currentGeneration,
      input.agentVersion,
      input.outcome,
      input.message,
      input.machineId,
    ],
  );
  const value = await contact(ctx, input.machineId, input.tags, now, update);
  return { value, row: { kind: "report", input, receivedAt: now } };
}

/** Writes the machine row of a health report; its evidence row is left for the group's end. */
export async function recordHealth(
  ctx: Ctx,
  input: HealthInput,
  now: number,
): Promise<Written<AgentContactResult, EvidenceRow>> {
  const failing = input.results.filter((r) => !r.passed).map((r) => r.name);
  // A report claiming all_passed with a failing result in it is not trusted as passing.
  const allPassed = input.allPassed && failing.length === 0 ? 1 : 0;
  const update = contactUpdate(
    ctx,
    "health-machine",
    (p) =>
      ctx.q
        .updateTable("machines")
        .set({
          last_seen: p[0],
          health_generation: p[1],
          health_all_passed: p[2],
          health_at: p[0],
          health_failing: p[3],
        })
        .where("id", "=", p[4])
        .returning(contactReturning(ctx)),
    [now, input.generation, allPassed, JSON.stringify(failing), input.machineId],
  );
  const value = await contact(ctx, input.machineId, null, now, update);
  return { value, row: { kind: "health", input, receivedAt: now, allPassed } };
}

async function lifecycleOf(ctx: Ctx, id: string): Promise<Lifecycle | undefined> {
  let query = ctx.q.selectFrom("machines").select("lifecycle").where("id", "=", id);
  if (ctx.kind === "postgres") query = query.forUpdate();
  return (await query.executeTakeFirst())?.lifecycle;
}

export async function registerMachine(
  ctx: Ctx,
  input: { id: string; tags: string[]; lifecycle: Lifecycle | null },
  actor: string,
  now: number,
): Promise<{ machine: MachineRecord; created: boolean }> {
  const existing = await lifecycleOf(ctx, input.id);
  if (!existing) {
    const lifecycle = input.lifecycle ?? "pending";
    await ctx.q.insertInto("machines").values({ id: input.id, lifecycle, registered_at: now }).execute();
    await replaceTags(ctx, input.id, [], input.tags);
    await audit(
      ctx,
      now,
      actor,
      "machine.register",
      input.id,
      `lifecycle ${lifecycle}, tags ${tagList(input.tags)}`,
    );
    return { machine: (await getMachine(ctx, input.id))!, created: true };
  }
  if (input.lifecycle !== null && input.lifecycle !== existing) {
    const problem = lifecycleTransitionProblem(existing, input.lifecycle);
    if (problem) throw new ConflictError(`machine ${input.id}: ${problem}`);
    await ctx.q
      .updateTable("machines")
      .set({ lifecycle: input.lifecycle })
      .where("id", "=", input.id)
      .execute();
    await audit(ctx, now, actor, "machine.lifecycle", input.id, `${existing} -> ${input.lifecycle}`);
  }
  const old = await currentTags(ctx, input.id);
  if (await replaceTags(ctx, input.id, old, input.tags))
    await audit(ctx, now, actor, "machine.tags", input.id, `${tagList(old)} -> ${tagList(input.tags)}`);
  return { machine: (await getMachine(ctx, input.id))!, created: false };
}

export async function setLifecycle(
  ctx: Ctx,
  id: string,
  lifecycle: Lifecycle,
  actor: string,
  now: number,
): Promise<{ machine: MachineRecord; changed: boolean }> {
  const current = await lifecycleOf(ctx, id);
  if (!current) throw new NotFoundError(`machine ${id} is not registered`);
  const problem = lifecycleTransitionProblem(current, lifecycle);
  if (problem) throw new ConflictError(`machine ${id}: ${problem}`);
  if (current === lifecycle) return { machine: (await getMachine(ctx, id))!, changed: false };
  await ctx.q.updateTable("machines").set({ lifecycle }).where("id", "=", id).execute();
  await audit(ctx, now, actor, "machine.lifecycle", id, `${current} -> ${lifecycle}`);
  return { machine: (await getMachine(ctx, id))!, changed: true };
}

async function refuseIfInActiveRollout(ctx: Ctx, machineId: string, what: string): Promise<void> {
  const row = await ctx.q
    .selectFrom("rollout_machines as rm")
    .innerJoin("rollouts as r", "r.id", "rm.rollout_id")
    .select(["rm.rollout_id", "r.status"])
    .where("rm.machine_id", "=", machineId)
    .where("rm.active", "=", 1)
    .executeTakeFirst();
  if (row) {
    throw new ConflictError(
      `cannot ${what} of machine ${machineId}: it is in active rollout ${row.rollout_id} (${row.status}); ` +
        "cancel that rollout (or let it finish) first",
    );
  }
}

/** Writes a desired generation with a fresh revision (no checks; callers hold the transaction). */
export async function writeDesired(
  ctx: Ctx,
  machineId: string,
  storePath: string,
  cacheUrl: string,
  rolloutId: string,
  setBy: string,
  now: number,
): Promise<DesiredRecord> {
  const revision = await nextRevision(ctx, now);
  const row = {
    store_path: storePath,
    cache_url: cacheUrl,
    revision,
    rollout_id: rolloutId,
    set_by: setBy,
    set_at: now,
  };
  await ctx.q
    .insertInto("desired_generations")
    .values({ machine_id: machineId, ...row })
    .onConflict((oc) => oc.column("machine_id").doUpdateSet(row))
    .execute();
  return { storePath, cacheUrl, revision, rolloutId, setBy, setAt: now };
}

async function requireMachine(ctx: Ctx, id: string, message: string): Promise<void> {
  if ((await lifecycleOf(ctx, id)) === undefined) throw new NotFoundError(message);
}

export async function setDesired(
  ctx: Ctx,
  input: { machineId: string; storePath: string; cacheUrl: string },
  actor: string,
  now: number,
): Promise<{ machine: MachineRecord; change: DesiredChange }> {
  await requireMachine(
    ctx,
    input.machineId,
    `machine ${input.machineId} is not registered; register it or let its agent report first`,
  );
  await refuseIfInActiveRollout(ctx, input.machineId, "set the desired generation");
  const desired = await writeDesired(ctx, input.machineId, input.storePath, input.cacheUrl, "", actor, now);
  await audit(
    ctx,
    now,
    actor,
    "desired.set",
    input.machineId,
    `${input.storePath}${input.cacheUrl ? ` from ${input.cacheUrl}` : ""} (revision ${desired.revision})`,
  );
  return {
    machine: (await getMachine(ctx, input.machineId))!,
    change: { machineId: input.machineId, desired },
  };
}

export async function clearDesired(
  ctx: Ctx,
  machineId: string,
  actor: string,
  now: number,
): Promise<{ machine: MachineRecord; change: DesiredChange | null }> {
  await requireMachine(ctx, machineId, `machine ${machineId} is not registered`);
  await refuseIfInActiveRollout(ctx, machineId, "clear the desired generation");
  const existing = await ctx.q
    .selectFrom("desired_generations")
    .select("store_path")
    .where("machine_id", "=", machineId)
    .executeTakeFirst();
  if (!existing) return { machine: (await getMachine(ctx, machineId))!, change: null };
  await ctx.q.deleteFrom("desired_generations").where("machine_id", "=", machineId).execute();
  await audit(ctx, now, actor, "desired.clear", machineId, `was ${existing.store_path}`);
  return { machine: (await getMachine(ctx, machineId))!, change: { machineId, desired: null } };
}
