/** Appending rollout events: any number in one statement, returned in the planned order. */
import { sql } from "kysely";
import type { PlannedEvent } from "../rollouts/decisions.js";
import { type Ctx, jsonRows } from "./context.js";
import { type EventRow, toEvent } from "./rollout-reads.js";

export async function addEvents(ctx: Ctx, rolloutId: string, events: readonly PlannedEvent[], now: number) {
  if (events.length === 0) return [];
  // One statement for any number (a batch's machines turning healthy together): the rows as one
  // JSON parameter. Ids follow insertion order, so sorting by id keeps the planned order.
  const from = jsonRows(
    ctx,
    events.map((e) => [e.type, e.batchIndex, e.machineId, e.message, e.actor]),
    [
      { name: "type", type: "text" },
      { name: "batch_index", type: "integer" },
      { name: "machine_id", type: "text" },
      { name: "message", type: "text" },
      { name: "actor", type: "text" },
    ],
    "j",
  );
  const { rows } =
    await sql<EventRow>`INSERT INTO rollout_events (rollout_id, type, batch_index, machine_id, message, actor, created_at)
    SELECT CAST(${rolloutId} AS TEXT), j.type, j.batch_index, j.machine_id, j.message, j.actor, CAST(${now} AS BIGINT)
    FROM ${from}
    RETURNING *`.execute(ctx.q);
  return rows.map((r) => toEvent({ ...r, id: Number(r.id) })).sort((a, b) => a.id - b.id);
}
