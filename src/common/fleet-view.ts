/**
 * A client's copy of the fleet built from a WatchFleet stream: snapshot pages replace it, changes
 * update one machine each. Shared by `nixfleet status --watch` and the dashboard; it imports only
 * generated types, so it runs in Node and in the browser alike.
 */
import {
  FleetChangeKind,
  HealthState,
  type MachineStatus,
  type WatchFleetResponse,
} from "../gen/nixfleet/v1/fleet_pb.js";

export interface FleetSummary {
  total: number;
  inSync: number;
  stale: number;
  healthy: number;
}

export class FleetView {
  private machines = new Map<string, MachineStatus>();
  /** The snapshot being received (pages first..last), swapped in at its last page. */
  private incoming: Map<string, MachineStatus> | null = null;
  private sortedCache: MachineStatus[] | null = null;
  epoch = "";
  revision = 0n;
  staleAfterSeconds = 0;
  /** A whole snapshot has arrived: the view shows the fleet. */
  complete = false;

  /** Applies one message; true when the complete view changed (worth drawing again). */
  apply(msg: WatchFleetResponse): boolean {
    this.epoch = msg.epoch;
    if (msg.revision > this.revision || msg.message.case === "snapshot") this.revision = msg.revision;
    const m = msg.message;
    if (m.case === "snapshot") {
      if (m.value.first || !this.incoming) this.incoming = new Map();
      for (const s of m.value.machines) this.incoming.set(s.machineId, s);
      this.staleAfterSeconds = m.value.staleAfterSeconds;
      if (!m.value.last) return false;
      this.machines = this.incoming;
      this.incoming = null;
      this.sortedCache = null;
      this.complete = true;
      return true;
    }
    if (m.case !== "change") return false;
    const target = this.incoming ?? this.machines;
    if (m.value.kind === FleetChangeKind.REMOVED || !m.value.machine) target.delete(m.value.machineId);
    else target.set(m.value.machineId, m.value.machine);
    this.sortedCache = null;
    return this.complete && !this.incoming;
  }

  /**
   * Where to resume after a reconnect: empty (a fresh snapshot) before the first complete
   * snapshot or when the break came in the middle of one.
   */
  resumePoint(): { resumeEpoch: string; resumeRevision: bigint } {
    if (!this.complete || this.incoming) return { resumeEpoch: "", resumeRevision: 0n };
    return { resumeEpoch: this.epoch, resumeRevision: this.revision };
  }

  /** The machines ordered by id, like GetFleetStatus. */
  list(): MachineStatus[] {
    this.sortedCache ??= [...this.machines.values()].sort((a, b) =>
      a.machineId < b.machineId ? -1 : a.machineId > b.machineId ? 1 : 0,
    );
    return this.sortedCache;
  }

  /** GetFleetStatus's counts, for the machines held. */
  summary(): FleetSummary {
    let inSync = 0;
    let stale = 0;
    let healthy = 0;
    for (const m of this.machines.values()) {
      if (m.inSync) inSync++;
      if (m.stale) stale++;
      if (m.health?.state === HealthState.HEALTHY) healthy++;
    }
    return { total: this.machines.size, inSync, stale, healthy };
  }
}
