/**
 * In-process notification that a rollout changed, so WatchRollout streams wake up at once. It
 * only says "look again": the stream reads the events themselves from the store, in order, so
 * nothing is lost or reordered if notifications coalesce.
 */
import { EventEmitter } from "node:events";

export class RolloutChanges {
  private readonly emitter = new EventEmitter();

  constructor() {
    this.emitter.setMaxListeners(0);
  }

  publish(rolloutId: string): void {
    this.emitter.emit(rolloutId);
  }

  /** Calls `listener` on every change of `rolloutId`; returns the unsubscribe function. */
  subscribe(rolloutId: string, listener: () => void): () => void {
    this.emitter.on(rolloutId, listener);
    return () => this.emitter.off(rolloutId, listener);
  }
}
