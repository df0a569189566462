/**
 * Opens the store the configuration names: PostgreSQL when a database URL is given, else the
 * embedded SQLite file (the default).
 */
import type { MigrationResult, OpenDatabaseOptions } from "./database.js";
import type { KyselyFleetStore } from "./kysely-store.js";
import { redactUrl } from "./pg-database.js";
import { PostgresFleetStore } from "./postgres-store.js";
import { SqliteFleetStore } from "./sqlite-store.js";

export interface OpenStoreOptions extends OpenDatabaseOptions {
  databaseUrl: string | null;
}

export async function openStore(
  options: OpenStoreOptions,
): Promise<{ store: KyselyFleetStore; migration: MigrationResult }> {
  if (options.databaseUrl) {
    return PostgresFleetStore.open({
      url: options.databaseUrl,
      ...(options.now ? { now: options.now } : {}),
    });
  }
  return SqliteFleetStore.open(options);
}

/** What to call the database in logs: the SQLite path, or the URL without its password. */
export function databaseName(options: { dbPath: string; databaseUrl?: string | null }): string {
  return options.databaseUrl ? redactUrl(options.databaseUrl) : options.dbPath;
}
