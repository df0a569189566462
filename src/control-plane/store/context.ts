/**
 * What every store module works with: a Kysely handle (the whole database, or one transaction)
 * and which backend it talks to, plus the few helpers all modules share. Queries are written once
 * in Kysely; the handful of places where the dialects differ ask `ctx.kind`.
 */
import { type Compilable, CompiledQuery, type Kysely, type QueryResult, type RawBuilder, sql } from "kysely";
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
  return nextRevisions(ctx, now, 1);
}

/**
 * Takes `count` consecutive revisions at once (for a batch start): returns the first; the others
 * follow it by one each. The same rule as nextRevision: strictly increasing, never below now.
 */
export async function nextRevisions(ctx: Ctx, now: number, count: number): Promise<number> {
  const at = Math.floor(now);
  const [row] = await cachedRows(
    ctx,
    "next-revisions",
    (p) =>
      ctx.q
        .updateTable("revision_counter")
        .set({
          value: sql<number>`CASE WHEN value + 1 > ${p[0]} THEN value + ${p[1]} ELSE CAST(${p[0]} AS BIGINT) + ${p[1]} - 1 END`,
        })
        .where("id", "=", 1)
        .returning("value"),
    [at, count],
  );
  return Number(row!.value) - count + 1;
}

/**
 * The next position in the order of agent evidence (reports, health reports) and batch starts.
 * The UPDATE takes the counter row's write lock, held until the transaction commits (SQLite:
 * the database write lock; PostgreSQL: the row lock), so a transaction holding a larger position
 * commits after every one holding a smaller position: positions follow commit order — what
 * "received after the batch started" means — whatever the wall clock does, and across replicas.
 */
export async function nextSeq(ctx: Ctx): Promise<number> {
  return nextSeqs(ctx, 1);
}

/** Takes `count` consecutive positions at once (a group of reports): returns the first. */
export async function nextSeqs(ctx: Ctx, count: number): Promise<number> {
  const [row] = await cachedRows(
    ctx,
    "next-seqs",
    (p) =>
      ctx.q
        .updateTable("evidence_sequence")
        .set({ value: sql<number>`value + ${p[0]}` })
        .where("id", "=", 1)
        .returning("value"),
    [count],
  );
  return Number(row!.value) - count + 1;
}

/** Stand for a cached query's parameters; never real values (they hold a NUL). */
const PLACEHOLDERS = Array.from({ length: 16 }, (_, i) => `\u0000nixfleet-param-${i}`);
const PLACEHOLDER_INDEX = new Map(PLACEHOLDERS.map((p, i) => [p, i]));
const compiled = new Map<string, CompiledQuery>();

/** What `build` receives: sixteen placeholders, each typed to fit any column. */
export type Placeholders = readonly [
  never,
  never,
  never,
  never,
  never,
  never,
  never,
  never,
  never,
  never,
  never,
  never,
  never,
  never,
  never,
  never,
];

/**
 * Runs a hot query compiled once per backend: building a Kysely query costs several times more
 * than running it on SQLite (~0.5 ms against ~0.1 ms for the machine read every agent contact
 * does), so the statements every report runs are built once. `build` receives placeholders for
 * the query's varying parameters (typed `never` so they fit any column); `values[i]` replaces
 * `p[i]` on each run. The query's shape must not depend on the values.
 */
export async function cachedQuery<R>(
  ctx: Ctx,
  name: string,
  build: (p: Placeholders) => Compilable<R>,
  values: readonly unknown[],
): Promise<QueryResult<R>> {
  const key = `${ctx.kind}:${name}`;
  let query = compiled.get(key);
  if (!query) {
    query = build(PLACEHOLDERS as unknown as Placeholders).compile();
    compiled.set(key, query);
  }
  const parameters = query.parameters.map((p) => {
    const i = typeof p === "string" ? PLACEHOLDER_INDEX.get(p) : undefined;
    return i === undefined ? p : values[i];
  });
  return ctx.q.executeQuery<R>(CompiledQuery.raw(query.sql, parameters));
}

/** The rows of a cached query (see cachedQuery). */
export async function cachedRows<R>(
  ctx: Ctx,
  name: string,
  build: (p: Placeholders) => Compilable<R>,
  values: readonly unknown[],
): Promise<R[]> {
  return (await cachedQuery(ctx, name, build, values)).rows;
}

/**
 * A list of values as one bound parameter (JSON), for `IN (…)` over any number of values in one
 * statement: Kysely builds a bound parameter per list element, which costs more than running the
 * query once lists reach thousands, and both backends cap parameters per statement.
 */
export function jsonList(ctx: Ctx, values: readonly (string | number)[]): RawBuilder<string> {
  const json = JSON.stringify(values);
  return ctx.kind === "sqlite"
    ? sql<string>`(SELECT value FROM json_each(${json}))`
    : sql<string>`(SELECT jsonb_array_elements_text(CAST(${json} AS jsonb)))`;
}

/**
 * Rows as one bound parameter (a JSON array of arrays), as a table `alias` with the named columns,
 * for INSERT … SELECT of thousands of rows in one statement. `columns` gives each position's name
 * and type.
 */
export function jsonRows(
  ctx: Ctx,
  rows: readonly (readonly (string | number | null)[])[],
  columns: readonly { name: string; type: "text" | "integer" }[],
  alias: string,
): RawBuilder<unknown> {
  return jsonRowsOf(ctx, JSON.stringify(rows), columns, alias);
}

/** jsonRows of rows already encoded (`json`: the JSON text, or a cachedQuery placeholder for it). */
export function jsonRowsOf(
  ctx: Ctx,
  json: string,
  columns: readonly { name: string; type: "text" | "integer" }[],
  alias: string,
): RawBuilder<unknown> {
  const pick = columns.map((c, i) =>
    ctx.kind === "sqlite"
      ? sql`json_extract(value, ${sql.lit(`$[${i}]`)}) AS ${sql.id(c.name)}`
      : sql`CAST(x ->> ${sql.lit(i)} AS ${sql.raw(c.type === "text" ? "text" : "bigint")}) AS ${sql.id(c.name)}`,
  );
  return ctx.kind === "sqlite"
    ? sql`(SELECT ${sql.join(pick)} FROM json_each(${json})) AS ${sql.id(alias)}`
    : sql`(SELECT ${sql.join(pick)} FROM jsonb_array_elements(CAST(${json} AS jsonb)) AS x) AS ${sql.id(alias)}`;
}
