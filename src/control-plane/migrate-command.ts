/**
 * `nixfleet-control-plane migrate --from sqlite:PATH --to postgres://…`: moves a control plane
 * from its SQLite file to PostgreSQL. Stop the control plane first (or accept that what it writes
 * after the copy's snapshot is not copied); the target must be an empty database.
 */
import { existsSync, statSync } from "node:fs";
import { parseDatabaseUrl, UsageError } from "./config.js";
import type { KeysIo } from "./keys-command.js";
import { copyDatabase } from "./store/copy.js";
import { redactUrl } from "./store/pg-database.js";
import { PostgresFleetStore } from "./store/postgres-store.js";
import { SqliteFleetStore } from "./store/sqlite-store.js";

export function parseSource(from: string): string {
  const m = /^sqlite:(.+)$/.exec(from.trim());
  if (!m)
    throw new UsageError("--from", `expected sqlite:PATH (the old --db-path), got ${JSON.stringify(from)}`);
  const path = m[1]!;
  if (!existsSync(path) || !statSync(path).isFile())
    throw new UsageError("--from", `no database file at ${path}; give the control plane's --db-path`);
  return path;
}

export async function migrateCommand(from: string, to: string, io: KeysIo): Promise<void> {
  const path = parseSource(from);
  const url = parseDatabaseUrl(to, false);
  if (!url) throw new UsageError("--to", "give the PostgreSQL database URL (postgres://…)");
  const source = (await SqliteFleetStore.open({ path, lockWaitMs: 30_000 })).store;
  try {
    const target = (await PostgresFleetStore.open({ url })).store;
    try {
      const copied = await copyDatabase(source, target, (table, rows) => io.err(`${table}: ${rows} rows`));
      const total = Object.values(copied).reduce((a, b) => a + b, 0);
      io.out(
        `copied ${total} rows from ${path} to ${redactUrl(url)}; start the control plane with --database-url`,
      );
    } finally {
      await target.close();
    }
  } finally {
    await source.close();
  }
}
