/**
 * When each machine was last heard from, for contacts that do not write to the database: polls
 * (GetDesiredGeneration), stream hellos and heartbeats. Fleet status takes the newest of this,
 * the stream hub and the stored last_seen; keeping it in memory spares the database one write
 * per poll per machine. Bounded: the least recently heard entries are dropped first.
 *
 * With several replicas, shared presence (cluster/shared-presence.ts) asks for the machines
 * heard since its last flush and writes them in one statement.
 */

const MAX_ENTRIES = 200_000;

export class Presence {
  private readonly seen = new Map<string, number>();
  /** Machines heard since the last takeChanged(); null while nobody asks (one replica). */
  private changed: Set<string> | null = null;

  touch(machineId: string, now: number): void {
    this.seen.delete(machineId);
    this.seen.set(machineId, now);
    if (this.seen.size > MAX_ENTRIES) this.seen.delete(this.seen.keys().next().value!);
    this.changed?.add(machineId);
  }

  get(machineId: string): number | null {
    return this.seen.get(machineId) ?? null;
  }

  /** Every machine heard here (most recently heard last). */
  ids(): IterableIterator<string> {
    return this.seen.keys();
  }

  /** From now on, record which machines are heard (for takeChanged). */
  trackChanges(): void {
    this.changed ??= new Set();
  }

  /** The machines heard since the previous call. */
  takeChanged(): string[] {
    if (!this.changed) return [];
    const ids = [...this.changed];
    this.changed.clear();
    return ids;
  }
}
