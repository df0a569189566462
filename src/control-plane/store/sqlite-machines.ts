/**
 * Machines, tags, desired generations, reports and health reports in SQLite.
 */
import { lifecycleAfterContact, lifecycleTransitionProblem } from "../registry/lifecycle.js";
import { ConflictError, NotFoundError } from "./errors.js";
import type {
  AgentContactResult,
  DesiredChange,
  DesiredRecord,
  HealthInput,
  HelloInput,
  Lifecycle,
  MachineRecord,
  ReportInput,
  RolloutStatus,
} from "./records.js";
import type { MachineFilter } from "./repository.js";
import { jsonList, nextSeq, type Sql } from "./sql.js";

interface MachineRow {
  id: string;
  lifecycle: Lifecycle;
  registered_at: number;
  last_seen: number | null;
  current_generation: string;
  agent_version: string;
  uptime_seconds: number;
  last_outcome: number;
  last_message: string;
  last_report_at: number | null;
  health_generation: string | null;
  health_all_passed: number | null;
  health_at: number | null;
  health_failing: string | null;
  tags_json: string;
  d_store_path: string | null;
  d_cache_url: string | null;
  d_revision: number | null;
  d_rollout_id: string | null;
  d_set_by: string | null;
  d_set_at: number | null;
  ar_rollout_id: string | null;
  ar_batch_index: number | null;
  ar_status: RolloutStatus | null;
}

const MACHINE_SELECT = `
SELECT m.*,
  (SELECT json_group_array(tag) FROM (SELECT tag FROM machine_tags t WHERE t.machine_id = m.id ORDER BY tag)) AS tags_json,
  d.store_path AS d_store_path, d.cache_url AS d_cache_url, d.revision AS d_revision,
  d.rollout_id AS d_rollout_id, d.set_by AS d_set_by, d.set_at AS d_set_at,
  rm.rollout_id AS ar_rollout_id, rm.batch_index AS ar_batch_index, r.status AS ar_status
FROM machines m
LEFT JOIN desired_generations d ON d.machine_id = m.id
LEFT JOIN rollout_machines rm ON rm.machine_id = m.id AND rm.active = 1
LEFT JOIN rollouts r ON r.id = rm.rollout_id`;

function toMachine(row: MachineRow): MachineRecord {
  return {
    id: row.id,
    lifecycle: row.lifecycle,
    tags: JSON.parse(row.tags_json) as string[],
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

export function getMachine(sql: Sql, id: string): MachineRecord | undefined {
  const row = sql.get<MachineRow>(`${MACHINE_SELECT} WHERE m.id = ?`, id);
  return row ? toMachine(row) : undefined;
}

export function getMachines(sql: Sql, ids: readonly string[]): MachineRecord[] {
  return sql
    .all<MachineRow>(
      `${MACHINE_SELECT} WHERE m.id IN (SELECT value FROM json_each(?)) ORDER BY m.id`,
      jsonList(ids),
    )
    .map(toMachine);
}

export function listMachines(sql: Sql, filter: MachineFilter): MachineRecord[] {
  const where: string[] = [];
  const params: unknown[] = [];
  const tags = [...new Set(filter.tags)];
  if (tags.length > 0) {
    if (filter.match === "all") {
      where.push(
        "m.id IN (SELECT machine_id FROM machine_tags WHERE tag IN (SELECT value FROM json_each(?)) GROUP BY machine_id HAVING count(*) = ?)",
      );
      params.push(jsonList(tags), tags.length);
    } else {
      where.push(
        "EXISTS (SELECT 1 FROM machine_tags t WHERE t.machine_id = m.id AND t.tag IN (SELECT value FROM json_each(?)))",
      );
      params.push(jsonList(tags));
    }
  }
  if (filter.lifecycle) {
    where.push("m.lifecycle = ?");
    params.push(filter.lifecycle);
  }
  if (filter.afterId !== null) {
    where.push("m.id > ?");
    params.push(filter.afterId);
  }
  const clause = where.length ? ` WHERE ${where.join(" AND ")}` : "";
  params.push(filter.limit);
  return sql.all<MachineRow>(`${MACHINE_SELECT}${clause} ORDER BY m.id LIMIT ?`, ...params).map(toMachine);
}

function currentTags(sql: Sql, id: string): string[] {
  return sql
    .all<{ tag: string }>("SELECT tag FROM machine_tags WHERE machine_id = ? ORDER BY tag", id)
    .map((r) => r.tag);
}

/** Replaces a machine's tags; returns the old list when they changed. */
function replaceTags(sql: Sql, id: string, tags: readonly string[]): string[] | null {
  const next = [...new Set(tags)].sort();
  const old = currentTags(sql, id);
  if (old.length === next.length && old.every((t, i) => t === next[i])) return null;
  sql.run("DELETE FROM machine_tags WHERE machine_id = ?", id);
  for (const tag of next) sql.run("INSERT INTO machine_tags (machine_id, tag) VALUES (?, ?)", id, tag);
  return old;
}

/**
 * Makes sure an agent that authenticated as `id` has a machine row: registers it (ACTIVE) on
 * first contact and moves a pre-registered (PENDING) machine to ACTIVE. Audited, because both
 * change what rollouts may target.
 */
function ensureAgentMachine(sql: Sql, id: string, now: number): boolean {
  const actor = `machine:${id}`;
  const row = sql.get<{ lifecycle: Lifecycle }>("SELECT lifecycle FROM machines WHERE id = ?", id);
  if (!row) {
    sql.run("INSERT INTO machines (id, lifecycle, registered_at) VALUES (?, 'active', ?)", id, now);
    sql.audit(now, actor, "machine.register", id, "registered on first contact (lifecycle active)");
    return true;
  }
  const next = lifecycleAfterContact(row.lifecycle);
  if (next !== row.lifecycle) {
    sql.run("UPDATE machines SET lifecycle = ? WHERE id = ?", next, id);
    sql.audit(now, actor, "machine.lifecycle", id, `${row.lifecycle} -> ${next} (first contact)`);
  }
  return false;
}

function syncAgentTags(sql: Sql, id: string, tags: readonly string[] | null, now: number): void {
  if (tags === null) return;
  const old = replaceTags(sql, id, tags);
  if (old) {
    sql.audit(
      now,
      `machine:${id}`,
      "machine.tags",
      id,
      `${old.join(",") || "(none)"} -> ${[...new Set(tags)].sort().join(",") || "(none)"}`,
    );
  }
}

export function recordHello(sql: Sql, input: HelloInput, now: number): AgentContactResult {
  return sql.tx(() => {
    const registered = ensureAgentMachine(sql, input.machineId, now);
    syncAgentTags(sql, input.machineId, input.tags, now);
    sql.run(
      `UPDATE machines SET last_seen = ?,
         current_generation = CASE WHEN ? = '' THEN current_generation ELSE ? END,
         agent_version = CASE WHEN ? = '' THEN agent_version ELSE ? END
       WHERE id = ?`,
      now,
      input.currentGeneration,
      input.currentGeneration,
      input.agentVersion,
      input.agentVersion,
      input.machineId,
    );
    return { machine: getMachine(sql, input.machineId)!, registered };
  });
}

export function recordReport(sql: Sql, input: ReportInput, now: number): AgentContactResult {
  return sql.tx(() => {
    const registered = ensureAgentMachine(sql, input.machineId, now);
    syncAgentTags(sql, input.machineId, input.tags, now);
    sql.run(
      `INSERT INTO reports (machine_id, received_at, seq, current_generation, desired_generation, desired_revision,
         outcome, success, message, deployment_id, agent_time)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      input.machineId,
      now,
      nextSeq(sql),
      input.currentGeneration,
      input.desiredGeneration,
      input.desiredRevision,
      input.outcome,
      input.success ? 1 : 0,
      input.message,
      input.deploymentId,
      input.agentTime,
    );
    const hasOutcome = input.outcome !== 0 ? 1 : 0;
    sql.run(
      `UPDATE machines SET last_seen = ?, last_report_at = ?, uptime_seconds = ?,
         current_generation = CASE WHEN ? = '' THEN current_generation ELSE ? END,
         agent_version = CASE WHEN ? = '' THEN agent_version ELSE ? END,
         last_outcome = CASE WHEN ? THEN ? ELSE last_outcome END,
         last_message = CASE WHEN ? THEN ? ELSE last_message END
       WHERE id = ?`,
      now,
      now,
      input.uptimeSeconds,
      input.currentGeneration,
      input.currentGeneration,
      input.agentVersion,
      input.agentVersion,
      hasOutcome,
      input.outcome,
      hasOutcome,
      input.message,
      input.machineId,
    );
    return { machine: getMachine(sql, input.machineId)!, registered };
  });
}

export function recordHealth(sql: Sql, input: HealthInput, now: number): AgentContactResult {
  return sql.tx(() => {
    const registered = ensureAgentMachine(sql, input.machineId, now);
    const failing = input.results.filter((r) => !r.passed).map((r) => r.name);
    // A report claiming all_passed with a failing result in it is not trusted as passing.
    const allPassed = input.allPassed && failing.length === 0;
    sql.run(
      `INSERT INTO health_reports (machine_id, received_at, seq, generation, all_passed, results, post_apply, deployment_id, agent_time)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      input.machineId,
      now,
      nextSeq(sql),
      input.generation,
      allPassed ? 1 : 0,
      JSON.stringify(input.results),
      input.postApply ? 1 : 0,
      input.deploymentId,
      input.agentTime,
    );
    sql.run(
      `UPDATE machines SET last_seen = ?, health_generation = ?, health_all_passed = ?, health_at = ?, health_failing = ?
       WHERE id = ?`,
      now,
      input.generation,
      allPassed ? 1 : 0,
      now,
      JSON.stringify(failing),
      input.machineId,
    );
    return { machine: getMachine(sql, input.machineId)!, registered };
  });
}

export function desiredFor(
  sql: Sql,
  machineId: string,
): { desired: DesiredRecord | null; inActiveRollout: boolean } {
  const row = sql.get<{
    store_path: string;
    cache_url: string;
    revision: number;
    rollout_id: string;
    set_by: string;
    set_at: number;
  }>("SELECT * FROM desired_generations WHERE machine_id = ?", machineId);
  const active = sql.get(
    "SELECT 1 AS x FROM rollout_machines WHERE machine_id = ? AND active = 1",
    machineId,
  );
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

export function registerMachine(
  sql: Sql,
  input: { id: string; tags: string[]; lifecycle: Lifecycle | null },
  actor: string,
  now: number,
): { machine: MachineRecord; created: boolean } {
  return sql.tx(() => {
    const existing = sql.get<{ lifecycle: Lifecycle }>(
      "SELECT lifecycle FROM machines WHERE id = ?",
      input.id,
    );
    if (!existing) {
      const lifecycle = input.lifecycle ?? "pending";
      sql.run(
        "INSERT INTO machines (id, lifecycle, registered_at) VALUES (?, ?, ?)",
        input.id,
        lifecycle,
        now,
      );
      replaceTags(sql, input.id, input.tags);
      sql.audit(
        now,
        actor,
        "machine.register",
        input.id,
        `lifecycle ${lifecycle}, tags ${[...new Set(input.tags)].sort().join(",") || "(none)"}`,
      );
      return { machine: getMachine(sql, input.id)!, created: true };
    }
    if (input.lifecycle !== null && input.lifecycle !== existing.lifecycle) {
      const problem = lifecycleTransitionProblem(existing.lifecycle, input.lifecycle);
      if (problem) throw new ConflictError(`machine ${input.id}: ${problem}`);
      sql.run("UPDATE machines SET lifecycle = ? WHERE id = ?", input.lifecycle, input.id);
      sql.audit(now, actor, "machine.lifecycle", input.id, `${existing.lifecycle} -> ${input.lifecycle}`);
    }
    const old = replaceTags(sql, input.id, input.tags);
    if (old)
      sql.audit(
        now,
        actor,
        "machine.tags",
        input.id,
        `${old.join(",") || "(none)"} -> ${[...new Set(input.tags)].sort().join(",") || "(none)"}`,
      );
    return { machine: getMachine(sql, input.id)!, created: false };
  });
}

export function setLifecycle(
  sql: Sql,
  id: string,
  lifecycle: Lifecycle,
  actor: string,
  now: number,
): { machine: MachineRecord; changed: boolean } {
  return sql.tx(() => {
    const row = sql.get<{ lifecycle: Lifecycle }>("SELECT lifecycle FROM machines WHERE id = ?", id);
    if (!row) throw new NotFoundError(`machine ${id} is not registered`);
    const problem = lifecycleTransitionProblem(row.lifecycle, lifecycle);
    if (problem) throw new ConflictError(`machine ${id}: ${problem}`);
    if (row.lifecycle === lifecycle) return { machine: getMachine(sql, id)!, changed: false };
    sql.run("UPDATE machines SET lifecycle = ? WHERE id = ?", lifecycle, id);
    sql.audit(now, actor, "machine.lifecycle", id, `${row.lifecycle} -> ${lifecycle}`);
    return { machine: getMachine(sql, id)!, changed: true };
  });
}

function refuseIfInActiveRollout(sql: Sql, machineId: string, what: string): void {
  const row = sql.get<{ rollout_id: string; status: string }>(
    `SELECT rm.rollout_id, r.status FROM rollout_machines rm JOIN rollouts r ON r.id = rm.rollout_id
     WHERE rm.machine_id = ? AND rm.active = 1`,
    machineId,
  );
  if (row) {
    throw new ConflictError(
      `cannot ${what} of machine ${machineId}: it is in active rollout ${row.rollout_id} (${row.status}); ` +
        "cancel that rollout (or let it finish) first",
    );
  }
}

/** Writes a desired generation with a fresh revision (no checks; callers hold the transaction). */
export function writeDesired(
  sql: Sql,
  machineId: string,
  storePath: string,
  cacheUrl: string,
  rolloutId: string,
  setBy: string,
  now: number,
): DesiredRecord {
  const revision = sql.nextRevision(now);
  sql.run(
    `INSERT INTO desired_generations (machine_id, store_path, cache_url, revision, rollout_id, set_by, set_at)
     VALUES (?, ?, ?, ?, ?, ?, ?)
     ON CONFLICT (machine_id) DO UPDATE SET store_path = excluded.store_path, cache_url = excluded.cache_url,
       revision = excluded.revision, rollout_id = excluded.rollout_id, set_by = excluded.set_by, set_at = excluded.set_at`,
    machineId,
    storePath,
    cacheUrl,
    revision,
    rolloutId,
    setBy,
    now,
  );
  return { storePath, cacheUrl, revision, rolloutId, setBy, setAt: now };
}

export function setDesired(
  sql: Sql,
  input: { machineId: string; storePath: string; cacheUrl: string },
  actor: string,
  now: number,
): { machine: MachineRecord; change: DesiredChange } {
  return sql.tx(() => {
    if (!sql.get("SELECT 1 AS x FROM machines WHERE id = ?", input.machineId))
      throw new NotFoundError(
        `machine ${input.machineId} is not registered; register it or let its agent report first`,
      );
    refuseIfInActiveRollout(sql, input.machineId, "set the desired generation");
    const desired = writeDesired(sql, input.machineId, input.storePath, input.cacheUrl, "", actor, now);
    sql.audit(
      now,
      actor,
      "desired.set",
      input.machineId,
      `${input.storePath}${input.cacheUrl ? ` from ${input.cacheUrl}` : ""} (revision ${desired.revision})`,
    );
    return { machine: getMachine(sql, input.machineId)!, change: { machineId: input.machineId, desired } };
  });
}

export function clearDesired(
  sql: Sql,
  machineId: string,
  actor: string,
  now: number,
): { machine: MachineRecord; change: DesiredChange | null } {
  return sql.tx(() => {
    if (!sql.get("SELECT 1 AS x FROM machines WHERE id = ?", machineId))
      throw new NotFoundError(`machine ${machineId} is not registered`);
    refuseIfInActiveRollout(sql, machineId, "clear the desired generation");
    const existing = sql.get<{ store_path: string }>(
      "SELECT store_path FROM desired_generations WHERE machine_id = ?",
      machineId,
    );
    if (!existing) return { machine: getMachine(sql, machineId)!, change: null };
    sql.run("DELETE FROM desired_generations WHERE machine_id = ?", machineId);
    sql.audit(now, actor, "desired.clear", machineId, `was ${existing.store_path}`);
    return { machine: getMachine(sql, machineId)!, change: { machineId, desired: null } };
  });
}
