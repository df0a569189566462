/**
 * Releases: immutable host → store path manifests.
 */
import { ConflictError, NotFoundError } from "./errors.js";
import type { ReleaseEntryRecord, ReleaseRecord } from "./records.js";
import type { NewRelease, ReleaseFilter } from "./repository.js";
import type { Sql } from "./sql.js";

interface ReleaseRow {
  id: string;
  cache_url: string;
  flake_ref: string;
  flake_rev: string;
  host_count: number;
  created_at: number;
  created_by: string;
}

function entriesOf(sql: Sql, id: string): ReleaseEntryRecord[] {
  return sql
    .all<{ hostname: string; store_path: string; platform: string; tags: string }>(
      "SELECT hostname, store_path, platform, tags FROM release_entries WHERE release_id = ? ORDER BY hostname",
      id,
    )
    .map((e) => ({
      hostname: e.hostname,
      storePath: e.store_path,
      platform: e.platform,
      tags: JSON.parse(e.tags),
    }));
}

function toRelease(sql: Sql, row: ReleaseRow): ReleaseRecord {
  return {
    id: row.id,
    entries: entriesOf(sql, row.id),
    cacheUrl: row.cache_url,
    flakeRef: row.flake_ref,
    flakeRev: row.flake_rev,
    createdAt: row.created_at,
    createdBy: row.created_by,
    hostCount: row.host_count,
  };
}

export function getRelease(sql: Sql, id: string): ReleaseRecord | undefined {
  const row = sql.get<ReleaseRow>("SELECT * FROM releases WHERE id = ?", id);
  return row ? toRelease(sql, row) : undefined;
}

export function createRelease(sql: Sql, input: NewRelease, actor: string, now: number): ReleaseRecord {
  return sql.tx(() => {
    sql.run(
      "INSERT INTO releases (id, cache_url, flake_ref, flake_rev, host_count, created_at, created_by) VALUES (?, ?, ?, ?, ?, ?, ?)",
      input.id,
      input.cacheUrl,
      input.flakeRef,
      input.flakeRev,
      input.entries.length,
      now,
      actor,
    );
    for (const e of input.entries) {
      sql.run(
        "INSERT INTO release_entries (release_id, hostname, store_path, platform, tags) VALUES (?, ?, ?, ?, ?)",
        input.id,
        e.hostname,
        e.storePath,
        e.platform,
        JSON.stringify([...new Set(e.tags)].sort()),
      );
    }
    sql.audit(
      now,
      actor,
      "release.create",
      input.id,
      `${input.entries.length} hosts${input.flakeRev ? `, flake rev ${input.flakeRev}` : ""}`,
    );
    return getRelease(sql, input.id)!;
  });
}

export function listReleases(sql: Sql, filter: ReleaseFilter): ReleaseRecord[] {
  const where: string[] = [];
  const params: unknown[] = [];
  if (filter.host !== null) {
    where.push("id IN (SELECT release_id FROM release_entries WHERE hostname = ?)");
    params.push(filter.host);
  }
  if (filter.before) {
    where.push("(created_at < ? OR (created_at = ? AND id < ?))");
    params.push(filter.before.createdAt, filter.before.createdAt, filter.before.id);
  }
  params.push(filter.limit);
  const clause = where.length ? ` WHERE ${where.join(" AND ")}` : "";
  return sql
    .all<ReleaseRow>(`SELECT * FROM releases${clause} ORDER BY created_at DESC, id DESC LIMIT ?`, ...params)
    .map((r) => toRelease(sql, r));
}

export function deleteRelease(sql: Sql, id: string, actor: string, now: number): void {
  sql.tx(() => {
    if (!sql.get("SELECT 1 AS x FROM releases WHERE id = ?", id))
      throw new NotFoundError(`release ${id} does not exist`);
    const users = sql.all<{ id: string }>(
      "SELECT id FROM rollouts WHERE release_id = ? ORDER BY created_at LIMIT 6",
      id,
    );
    if (users.length > 0) {
      const names = users.slice(0, 5).map((u) => u.id);
      throw new ConflictError(
        `release ${id} is referenced by rollout${names.length > 1 ? "s" : ""} ${names.join(", ")}${users.length > 5 ? ", …" : ""}; ` +
          "releases a rollout used are kept as its record",
      );
    }
    sql.run("DELETE FROM releases WHERE id = ?", id);
    sql.audit(now, actor, "release.delete", id, "");
  });
}
