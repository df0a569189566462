/**
 * Releases: immutable host → store path manifests.
 */
import { audit, type Ctx, chunks } from "./context.js";
import { ConflictError, NotFoundError } from "./errors.js";
import type { ReleaseRecord } from "./records.js";
import type { NewRelease, ReleaseFilter } from "./repository.js";
import type { ReleasesTable } from "./tables.js";

async function toRelease(ctx: Ctx, row: ReleasesTable): Promise<ReleaseRecord> {
  const entries = await ctx.q
    .selectFrom("release_entries")
    .select(["hostname", "store_path", "platform", "tags"])
    .where("release_id", "=", row.id)
    .orderBy("hostname")
    .execute();
  return {
    id: row.id,
    entries: entries.map((e) => ({
      hostname: e.hostname,
      storePath: e.store_path,
      platform: e.platform,
      tags: JSON.parse(e.tags) as string[],
    })),
    cacheUrl: row.cache_url,
    flakeRef: row.flake_ref,
    flakeRev: row.flake_rev,
    createdAt: row.created_at,
    createdBy: row.created_by,
    hostCount: row.host_count,
  };
}

export async function getRelease(ctx: Ctx, id: string): Promise<ReleaseRecord | undefined> {
  const row = await ctx.q.selectFrom("releases").selectAll().where("id", "=", id).executeTakeFirst();
  return row ? toRelease(ctx, row) : undefined;
}

export async function createRelease(
  ctx: Ctx,
  input: NewRelease,
  actor: string,
  now: number,
): Promise<ReleaseRecord> {
  await ctx.q
    .insertInto("releases")
    .values({
      id: input.id,
      cache_url: input.cacheUrl,
      flake_ref: input.flakeRef,
      flake_rev: input.flakeRev,
      host_count: input.entries.length,
      created_at: now,
      created_by: actor,
    })
    .execute();
  for (const part of chunks(input.entries)) {
    await ctx.q
      .insertInto("release_entries")
      .values(
        part.map((e) => ({
          release_id: input.id,
          hostname: e.hostname,
          store_path: e.storePath,
          platform: e.platform,
          tags: JSON.stringify([...new Set(e.tags)].sort()),
        })),
      )
      .execute();
  }
  await audit(
    ctx,
    now,
    actor,
    "release.create",
    input.id,
    `${input.entries.length} hosts${input.flakeRev ? `, flake rev ${input.flakeRev}` : ""}`,
  );
  return (await getRelease(ctx, input.id))!;
}

export async function listReleases(ctx: Ctx, filter: ReleaseFilter): Promise<ReleaseRecord[]> {
  let query = ctx.q.selectFrom("releases").selectAll();
  if (filter.host !== null) {
    const host = filter.host;
    query = query.where("id", "in", (eb) =>
      eb.selectFrom("release_entries").select("release_id").where("hostname", "=", host),
    );
  }
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
  const out: ReleaseRecord[] = [];
  for (const r of rows) out.push(await toRelease(ctx, r));
  return out;
}

export async function deleteRelease(ctx: Ctx, id: string, actor: string, now: number): Promise<void> {
  const exists = await ctx.q.selectFrom("releases").select("id").where("id", "=", id).executeTakeFirst();
  if (!exists) throw new NotFoundError(`release ${id} does not exist`);
  const users = await ctx.q
    .selectFrom("rollouts")
    .select("id")
    .where("release_id", "=", id)
    .orderBy("created_at")
    .limit(6)
    .execute();
  if (users.length > 0) {
    const names = users.slice(0, 5).map((u) => u.id);
    throw new ConflictError(
      `release ${id} is referenced by rollout${names.length > 1 ? "s" : ""} ${names.join(", ")}${users.length > 5 ? ", …" : ""}; ` +
        "releases a rollout used are kept as its record",
    );
  }
  await ctx.q.deleteFrom("releases").where("id", "=", id).execute();
  await audit(ctx, now, actor, "release.delete", id, "");
}
