/**
 * The deployment journal: every deployment with its phases and outcome, the quarantine, what was
 * last reported, health history and the report outbox. Each state change is one transaction, and
 * the intent of a step is written *before* the step runs, so whatever instant the agent dies at,
 * the next start knows what might have happened (see recovery.ts).
 */
import type { ActivationHandle } from "../activation.js";
import { type Db, openDatabase } from "./db.js";
import { healthHistory, insertOutbox, outboxBacklog, readOutbox, recordHealth } from "./outbox.js";
import {
  type ActivationOrder,
  type Deployment,
  type DeploymentRow,
  type FinalOutcome,
  type HealthRecord,
  type OutboxClass,
  type OutboxItem,
  type OutboxRow,
  type Phase,
  type PhaseRecord,
  type PhaseUpdate,
  type QuarantineEntry,
  RETENTION,
  type Settlement,
  toDeployment,
} from "./types.js";

export * from "./types.js";

export class Journal {
  private constructor(
    readonly db: Db,
    private readonly now: () => number,
  ) {}

  /** `movedAside` is set when a corrupt file had to be replaced. */
  static open(path: string, now: () => number = Date.now): { journal: Journal; movedAside?: string } {
    const { db, movedAside } = openDatabase(path);
    const journal = new Journal(db, now);
    return movedAside ? { journal, movedAside } : { journal };
  }

  close(): void {
    if (this.db.open) this.db.close();
  }

  // ------------------------------------------------------------------- deployments

  createDeployment(d: {
    id: string;
    desired: string;
    desiredRevision: bigint;
    rolloutId: string;
    cacheUrl: string | null;
  }): Deployment {
    const at = this.now();
    return this.db.transaction(() => {
      this.db
        .prepare(
          `INSERT INTO deployments (id, desired, desired_revision, rollout_id, cache_url, phase, created_at, updated_at)
           VALUES (?, ?, ?, ?, ?, 'fetching', ?, ?)`,
        )
        .run(d.id, d.desired, d.desiredRevision.toString(), d.rolloutId, d.cacheUrl, at, at);
      this.openPhase(d.id, "fetching", at);
      return this.mustGet(d.id);
    })();
  }

  /** The intent to apply: written before anything on the host changes. */
  beginApply(
    id: string,
    previous: string,
    previousProfileGeneration: number | null,
    reports: readonly OutboxRow[] = [],
    how: { order: ActivationOrder; bootId: string | null } = { order: "switch", bootId: null },
  ): Deployment {
    const at = this.now();
    return this.db.transaction(() => {
      this.db
        .prepare(
          "UPDATE deployments SET previous = ?, previous_profile_generation = ?, activation_order = ?, boot_id = ?, phase = 'applying', updated_at = ? WHERE id = ?",
        )
        .run(previous, previousProfileGeneration, how.order, how.bootId, at, id);
      this.closePhase(id, at);
      this.openPhase(id, "applying", at);
      for (const r of reports) this.insertOutbox(r, at);
      return this.mustGet(id);
    })();
  }

  setPhase(id: string, phase: Exclude<Phase, "done">, update: PhaseUpdate = {}): Deployment {
    const at = this.now();
    return this.db.transaction(() => {
      const sets = ["phase = ?", "updated_at = ?"];
      const values: unknown[] = [phase, at];
      if (update.activation !== undefined) {
        sets.push("activation = ?");
        values.push(update.activation ? JSON.stringify(update.activation) : null);
      }
      if (update.rollbackActivation !== undefined) {
        sets.push("rollback_activation = ?");
        values.push(update.rollbackActivation ? JSON.stringify(update.rollbackActivation) : null);
      }
      if (update.rollbackReason !== undefined) {
        sets.push("rollback_reason = ?");
        values.push(update.rollbackReason);
      }
      if (update.rollbackAttempts !== undefined) {
        sets.push("rollback_attempts = ?");
        values.push(update.rollbackAttempts);
      }
      if (update.bootDefaultMoved !== undefined) {
        sets.push("boot_default_moved = ?");
        values.push(update.bootDefaultMoved ? 1 : 0);
      }
      const current = this.get(id);
      this.db.prepare(`UPDATE deployments SET ${sets.join(", ")} WHERE id = ?`).run(...values, id);
      // Re-recording the same phase (e.g. the activation handle after the spawn) keeps its row.
      if (current?.phase !== phase) {
        this.closePhase(id, at, update.error);
        this.openPhase(id, phase, at);
      }
      return this.mustGet(id);
    })();
  }

  /** Records the switch's handle within the current phase (after the spawn returned a pid). */
  recordActivation(
    id: string,
    field: "activation" | "rollbackActivation",
    handle: ActivationHandle,
  ): Deployment {
    const column = field === "activation" ? "activation" : "rollback_activation";
    this.db
      .prepare(`UPDATE deployments SET ${column} = ?, updated_at = ? WHERE id = ?`)
      .run(JSON.stringify(handle), this.now(), id);
    return this.mustGet(id);
  }

  /**
   * Ends a deployment: the outcome, the quarantine entry, the reports about it and the health
   * history commit together or not at all — an agent killed at any instant either finds the
   * deployment unfinished (and settles it again) or finds all of its consequences.
   */
  finish(id: string, outcome: FinalOutcome, message: string, settle: Settlement = {}): Deployment {
    const at = this.now();
    const done = this.db.transaction(() => {
      this.db
        .prepare(
          "UPDATE deployments SET phase = 'done', outcome = ?, message = ?, updated_at = ?, finished_at = ? WHERE id = ?",
        )
        .run(outcome, message, at, at, id);
      this.closePhase(id, at, settle.error);
      if (settle.quarantine) this.quarantine({ ...settle.quarantine, deploymentId: id });
      if (settle.health) this.recordHealth(settle.health);
      for (const r of settle.reports ?? []) this.insertOutbox(r, at);
      return this.mustGet(id);
    })();
    this.pruneDeployments();
    return done;
  }

  private mustGet(id: string): Deployment {
    const d = this.get(id);
    if (!d) throw new Error(`the journal has no deployment ${id}`);
    return d;
  }

  private openPhase(id: string, phase: Phase, at: number): void {
    this.db
      .prepare("INSERT INTO deployment_phases (deployment_id, phase, started_at) VALUES (?, ?, ?)")
      .run(id, phase, at);
  }

  private closePhase(id: string, at: number, error?: string): void {
    this.db
      .prepare(
        "UPDATE deployment_phases SET ended_at = ?, error = ? WHERE deployment_id = ? AND ended_at IS NULL",
      )
      .run(at, error ?? null, id);
  }

  get(id: string): Deployment | undefined {
    const row = this.db.prepare("SELECT * FROM deployments WHERE id = ?").get(id) as
      | DeploymentRow
      | undefined;
    return row ? toDeployment(row) : undefined;
  }

  /** Deployments not yet settled, oldest first (normally at most one). */
  unfinished(): Deployment[] {
    return (
      this.db
        .prepare("SELECT * FROM deployments WHERE phase <> 'done' ORDER BY created_at, rowid")
        .all() as DeploymentRow[]
    ).map(toDeployment);
  }

  /** Newest first. */
  recent(limit = 20): Deployment[] {
    return (
      this.db
        .prepare("SELECT * FROM deployments ORDER BY created_at DESC, rowid DESC LIMIT ?")
        .all(limit) as DeploymentRow[]
    ).map(toDeployment);
  }

  /** The newest deployment that reached an outcome. */
  lastFinished(): Deployment | undefined {
    const row = this.db
      .prepare("SELECT * FROM deployments WHERE phase = 'done' ORDER BY finished_at DESC, rowid DESC LIMIT 1")
      .get() as DeploymentRow | undefined;
    return row ? toDeployment(row) : undefined;
  }

  /** Whether exactly this assignment (path and revision) ended DEPLOYED here. */
  deployedBefore(path: string, revision: bigint): boolean {
    return (
      this.db
        .prepare(
          "SELECT 1 FROM deployments WHERE desired = ? AND desired_revision = ? AND outcome = 'DEPLOYED' LIMIT 1",
        )
        .get(path, revision.toString()) !== undefined
    );
  }

  lastDeployedAt(): number | undefined {
    const row = this.db
      .prepare("SELECT MAX(finished_at) AS at FROM deployments WHERE outcome = 'DEPLOYED'")
      .get() as { at: number | null };
    return row.at ?? undefined;
  }

  phases(id: string): PhaseRecord[] {
    return (
      this.db
        .prepare(
          "SELECT phase, started_at, ended_at, error FROM deployment_phases WHERE deployment_id = ? ORDER BY id",
        )
        .all(id) as Array<{ phase: Phase; started_at: number; ended_at: number | null; error: string | null }>
    ).map((r) => ({ phase: r.phase, startedAt: r.started_at, endedAt: r.ended_at, error: r.error }));
  }

  private pruneDeployments(): void {
    this.db
      .prepare(
        `DELETE FROM deployments WHERE phase = 'done' AND id NOT IN (
           SELECT id FROM deployments ORDER BY created_at DESC, rowid DESC LIMIT ?)`,
      )
      .run(RETENTION.deployments);
  }

  // ------------------------------------------------------------------- quarantine

  quarantine(entry: Omit<QuarantineEntry, "createdAt">): void {
    this.db
      .prepare(
        `INSERT INTO quarantine (path, revision, deployment_id, outcome, reason, created_at) VALUES (?, ?, ?, ?, ?, ?)
         ON CONFLICT (path) DO UPDATE SET revision = excluded.revision, deployment_id = excluded.deployment_id,
           outcome = excluded.outcome, reason = excluded.reason, created_at = excluded.created_at`,
      )
      .run(
        entry.path,
        entry.revision.toString(),
        entry.deploymentId,
        entry.outcome,
        entry.reason,
        this.now(),
      );
  }

  quarantineEntry(path: string): QuarantineEntry | undefined {
    const row = this.db.prepare("SELECT * FROM quarantine WHERE path = ?").get(path) as
      | {
          path: string;
          revision: string;
          deployment_id: string | null;
          outcome: string;
          reason: string;
          created_at: number;
        }
      | undefined;
    return row
      ? {
          path: row.path,
          revision: BigInt(row.revision),
          deploymentId: row.deployment_id,
          outcome: row.outcome,
          reason: row.reason,
          createdAt: row.created_at,
        }
      : undefined;
  }

  clearQuarantine(path: string): void {
    this.db.prepare("DELETE FROM quarantine WHERE path = ?").run(path);
  }

  quarantineCount(): number {
    return (this.db.prepare("SELECT COUNT(*) AS n FROM quarantine").get() as { n: number }).n;
  }

  // ------------------------------------------------------------------- report memory

  lastReport(kind: string): { key: string; outcome: string; sentAt: number } | undefined {
    const row = this.db.prepare("SELECT key, outcome, sent_at FROM last_reports WHERE kind = ?").get(kind) as
      | { key: string; outcome: string; sent_at: number }
      | undefined;
    return row ? { key: row.key, outcome: row.outcome, sentAt: row.sent_at } : undefined;
  }

  recordReport(kind: string, key: string, outcome: string, at = this.now()): void {
    this.db
      .prepare(
        `INSERT INTO last_reports (kind, key, outcome, sent_at) VALUES (?, ?, ?, ?)
         ON CONFLICT (kind) DO UPDATE SET key = excluded.key, outcome = excluded.outcome, sent_at = excluded.sent_at`,
      )
      .run(kind, key, outcome, at);
  }

  // ------------------------------------------------------------------- health history

  recordHealth(h: HealthRecord): void {
    recordHealth(this.db, h, this.now());
  }

  healthHistory(limit = 20): HealthRecord[] {
    return healthHistory(this.db, limit);
  }

  // ------------------------------------------------------------------- outbox

  /** Queues one row on its own (steady reports, periodic health). Returns its id. */
  enqueue(row: OutboxRow): number {
    return this.db.transaction(() => insertOutbox(this.db, row, this.now()))();
  }

  private insertOutbox(row: OutboxRow, at: number): number {
    return insertOutbox(this.db, row, at);
  }

  outbox(): OutboxItem[] {
    return readOutbox(this.db);
  }

  removeFromOutbox(ids: readonly number[]): void {
    const del = this.db.prepare("DELETE FROM outbox WHERE id = ?");
    this.db.transaction(() => {
      for (const id of ids) del.run(id);
    })();
  }

  markOutboxAttempt(id: number, error: string): void {
    this.db
      .prepare("UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE id = ?")
      .run(error.slice(0, 1000), id);
  }

  outboxCount(): number {
    return (this.db.prepare("SELECT COUNT(*) AS n FROM outbox").get() as { n: number }).n;
  }

  /** Queued rows per class (every class present, 0 when empty). */
  outboxBacklog(): Record<OutboxClass, number> {
    return outboxBacklog(this.db);
  }
}
