/**
 * API keys (stored as SHA-256 hashes only) and the audit log.
 */
import { audit, type Ctx } from "./context.js";
import { AlreadyExistsError, ConflictError, NotFoundError } from "./errors.js";
import type { ApiKeyRecord, AuditRecord, Role } from "./records.js";
import type { AuditFilter } from "./repository.js";

const KEY_COLUMNS = ["id", "name", "role", "created_at", "created_by", "last_used_at", "revoked_at"] as const;

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

export async function createApiKey(
  ctx: Ctx,
  input: { id: string; name: string; role: Role; hash: string },
  actor: string,
  now: number,
): Promise<ApiKeyRecord> {
  const taken = await ctx.q
    .selectFrom("api_keys")
    .select("id")
    .where("name", "=", input.name)
    .where("revoked_at", "is", null)
    .executeTakeFirst();
  if (taken)
    throw new AlreadyExistsError(
      `an API key named ${input.name} already exists; revoke it first or pick another name`,
    );
  await ctx.q
    .insertInto("api_keys")
    .values({
      id: input.id,
      name: input.name,
      role: input.role,
      key_hash: input.hash,
      created_at: now,
      created_by: actor,
      last_used_at: null,
      revoked_at: null,
    })
    .execute();
  await audit(ctx, now, actor, "apikey.create", input.id, `name ${input.name}, role ${input.role}`);
  return toKey(
    await ctx.q
      .selectFrom("api_keys")
      .select(KEY_COLUMNS)
      .where("id", "=", input.id)
      .executeTakeFirstOrThrow(),
  );
}

export async function listApiKeys(ctx: Ctx, includeRevoked: boolean): Promise<ApiKeyRecord[]> {
  let query = ctx.q.selectFrom("api_keys").select(KEY_COLUMNS);
  if (!includeRevoked) query = query.where("revoked_at", "is", null);
  return (await query.orderBy("created_at").orderBy("id").execute()).map(toKey);
}

export async function revokeApiKey(
  ctx: Ctx,
  key: string,
  callerId: string | null,
  actor: string,
  now: number,
): Promise<ApiKeyRecord> {
  const row =
    (await ctx.q.selectFrom("api_keys").select(KEY_COLUMNS).where("id", "=", key).executeTakeFirst()) ??
    (await ctx.q
      .selectFrom("api_keys")
      .select(KEY_COLUMNS)
      .where("name", "=", key)
      .where("revoked_at", "is", null)
      .executeTakeFirst());
  if (!row) throw new NotFoundError(`no API key with id or name ${key}`);
  if (row.id === callerId)
    throw new ConflictError(`API key ${row.name} cannot revoke itself; use another admin key`);
  if (row.revoked_at !== null)
    throw new ConflictError(
      `API key ${row.name} (${row.id}) was already revoked at ${new Date(row.revoked_at).toISOString()}`,
    );
  await ctx.q.updateTable("api_keys").set({ revoked_at: now }).where("id", "=", row.id).execute();
  await audit(ctx, now, actor, "apikey.revoke", row.id, `name ${row.name}, role ${row.role}`);
  return toKey({ ...row, revoked_at: now });
}

export async function authenticateApiKey(
  ctx: Ctx,
  hash: string,
  now: number,
): Promise<ApiKeyRecord | undefined> {
  const row = await ctx.q
    .selectFrom("api_keys")
    .select(KEY_COLUMNS)
    .where("key_hash", "=", hash)
    .where("revoked_at", "is", null)
    .executeTakeFirst();
  if (!row) return undefined;
  await ctx.q.updateTable("api_keys").set({ last_used_at: now }).where("id", "=", row.id).execute();
  return toKey({ ...row, last_used_at: now });
}

export async function listAudit(ctx: Ctx, filter: AuditFilter): Promise<AuditRecord[]> {
  let query = ctx.q
    .selectFrom("audit_events")
    .select(["id", "timestamp", "actor", "action", "target", "detail"]);
  if (filter.actor !== null) query = query.where("actor", "=", filter.actor);
  if (filter.action !== null) query = query.where("action", "=", filter.action);
  if (filter.target !== null) query = query.where("target", "=", filter.target);
  if (filter.since !== null) query = query.where("timestamp", ">=", filter.since);
  if (filter.beforeId !== null) query = query.where("id", "<", filter.beforeId);
  return query.orderBy("id", "desc").limit(filter.limit).execute();
}
