/**
 * The journal's outbox and health history, as functions over the database (journal.ts calls
 * them, inside its transactions where an outcome's reports must commit with it).
 */
import type { Db } from "./db.js";
import { type HealthRecord, type OutboxClass, type OutboxItem, type OutboxRow, RETENTION } from "./types.js";

export function recordHealth(db: Db, h: HealthRecord, now: number): void {
  db.transaction(() => {
    db.prepare(
      `INSERT INTO health_history (generation, all_passed, post_apply, deployment_id, results, created_at)
       VALUES (?, ?, ?, ?, ?, ?)`,
    ).run(
      h.generation,
      h.allPassed ? 1 : 0,
      h.postApply ? 1 : 0,
      h.deploymentId,
      JSON.stringify(h.results),
      h.at,
    );
    db.prepare("DELETE FROM health_history WHERE created_at < ?").run(now - RETENTION.healthAgeMs);
    db.prepare(
      "DELETE FROM health_history WHERE id NOT IN (SELECT id FROM health_history ORDER BY id DESC LIMIT ?)",
    ).run(RETENTION.healthRows);
  })();
}

export function healthHistory(db: Db, limit: number): HealthRecord[] {
  return (
    db.prepare("SELECT * FROM health_history ORDER BY id DESC LIMIT ?").all(limit) as Array<{
      generation: string;
      all_passed: number;
      post_apply: number;
      deployment_id: string;
      results: string;
      created_at: number;
    }>
  ).map((r) => ({
    generation: r.generation,
    allPassed: r.all_passed === 1,
    postApply: r.post_apply === 1,
    deploymentId: r.deployment_id,
    results: JSON.parse(r.results) as unknown,
    at: r.created_at,
  }));
}

/**
 * Inserts a row (inside the caller's transaction). A status or health row replaces the queued
 * ones with its coalesce key; only those classes are bounded, so a control plane down for days
 * cannot grow the file without limit, while every outcome stays until it is delivered.
 */
export function insertOutbox(db: Db, row: OutboxRow, at: number): number {
  if (row.class !== "outcome" && row.coalesceKey !== undefined) {
    db.prepare("DELETE FROM outbox WHERE class = ? AND coalesce_key = ?").run(row.class, row.coalesceKey);
  }
  const info = db
    .prepare(
      "INSERT INTO outbox (kind, outcome, deployment_id, payload, created_at, class, coalesce_key) VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .run(
      row.kind,
      row.outcome,
      row.deploymentId,
      Buffer.from(row.payload),
      at,
      row.class,
      row.coalesceKey ?? null,
    );
  if (row.class !== "outcome") {
    db.prepare(
      `DELETE FROM outbox WHERE class <> 'outcome' AND id NOT IN (
         SELECT id FROM outbox WHERE class <> 'outcome' ORDER BY id DESC LIMIT ?)`,
    ).run(RETENTION.outboxItems);
  }
  return Number(info.lastInsertRowid);
}

export function readOutbox(db: Db): OutboxItem[] {
  return (
    db.prepare("SELECT * FROM outbox ORDER BY id").all() as Array<{
      id: number;
      kind: "report" | "health";
      outcome: string;
      deployment_id: string;
      payload: Buffer;
      created_at: number;
      attempts: number;
      class: OutboxClass;
      coalesce_key: string | null;
    }>
  ).map((r) => ({
    id: r.id,
    kind: r.kind,
    outcome: r.outcome,
    deploymentId: r.deployment_id,
    payload: new Uint8Array(r.payload),
    createdAt: r.created_at,
    attempts: r.attempts,
    class: r.class,
    ...(r.coalesce_key !== null ? { coalesceKey: r.coalesce_key } : {}),
  }));
}

export function outboxBacklog(db: Db): Record<OutboxClass, number> {
  const backlog: Record<OutboxClass, number> = { outcome: 0, status: 0, health: 0 };
  const rows = db.prepare("SELECT class, COUNT(*) AS n FROM outbox GROUP BY class").all() as Array<{
    class: OutboxClass;
    n: number;
  }>;
  for (const r of rows) backlog[r.class] = r.n;
  return backlog;
}
