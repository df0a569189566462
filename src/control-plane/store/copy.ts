/**
 * Copies a whole control-plane database into an empty one (`nixfleet-control-plane migrate`,
 * SQLite → PostgreSQL): every table, in foreign-key order, ids and counters included, so a
 * control plane started on the copy continues exactly — running rollouts, revisions, the evidence
 * sequence, audit ids. The source is read in one read transaction (a consistent snapshot even if
 * a control plane still runs on it); the target is written in one transaction, so a failed copy
 * leaves it empty.
 */
import { type Kysely, sql } from "kysely";
import type { KyselyFleetStore } from "./kysely-store.js";
import { TABLE_ORDER, type Tables } from "./tables.js";

const ROWS_PER_INSERT = 500;

/** The primary key each table is read in order of (a stable, complete scan). */
const ORDER: Record<keyof Tables, string[]> = {
  machines: ["id"],
  machine_tags: ["machine_id", "tag"],
  revision_counter: ["id"],
  evidence_sequence: ["id"],
  desired_generations: ["machine_id"],
  reports: ["id"],
  health_reports: ["id"],
  releases: ["id"],
  release_entries: ["release_id", "hostname"],
  rollouts: ["id"],
  rollout_batches: ["rollout_id", "batch_index"],
  rollout_machines: ["rollout_id", "machine_id"],
  rollout_events: ["id"],
  api_keys: ["id"],
  audit_events: ["id"],
};

/** Tables whose id the database assigns: the target's id generator must continue after them. */
const IDENTITY: readonly (keyof Tables)[] = ["reports", "health_reports", "rollout_events", "audit_events"];
/** One-row counters the migrations create: copied by value, not inserted. */
const COUNTERS: readonly (keyof Tables)[] = ["revision_counter", "evidence_sequence"];

export class TargetNotEmptyError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "TargetNotEmptyError";
  }
}

async function rowCount(db: Kysely<Tables>, table: keyof Tables): Promise<number> {
  const row = await db
    .selectFrom(table)
    .select((eb) => eb.fn.countAll<number>().as("n"))
    .executeTakeFirstOrThrow();
  return Number(row.n);
}

/** Refuses a target that holds anything beyond what its migrations created. */
async function requireEmpty(db: Kysely<Tables>): Promise<void> {
  for (const table of TABLE_ORDER) {
    if (COUNTERS.includes(table)) continue;
    const n = await rowCount(db, table);
    if (n > 0)
      throw new TargetNotEmptyError(
        `the target database is not empty (${table} has ${n} row${n === 1 ? "" : "s"}); ` +
          "migrate into a new, empty database",
      );
  }
}

export async function copyDatabase(
  source: KyselyFleetStore,
  target: KyselyFleetStore,
  onTable: (table: keyof Tables, rows: number) => void = () => {},
): Promise<Record<string, number>> {
  await requireEmpty(target.kysely);
  const copied: Record<string, number> = {};
  await source.kysely.connection().execute(async (src) => {
    await sql`BEGIN`.execute(src);
    try {
      await target.kysely.transaction().execute(async (dst) => {
        await requireEmpty(dst);
        for (const table of TABLE_ORDER) {
          let n = 0;
          if (COUNTERS.includes(table)) {
            const row = await src
              .selectFrom(table as "revision_counter")
              .selectAll()
              .executeTakeFirstOrThrow();
            await dst
              .updateTable(table as "revision_counter")
              .set({ value: row.value })
              .where("id", "=", 1)
              .execute();
            n = 1;
          } else {
            for (let offset = 0; ; offset += ROWS_PER_INSERT) {
              let query = src.selectFrom(table).selectAll();
              for (const column of ORDER[table]) query = query.orderBy(sql.ref(column));
              const rows = await query.limit(ROWS_PER_INSERT).offset(offset).execute();
              if (rows.length === 0) break;
              await dst
                .insertInto(table)
                .values(rows as never)
                .execute();
              n += rows.length;
              if (rows.length < ROWS_PER_INSERT) break;
            }
          }
          if (IDENTITY.includes(table) && target.kind === "postgres") {
            // The next id the target assigns follows the copied ones.
            await sql`SELECT setval(pg_get_serial_sequence(${table}, 'id'), coalesce((SELECT max(id) FROM ${sql.table(table)}), 0) + 1, false)`.execute(
              dst,
            );
          }
          copied[table] = n;
          onTable(table, n);
        }
        for (const table of TABLE_ORDER) {
          const [from, to] = [await rowCount(src, table), await rowCount(dst, table)];
          if (from !== to)
            throw new Error(`copy of ${table} is incomplete (${to} of ${from} rows); nothing was kept`);
        }
      });
    } finally {
      await sql`COMMIT`.execute(src);
    }
  });
  return copied;
}
