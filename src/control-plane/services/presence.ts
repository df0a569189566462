/**
 * When each machine was last heard from, for contacts that do not write to the database: polls
 * (GetDesiredGeneration) and stream heartbeats. Fleet status takes the newest of this, the
 * stream hub and the stored last_seen; keeping it in memory spares the database one write per
 * poll per machine. Bounded: the least recently heard entries are dropped first.
 */

const MAX_ENTRIES = 200_000;

export class Presence {
  private readonly seen = new Map<string, number>();

  touch(machineId: string, now: number): void {
    this.seen.delete(machineId);
    this.seen.set(machineId, now);
    if (this.seen.size > MAX_ENTRIES) this.seen.delete(this.seen.keys().next().value!);
  }

  get(machineId: string): number | null {
    return this.seen.get(machineId) ?? null;
  }
}
