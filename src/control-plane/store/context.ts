/**
 * What every store module works with: a Kysely handle (the whole database, or one transaction)
 * and which backend it talks to, plus the few helpers all modules share. Queries are written once
 * in Kysely; the handful of places where the dialects differ ask `ctx.kind`.
 */
import { type Compilable, CompiledQuery, type Kysely, sql } from "kysely";
import type { Tables } from "./tables.js";

export type BackendKind = "sqlite" | "postgres";

export interface Ctx {
  q: Kysely<Tables>;
  kind: BackendKind;
}

/** Bound parameters per statement stay well below both backends' limits. */
const CHUNK = 500;

export function chunks<T>(values: readonly T[], size = CHUNK): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < values.length; i += size) out.push(values.slice(i, i + size));
  return out;
}

export async function audit(
  ctx: Ctx,
  now: number,
  actor: string,
  action: string,
  target: string,
  detail: string,
): Promise<void> {
  await ctx.q.insertInto("audit_events").values({ timestamp: now, actor, action, target, detail }).execute();
}

/**
 * Hands out the next desired-generation revision: strictly increasing, and never below the
 * current time in milliseconds, so even a database restored from an old backup cannot hand out
 * a revision an agent has already seen (and may have quarantined a path under).
 */
export async function nextRevision(ctx: Ctx, now: number): Promise<number> {
  const at = Math.floor(now);
  const row = await ctx.q
    .updateTable("revision_counter")
    .set({ value: sql<number>`CASE WHEN value + 1 > ${at} THEN value + 1 ELSE ${at} END` })
    .where("id", "=", 1)
    .returning("value")
    .executeTakeFirstOrThrow();
  return Number(row.value);
}

/**
 * The next position in the order of agent evidence (reports, health reports) and batch starts.
 * The UPDATE takes the counter row's write lock, held until the transaction commits (SQLite:
 * the database write lock; PostgreSQL: the row lock), so a transaction holding a larger position
 * commits after every one holding a smaller position: positions follow commit order — what
 * "received after the batch started" means — whatever the wall clock does, and across replicas.
 */
export async function nextSeq(ctx: Ctx): Promise<number> {
  const row = await ctx.q
    .updateTable("evidence_sequence")
    .set({ value: sql<number>`value + 1` })
    .where("id", "=", 1)
    .returning("value")
    .executeTakeFirstOrThrow();
  return Number(row.value);
}

/** Stands for the one parameter of a cached query; never a real value (it holds a NUL). */
const PARAM = "\u0000nixfleet-param";
const compiled = new Map<string, CompiledQuery>();

/**
 * Runs a hot query compiled once per backend: building a Kysely query with joins costs several
 * times more than running it on SQLite (~0.5 ms against ~0.1 ms for the machine read every agent
 * contact does twice). `build` receives a placeholder for the query's one varying parameter.
 */
export async function cachedQuery<R>(
  ctx: Ctx,
  name: string,
  build: (param: string) => Compilable<R>,
  value: unknown,
): Promise<R[]> {
  const key = `${ctx.kind}:${name}`;
  let query = compiled.get(key);
  if (!query) {
    query = build(PARAM).compile();
    compiled.set(key, query);
  }
  const parameters = query.parameters.map((p) => (p === PARAM ? value : p));
  return (await ctx.q.executeQuery(CompiledQuery.raw(query.sql, parameters))).rows as R[];
}
