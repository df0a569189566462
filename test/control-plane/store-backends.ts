/**
 * The store backends the contract tests run against: SQLite (a file in a temp dir) and
 * PostgreSQL (a fresh database on a server test/fixtures/postgres.ts starts once per test file).
 * A test asks for a location, opens the store there (again, to test re-opening), and uses
 * `count` for backend-neutral row counts.
 */

import { join } from "node:path";
import type { KyselyFleetStore } from "../../src/control-plane/store/kysely-store.js";
import { PostgresFleetStore } from "../../src/control-plane/store/postgres-store.js";
import { SqliteFleetStore } from "../../src/control-plane/store/sqlite-store.js";
import type { Tables } from "../../src/control-plane/store/tables.js";
import { postgresUnavailable, sharedPostgres } from "../fixtures/postgres.js";
import { tempDir } from "../fixtures/tmp.js";

type T = { after(fn: () => void | Promise<void>): void };

export interface StoreBackend {
  name: "sqlite" | "postgres";
  /** Why this backend cannot run here (the suite is skipped with this reason). */
  skip: string | undefined;
  /** A fresh, empty place for a store: a file path or a database URL. */
  location(t: T): Promise<string>;
  /** Opens (and migrates) the store at `location`; closed after the test. */
  open(t: T, location: string): Promise<KyselyFleetStore>;
}

export { sharedPostgres as testPostgres } from "../fixtures/postgres.js";

export const BACKENDS: readonly StoreBackend[] = [
  {
    name: "sqlite",
    skip: undefined,
    location: async (t) => join(tempDir(t), "state.db"),
    open: async (t, location) => {
      const { store } = await SqliteFleetStore.open({ path: location });
      t.after(() => store.close());
      return store;
    },
  },
  {
    name: "postgres",
    skip: postgresUnavailable(),
    location: async () => (await sharedPostgres()).database(),
    open: async (t, location) => {
      const { store } = await PostgresFleetStore.open({ url: location, poolSize: 4 });
      t.after(() => store.close());
      return store;
    },
  },
];

export async function count(store: KyselyFleetStore, table: keyof Tables): Promise<number> {
  const row = await store.kysely
    .selectFrom(table)
    .select((eb) => eb.fn.countAll<number>().as("n"))
    .executeTakeFirstOrThrow();
  return Number(row.n);
}
