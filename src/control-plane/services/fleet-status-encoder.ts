/**
 * GetFleetStatus's machines, encoded for binary clients without rebuilding 10,000 messages per
 * call (`status --watch` polls every 2 s). A MachineStatus is two parts:
 *
 * - what only a write changes (tags, generations, outcome, health, rollout…): its protobuf
 *   bytes are kept per machine, keyed by the store's JSON text of those columns — the same text
 *   means the same bytes, so a changed machine is rebuilt and nothing else is, on whichever
 *   replica (the key is the database's content, not a notification);
 * - last seen, stale and connected, which move with every heartbeat and with the clock: encoded
 *   per call and appended (protobuf merges repeated occurrences of a message's fields, and these
 *   three are absent from the first part).
 *
 * The response carries the machines as already-encoded `machines` fields (field 1) in its
 * unknown fields, which protobuf-es writes verbatim; a binary client decodes exactly the message
 * the plain path builds. JSON clients get the plain path (unknown fields have no JSON form).
 */
import { create, toBinary } from "@bufbuild/protobuf";
import { BinaryWriter, WireType } from "@bufbuild/protobuf/wire";
import {
  type GetFleetStatusResponse,
  GetFleetStatusResponseSchema,
  MachineStatusSchema,
} from "../../gen/nixfleet/v1/fleet_pb.js";
import { type MachineStatusRow, statusRowMachine } from "../store/machine-reads.js";
import { isStale, type LiveView, machineStatusToProto } from "./convert.js";

/** MachineStatus field numbers of the per-call part (see fleet.proto). */
const LAST_SEEN = 10;
const STALE = 11;
const CONNECTED = 12;
/** GetFleetStatusResponse.machines. */
const MACHINES = 1;

interface Kept {
  key: string;
  /** The MachineStatus without last_seen, stale and connected. */
  bytes: Uint8Array;
  inSync: boolean;
  healthy: boolean;
}

export class FleetStatusEncoder {
  private kept = new Map<string, Kept>();

  constructor(
    private readonly live: LiveView,
    private readonly staleAfterMs: number,
  ) {}

  /** The response for these rows (sorted by id), with the machines pre-encoded. */
  response(
    rows: readonly MachineStatusRow[],
    now: number,
    staleAfterSeconds: number,
  ): GetFleetStatusResponse {
    const next = new Map<string, Kept>();
    let inSync = 0;
    let stale = 0;
    let healthy = 0;
    // Every machine as a `machines` entry, one after the other, in one buffer.
    const w = new BinaryWriter();
    for (const row of rows) {
      let kept = this.kept.get(row.id);
      if (kept?.key !== row.key) kept = this.build(row);
      next.set(row.id, kept);
      const lastSeen = this.live.lastSeen(row);
      const isStaleNow = isStale(row, lastSeen, now, this.staleAfterMs);
      if (kept.inSync) inSync++;
      if (isStaleNow) stale++;
      if (kept.healthy) healthy++;
      w.tag(MACHINES, WireType.LengthDelimited).fork().raw(kept.bytes);
      // The per-call part, as protobuf-es writes it (proto3: zero values are not written).
      if (lastSeen !== null) {
        w.tag(LAST_SEEN, WireType.LengthDelimited).fork();
        const seconds = Math.floor(lastSeen / 1000);
        const nanos = (lastSeen - seconds * 1000) * 1_000_000;
        if (seconds !== 0) w.tag(1, WireType.Varint).int64(seconds);
        if (nanos !== 0) w.tag(2, WireType.Varint).int32(nanos);
        w.join();
      }
      if (isStaleNow) w.tag(STALE, WireType.Varint).bool(true);
      if (this.live.connected(row.id)) w.tag(CONNECTED, WireType.Varint).bool(true);
      w.join();
    }
    this.kept = next;
    // A message, not an init shape: creating one from an init shape drops unknown fields.
    const response = create(GetFleetStatusResponseSchema, {
      total: rows.length,
      inSync,
      stale,
      healthy,
      staleAfterSeconds,
    });
    if (rows.length > 0) {
      // toBinary writes an unknown field as its tag and then its data verbatim: the data here is
      // everything after the first entry's tag (one byte: field 1, length-delimited), so the
      // bytes written are exactly the entries above.
      const entries = w.finish();
      response.$unknown = [{ no: MACHINES, wireType: WireType.LengthDelimited, data: entries.subarray(1) }];
    }
    return response;
  }

  private build(row: MachineStatusRow): Kept {
    const m = statusRowMachine(row);
    const status = create(MachineStatusSchema, machineStatusToProto(m, this.live, 0, this.staleAfterMs));
    status.lastSeen = undefined;
    status.stale = false;
    status.connected = false;
    return {
      key: row.key,
      bytes: toBinary(MachineStatusSchema, status),
      inSync: status.inSync,
      healthy: m.health?.allPassed === true,
    };
  }
}

/** Whether a request's messages (and so its response's) are binary protobuf. */
export function isBinaryRequest(contentType: string | null): boolean {
  return /^application\/(proto|grpc(-web)?(\+proto)?)\s*(;|$)/i.test(contentType ?? "");
}
