/**
 * A thin helper over a better-sqlite3 connection: prepared statements cached by their text, and
 * IMMEDIATE transactions (taking the write lock up front, so two writers never deadlock on a
 * read-to-write upgrade).
 */
import type Database from "better-sqlite3";
import type { SqliteDatabase } from "./database.js";

export class Sql {
  private readonly cache = new Map<string, Database.Statement>();

  constructor(readonly db: SqliteDatabase) {}

  stmt(source: string): Database.Statement {
    let s = this.cache.get(source);
    if (!s) {
      s = this.db.prepare(source);
      this.cache.set(source, s);
    }
    return s;
  }

  get<T>(source: string, ...params: unknown[]): T | undefined {
    return this.stmt(source).get(...params) as T | undefined;
  }

  all<T>(source: string, ...params: unknown[]): T[] {
    return this.stmt(source).all(...params) as T[];
  }

  run(source: string, ...params: unknown[]): Database.RunResult {
    return this.stmt(source).run(...params);
  }

  /** Runs `fn` in an IMMEDIATE transaction; a throw rolls everything back. */
  tx<T>(fn: () => T): T {
    if (this.db.inTransaction) return fn();
    return this.db.transaction(fn).immediate();
  }

  audit(now: number, actor: string, action: string, target: string, detail: string): void {
    this.run(
      "INSERT INTO audit_events (timestamp, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)",
      now,
      actor,
      action,
      target,
      detail,
    );
  }

  /**
   * Hands out the next desired-generation revision: strictly increasing, and never below the
   * current time in milliseconds, so even a database restored from an old backup cannot hand out
   * a revision an agent has already seen (and may have quarantined a path under).
   */
  nextRevision(now: number): number {
    const row = this.get<{ value: number }>(
      "UPDATE revision_counter SET value = max(value + 1, ?) WHERE id = 1 RETURNING value",
      Math.floor(now),
    );
    return row!.value;
  }
}

/**
 * The next position in the order of agent evidence (reports, health reports) and batch starts.
 * Callers hold the write transaction, so positions follow commit order — what "received after
 * the batch started" means — whatever the wall clock does.
 */
export function nextSeq(sql: Sql): number {
  return sql.get<{ value: number }>(
    "UPDATE evidence_sequence SET value = value + 1 WHERE id = 1 RETURNING value",
  )!.value;
}

/** JSON array parameter for `IN (SELECT value FROM json_each(?))`. */
export function jsonList(values: readonly string[]): string {
  return JSON.stringify(values);
}
