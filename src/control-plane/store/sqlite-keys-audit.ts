/**
 * API keys (stored as SHA-256 hashes only) and the audit log.
 */
import { AlreadyExistsError, ConflictError, NotFoundError } from "./errors.js";
import type { ApiKeyRecord, AuditRecord, Role } from "./records.js";
import type { AuditFilter } from "./repository.js";
import type { Sql } from "./sql.js";

interface KeyRow {
  id: string;
  name: string;
  role: Role;
  created_at: number;
  created_by: string;
  last_used_at: number | null;
  revoked_at: number | null;
}

function toKey(row: KeyRow): ApiKeyRecord {
  return {
    id: row.id,
    name: row.name,
    role: row.role,
    createdAt: row.created_at,
    createdBy: row.created_by,
    lastUsedAt: row.last_used_at,
    revokedAt: row.revoked_at,
  };
}

const KEY_COLUMNS = "id, name, role, created_at, created_by, last_used_at, revoked_at";

export function createApiKey(
  sql: Sql,
  input: { id: string; name: string; role: Role; hash: string },
  actor: string,
  now: number,
): ApiKeyRecord {
  return sql.tx(() => {
    if (sql.get("SELECT 1 AS x FROM api_keys WHERE name = ? AND revoked_at IS NULL", input.name))
      throw new AlreadyExistsError(
        `an API key named ${input.name} already exists; revoke it first or pick another name`,
      );
    sql.run(
      "INSERT INTO api_keys (id, name, role, key_hash, created_at, created_by) VALUES (?, ?, ?, ?, ?, ?)",
      input.id,
      input.name,
      input.role,
      input.hash,
      now,
      actor,
    );
    sql.audit(now, actor, "apikey.create", input.id, `name ${input.name}, role ${input.role}`);
    return toKey(sql.get<KeyRow>(`SELECT ${KEY_COLUMNS} FROM api_keys WHERE id = ?`, input.id)!);
  });
}

export function listApiKeys(sql: Sql, includeRevoked: boolean): ApiKeyRecord[] {
  const clause = includeRevoked ? "" : " WHERE revoked_at IS NULL";
  return sql.all<KeyRow>(`SELECT ${KEY_COLUMNS} FROM api_keys${clause} ORDER BY created_at, id`).map(toKey);
}

export function revokeApiKey(
  sql: Sql,
  key: string,
  callerId: string | null,
  actor: string,
  now: number,
): ApiKeyRecord {
  return sql.tx(() => {
    const row =
      sql.get<KeyRow>(`SELECT ${KEY_COLUMNS} FROM api_keys WHERE id = ?`, key) ??
      sql.get<KeyRow>(`SELECT ${KEY_COLUMNS} FROM api_keys WHERE name = ? AND revoked_at IS NULL`, key);
    if (!row) throw new NotFoundError(`no API key with id or name ${key}`);
    if (row.id === callerId)
      throw new ConflictError(`API key ${row.name} cannot revoke itself; use another admin key`);
    if (row.revoked_at !== null)
      throw new ConflictError(
        `API key ${row.name} (${row.id}) was already revoked at ${new Date(row.revoked_at).toISOString()}`,
      );
    sql.run("UPDATE api_keys SET revoked_at = ? WHERE id = ?", now, row.id);
    sql.audit(now, actor, "apikey.revoke", row.id, `name ${row.name}, role ${row.role}`);
    return toKey({ ...row, revoked_at: now });
  });
}

export function authenticateApiKey(sql: Sql, hash: string, now: number): ApiKeyRecord | undefined {
  const row = sql.get<KeyRow>(
    `SELECT ${KEY_COLUMNS} FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL`,
    hash,
  );
  if (!row) return undefined;
  sql.run("UPDATE api_keys SET last_used_at = ? WHERE id = ?", now, row.id);
  return toKey({ ...row, last_used_at: now });
}

export function listAudit(sql: Sql, filter: AuditFilter): AuditRecord[] {
  const where: string[] = [];
  const params: unknown[] = [];
  for (const [column, value] of [
    ["actor", filter.actor],
    ["action", filter.action],
    ["target", filter.target],
  ] as const) {
    if (value !== null) {
      where.push(`${column} = ?`);
      params.push(value);
    }
  }
  if (filter.since !== null) {
    where.push("timestamp >= ?");
    params.push(filter.since);
  }
  if (filter.beforeId !== null) {
    where.push("id < ?");
    params.push(filter.beforeId);
  }
  params.push(filter.limit);
  const clause = where.length ? ` WHERE ${where.join(" AND ")}` : "";
  return sql.all<AuditRecord>(
    `SELECT id, timestamp, actor, action, target, detail FROM audit_events${clause} ORDER BY id DESC LIMIT ?`,
    ...params,
  );
}
