/**
 * Announcing a write to the other replicas inside the write's own transaction. PostgreSQL's
 * NOTIFY is transactional: queued notifications leave when the transaction commits and are
 * dropped when it rolls back. So a desired generation or rollout change and the notification
 * that pushes it across replicas commit together — a replica that dies right after its commit
 * cannot leave the change unannounced, and a write that rolls back (a failed commit, a fenced
 * executor write, a deadlock retried) announces nothing.
 *
 * The store only carries the payloads; what they say (and their wire form) is the cluster bus's
 * business (../cluster/announcements.ts), handed in as a TransactionAnnouncer at start-up.
 */
import { sql } from "kysely";
import type { Ctx } from "./context.js";
import type { DesiredChange, RolloutEventRecord } from "./records.js";
import type { RolloutChange } from "./repository.js";

/** What a write changed that other replicas must act on. */
export type Announcement =
  /** An operator set or cleared one machine's desired generation. */
  | { kind: "desired"; change: DesiredChange }
  /** A rollout changed: created, a batch started or ended, paused, resumed, ended. */
  | { kind: "rollout"; change: RolloutChange }
  /** The executor stored gate results of a rollout (events only, nothing to push). */
  | { kind: "events"; rolloutId: string; events: readonly RolloutEventRecord[] };

export interface TransactionAnnouncer {
  /** The NOTIFY channel. */
  readonly channel: string;
  /** The payloads that tell the other replicas of `what` (none: nothing to tell). */
  payloads(what: Announcement): string[];
}

/** Queues the announcement's notifications in the transaction `ctx` (PostgreSQL only). */
export async function announce(
  ctx: Ctx,
  announcer: TransactionAnnouncer | null,
  what: Announcement | null,
): Promise<void> {
  if (!announcer || !what || ctx.kind !== "postgres") return;
  const payloads = announcer.payloads(what);
  if (payloads.length === 0) return;
  // One statement for any number of payloads (a batch of 10,000 machines needs a few hundred).
  await sql`SELECT pg_notify(${announcer.channel}, p) FROM unnest(CAST(${payloads} AS text[])) AS p`.execute(
    ctx.q,
  );
}
