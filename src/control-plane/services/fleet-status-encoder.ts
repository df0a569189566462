/**
 * GetFleetStatus's machines without re-reading or re-encoding the unchanged ones
 * (`status --watch` polls every 2 s; a fleet of 10,000 is ≈ 3 MB of MachineStatus). A
 * MachineStatus is two parts:
 *
 * - what only a write changes (tags, generations, outcome, health, rollout…): kept per machine —
 *   its protobuf bytes, and for JSON clients its message — under the store's status version
 *   (`machineStatusRows`: a column triggers bump on every such write, the desired revision and
 *   the active rollout assignment). Each call reads only the versions, ids and last seen of the
 *   fleet, and re-reads the records of the machines whose version moved. The version is in the
 *   database, so a machine another replica changed is re-read like any other;
 * - last seen, stale and connected, which move with every heartbeat and with the clock: encoded
 *   per call and appended (protobuf merges repeated occurrences of a message's fields, and these
 *   three are absent from the first part).
 *
 * Binary clients get the machines as already-encoded `machines` fields (field 1) in the
 * response's unknown fields, which protobuf-es writes verbatim: a binary client decodes exactly
 * the message a fresh build gives. JSON clients get messages (unknown fields have no JSON form),
 * each a shallow copy of the kept one with the per-call fields set.
 */
import { create, toBinary, type UnknownField } from "@bufbuild/protobuf";
import { WireType } from "@bufbuild/protobuf/wire";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import {
  type GetFleetStatusResponse,
  GetFleetStatusResponseSchema,
  type MachineStatus,
  MachineStatusSchema,
} from "../../gen/nixfleet/v1/fleet_pb.js";
import type { MachineRecord } from "../store/records.js";
import type { FleetStore, MachineFilter } from "../store/repository.js";
import { isStale, type LiveView, machineStatusToProto } from "./convert.js";

/** MachineStatus field numbers of the per-call part (see fleet.proto). */
const LAST_SEEN = 10;
const STALE = 11;
const CONNECTED = 12;
/** GetFleetStatusResponse.machines. */
const MACHINES = 1;
/** The most bytes a machine's entry adds to its kept bytes: its tag and length, the per-call part. */
const ENTRY_OVERHEAD = 1 + 5 + (1 + 1 + 1 + 10 + 1 + 5) + 2 + 2;

interface Kept {
  version: string;
  /** The MachineStatus without last_seen, stale and connected. */
  status: MachineStatus;
  /** Its encoding (built on the first binary call). */
  bytes: Uint8Array | null;
  healthy: boolean;
}

/** One machine of a call: its kept part and the per-call one. */
export interface FleetStatusMachine {
  id: string;
  kept: Kept;
  lastSeen: number | null;
  stale: boolean;
  connected: boolean;
}

export type FleetStatusFormat = "binary" | "json";

type StatusStore = Pick<FleetStore, "machineStatusRows" | "machineStatuses">;

export class FleetStatusEncoder {
  /** By machine id; machines are never deleted, so this is bounded by the fleet. */
  private readonly kept = new Map<string, Kept>();

  constructor(
    private readonly live: LiveView,
    private readonly staleAfterMs: number,
  ) {}

  /** The fleet status of the machines the filter picks, for a client of this format. */
  async response(
    store: StatusStore,
    filter: Omit<MachineFilter, "afterId" | "limit">,
    format: FleetStatusFormat,
    now: () => number,
    staleAfterSeconds: number,
  ): Promise<GetFleetStatusResponse> {
    const machines = await this.machines(store, filter, now);
    let inSync = 0;
    let stale = 0;
    let healthy = 0;
    for (const e of machines) {
      if (e.kept.status.inSync) inSync++;
      if (e.stale) stale++;
      if (e.kept.healthy) healthy++;
    }
    // A message, not an init shape: creating one from an init shape drops unknown fields.
    const response = create(GetFleetStatusResponseSchema, {
      total: machines.length,
      inSync,
      stale,
      healthy,
      staleAfterSeconds,
    });
    this.attach(response, machines, format);
    return response;
  }

  /**
   * The machines the filter picks, sorted by id, each with its kept status (re-read and rebuilt
   * where its version moved) and its per-call part as of `now()` after the reads.
   */
  async machines(
    store: StatusStore,
    filter: Omit<MachineFilter, "afterId" | "limit">,
    now: () => number,
  ): Promise<FleetStatusMachine[]> {
    const rows = await store.machineStatusRows(filter);
    const moved = rows.filter((r) => this.kept.get(r.id)?.version !== r.version).map((r) => r.id);
    for (const { machine, version } of await store.machineStatuses(moved))
      this.kept.set(machine.id, this.build(machine, version));
    const t = now();
    const out: FleetStatusMachine[] = [];
    for (const row of rows) {
      // Absent only if the machine were deleted between the two reads (no write path deletes one).
      const kept = this.kept.get(row.id);
      if (!kept) continue;
      const lastSeen = this.live.lastSeen(row);
      out.push({
        id: row.id,
        kept,
        lastSeen,
        stale: isStale(row, lastSeen, t, this.staleAfterMs),
        connected: this.live.connected(row.id),
      });
    }
    return out;
  }

  /**
   * Puts these machines into a message's `machines` (field 1 of both GetFleetStatusResponse and
   * FleetSnapshotPage): for binary clients as already-encoded fields among its unknown fields,
   * for JSON clients as messages.
   */
  attach(
    target: { machines: MachineStatus[]; $unknown?: UnknownField[] },
    machines: readonly FleetStatusMachine[],
    format: FleetStatusFormat,
  ): void {
    if (format === "json") {
      target.machines = machines.map((e) => ({
        ...e.kept.status,
        lastSeen: e.lastSeen === null ? undefined : timestampFromMs(e.lastSeen),
        stale: e.stale,
        connected: e.connected,
      }));
    } else if (machines.length > 0) {
      // toBinary writes an unknown field as its tag and then its data verbatim: the data here is
      // everything after the first entry's tag (one byte: field 1, length-delimited), so the
      // bytes written are exactly the entries.
      target.$unknown = [
        { no: MACHINES, wireType: WireType.LengthDelimited, data: this.encode(machines).subarray(1) },
      ];
    }
  }

  /** Every entry as a `machines` field, one after the other, in one buffer sized up front. */
  private encode(entries: readonly FleetStatusMachine[]): Uint8Array {
    let size = 0;
    for (const e of entries) {
      e.kept.bytes ??= toBinary(MachineStatusSchema, e.kept.status);
      size += e.kept.bytes.length + ENTRY_OVERHEAD;
    }
    const out = new Uint8Array(size);
    let at = 0;
    const varint = (n: number) => {
      while (n > 0x7f) {
        out[at++] = (n % 0x80) | 0x80;
        n = Math.floor(n / 0x80);
      }
      out[at++] = n;
    };
    const tag = (field: number, wireType: WireType) => varint((field << 3) | wireType);
    for (const e of entries) {
      const bytes = e.kept.bytes!;
      // The per-call part, as protobuf-es writes it (proto3: zero values are not written).
      let seconds = 0;
      let nanos = 0;
      let timestamp = 0;
      if (e.lastSeen !== null) {
        seconds = Math.floor(e.lastSeen / 1000);
        nanos = (e.lastSeen - seconds * 1000) * 1_000_000;
        timestamp = (seconds !== 0 ? 1 + varintSize(seconds) : 0) + (nanos !== 0 ? 1 + varintSize(nanos) : 0);
      }
      const length =
        bytes.length + (e.lastSeen !== null ? 2 + timestamp : 0) + (e.stale ? 2 : 0) + (e.connected ? 2 : 0);
      tag(MACHINES, WireType.LengthDelimited);
      varint(length);
      out.set(bytes, at);
      at += bytes.length;
      if (e.lastSeen !== null) {
        tag(LAST_SEEN, WireType.LengthDelimited);
        varint(timestamp);
        if (seconds !== 0) {
          tag(1, WireType.Varint);
          varint(seconds);
        }
        if (nanos !== 0) {
          tag(2, WireType.Varint);
          varint(nanos);
        }
      }
      if (e.stale) {
        tag(STALE, WireType.Varint);
        varint(1);
      }
      if (e.connected) {
        tag(CONNECTED, WireType.Varint);
        varint(1);
      }
    }
    return out.subarray(0, at);
  }

  private build(m: MachineRecord, version: string): Kept {
    const status = create(MachineStatusSchema, machineStatusToProto(m, this.live, 0, this.staleAfterMs));
    status.lastSeen = undefined;
    status.stale = false;
    status.connected = false;
    return { version, status, bytes: null, healthy: m.health?.allPassed === true };
  }
}

/** How many bytes a non-negative integer takes as a varint. */
function varintSize(n: number): number {
  let size = 1;
  while (n > 0x7f) {
    n = Math.floor(n / 0x80);
    size++;
  }
  return size;
}

/** Whether a request's messages (and so its response's) are binary protobuf. */
export function isBinaryRequest(contentType: string | null): boolean {
  return /^application\/(proto|connect\+proto|grpc(-web)?(\+proto)?)\s*(;|$)/i.test(contentType ?? "");
}
