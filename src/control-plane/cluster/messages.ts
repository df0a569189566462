/**
 * What replicas tell each other, and its wire form on PostgreSQL NOTIFY. A NOTIFY payload holds
 * at most 8000 bytes, and one batch of a rollout over 10,000 machines writes 10,000 desired
 * generations, so a message is cut into as many payloads as it needs: each payload is complete
 * JSON on its own (a list of whole items), so a receiver never reassembles anything and a lost
 * payload loses only its own items.
 *
 * Replicas of different versions run side by side during an upgrade: a payload of an unknown
 * version or kind is ignored (and logged once by the receiver), never fatal. So a new kind is
 * added under the same wire version (an older replica merely misses what it could not act on);
 * the version changes only when an existing kind changes its form.
 */
import { z } from "zod";
import { FLEET_CHANGE_KINDS, type FleetChangeKind } from "../services/fleet-changes.js";
import type { DesiredChange } from "../store/records.js";

export type ClusterEvent =
  /** Desired generations were written: push them to the agents whose streams a replica holds. */
  | { kind: "desired"; changes: readonly DesiredChange[]; pollHintSeconds: number | undefined }
  /** Tell these machines' agents to poll every `seconds` (0: back to their own interval). */
  | { kind: "poll-hint"; machineIds: readonly string[]; seconds: number }
  /** A rollout has new events: wake its WatchRollout streams. */
  | { kind: "rollout"; rolloutId: string }
  /** Evaluate these rollouts now (a report or health report arrived for one of their machines). */
  | { kind: "kick"; rolloutIds: readonly string[] }
  /** Machines changed on the sender (WatchFleet's FleetChanges): tell this replica's watchers. */
  | { kind: "fleet"; changes: readonly FleetChange[] };

export interface FleetChange {
  machineId: string;
  kind: FleetChangeKind;
}

/** PostgreSQL refuses a NOTIFY payload of 8000 bytes or more. */
export const MAX_PAYLOAD_BYTES = 7999;
const WIRE_VERSION = 1;

type DesiredItem = [string] | [string, string, string, number, string, string, number];

function desiredItem(c: DesiredChange): DesiredItem {
  const d = c.desired;
  if (!d) return [c.machineId];
  return [c.machineId, d.storePath, d.cacheUrl, d.revision, d.rolloutId, d.setBy, d.setAt];
}

function desiredChange(item: DesiredItem): DesiredChange {
  if (item.length === 1) return { machineId: item[0], desired: null };
  const [machineId, storePath, cacheUrl, revision, rolloutId, setBy, setAt] = item;
  return { machineId, desired: { storePath, cacheUrl, revision, rolloutId, setBy, setAt } };
}

/**
 * Packs `items` into as few payloads as fit: `head` is the JSON before the list (it names the
 * sender and the kind), `tail` what follows it. Items are measured in UTF-8 bytes, as PostgreSQL
 * counts them. Every item the control plane makes fits many times over (a machine id, a store
 * path, a cache URL and an actor are each bounded by input rules); one that does not is a bug.
 */
function pack(head: string, tail: string, items: readonly unknown[]): string[] {
  const payloads: string[] = [];
  const fixed = Buffer.byteLength(head) + Buffer.byteLength(tail) + 2; // the brackets
  let parts: string[] = [];
  let size = fixed;
  const flush = () => {
    if (parts.length) payloads.push(`${head}[${parts.join(",")}]${tail}`);
    parts = [];
    size = fixed;
  };
  for (const item of items) {
    const json = JSON.stringify(item);
    const bytes = Buffer.byteLength(json);
    if (fixed + bytes > MAX_PAYLOAD_BYTES)
      throw new Error(`a cluster message item is ${bytes} bytes, over the NOTIFY payload limit`);
    if (parts.length && size + 1 + bytes > MAX_PAYLOAD_BYTES) flush();
    size += (parts.length ? 1 : 0) + bytes;
    parts.push(json);
  }
  flush();
  return payloads;
}

/** The payloads that carry `event` from replica `from`; each is under MAX_PAYLOAD_BYTES. */
export function encodeEvent(from: string, event: ClusterEvent): string[] {
  const head = (kind: string) => `{"v":${WIRE_VERSION},"f":${JSON.stringify(from)},"k":"${kind}","i":`;
  switch (event.kind) {
    case "desired": {
      const hint = event.pollHintSeconds === undefined ? "" : `,"h":${event.pollHintSeconds}`;
      return pack(head("d"), `${hint}}`, event.changes.map(desiredItem));
    }
    case "poll-hint":
      return pack(head("p"), `,"s":${event.seconds}}`, event.machineIds);
    case "rollout":
      return pack(head("r"), "}", [event.rolloutId]);
    case "kick":
      return pack(head("k"), "}", event.rolloutIds);
    case "fleet": {
      // One list of machine ids per change kind: a batch of 10,000 "desired" is ids only.
      const byKind = new Map<FleetChangeKind, string[]>();
      for (const c of event.changes) {
        const ids = byKind.get(c.kind);
        if (ids) ids.push(c.machineId);
        else byKind.set(c.kind, [c.machineId]);
      }
      return [...byKind].flatMap(([kind, ids]) => pack(head("m"), `,"c":"${kind}"}`, ids));
    }
  }
}

const text = z.string();
const count = z.number().int().nonnegative();
const envelope = z.object({ v: z.number(), f: text, k: text, i: z.array(z.unknown()) });
const desiredItems = z.array(
  z.union([z.tuple([text]), z.tuple([text, text, text, count, text, text, count])]),
);
const ids = z.array(text);
const fleetKind = z.enum(FLEET_CHANGE_KINDS);

export type Decoded =
  | { ok: true; from: string; event: ClusterEvent }
  | { ok: false; from: string | null; problem: string };

/** Parses one payload; anything this version does not understand is `ok: false` with the reason. */
export function decodePayload(payload: string): Decoded {
  let json: unknown;
  try {
    json = JSON.parse(payload);
  } catch {
    return { ok: false, from: null, problem: "not JSON" };
  }
  const env = envelope.safeParse(json);
  if (!env.success) return { ok: false, from: null, problem: "not a cluster message" };
  const { v, f: from, k, i } = env.data;
  if (v !== WIRE_VERSION) return { ok: false, from, problem: `wire version ${v} (this replica speaks 1)` };
  const raw = json as { h?: unknown; s?: unknown; c?: unknown };
  switch (k) {
    case "d": {
      const items = desiredItems.safeParse(i);
      const hint = raw.h === undefined ? undefined : count.safeParse(raw.h);
      if (!items.success || (hint && !hint.success)) return { ok: false, from, problem: "malformed desired" };
      return {
        ok: true,
        from,
        event: {
          kind: "desired",
          changes: items.data.map((item) => desiredChange(item as DesiredItem)),
          pollHintSeconds: hint?.data,
        },
      };
    }
    case "p": {
      const machineIds = ids.safeParse(i);
      const seconds = count.safeParse(raw.s);
      if (!machineIds.success || !seconds.success) return { ok: false, from, problem: "malformed poll hint" };
      return {
        ok: true,
        from,
        event: { kind: "poll-hint", machineIds: machineIds.data, seconds: seconds.data },
      };
    }
    case "r": {
      const rollouts = ids.safeParse(i);
      if (!rollouts.success || rollouts.data.length !== 1)
        return { ok: false, from, problem: "malformed rollout" };
      return { ok: true, from, event: { kind: "rollout", rolloutId: rollouts.data[0]! } };
    }
    case "k": {
      const rollouts = ids.safeParse(i);
      if (!rollouts.success) return { ok: false, from, problem: "malformed kick" };
      return { ok: true, from, event: { kind: "kick", rolloutIds: rollouts.data } };
    }
    case "m": {
      const machineIds = ids.safeParse(i);
      if (!machineIds.success || typeof raw.c !== "string")
        return { ok: false, from, problem: "malformed fleet change" };
      // A kind a newer replica added: its watchers there see it; here it is skipped.
      const kind = fleetKind.safeParse(raw.c);
      if (!kind.success)
        return { ok: false, from, problem: `unknown fleet change kind ${JSON.stringify(raw.c)}` };
      const changes = machineIds.data.map((machineId) => ({ machineId, kind: kind.data }));
      return { ok: true, from, event: { kind: "fleet", changes } };
    }
    default:
      return { ok: false, from, problem: `unknown kind ${JSON.stringify(k)}` };
  }
}
