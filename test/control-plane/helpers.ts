/**
 * Small test helpers for the control-plane suites: valid store paths, polling with a deadline.
 */
import { createHash } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";

const ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz";

/** A syntactically valid store path, distinct per (name, n). */
export function storePath(name: string, n = 0): string {
  const digest = createHash("sha256").update(`${name}:${n}`).digest();
  let hash = "";
  for (let i = 0; i < 32; i++) hash += ALPHABET[digest[i]! % 32];
  return `/nix/store/${hash}-${name}`;
}

/** Polls `fn` until it returns a truthy value or the deadline passes (then throws, saying what). */
export async function waitFor<T>(
  what: string,
  fn: () => Promise<T | undefined | null | false> | T | undefined | null | false,
  timeoutMs = 15_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await fn();
      if (value) return value;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline)
      throw new Error(
        `timed out after ${timeoutMs} ms waiting for ${what}${last ? ` (last error: ${String(last)})` : ""}`,
      );
    await sleep(20);
  }
}

/** An async iterable the test feeds by hand (a client stream's requests). */
export class Feed<T> implements AsyncIterable<T> {
  private items: T[] = [];
  private wake: (() => void) | null = null;
  private ended = false;

  push(item: T): void {
    this.items.push(item);
    this.wake?.();
  }

  end(): void {
    this.ended = true;
    this.wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    for (;;) {
      const next = this.items.shift();
      if (next !== undefined) {
        yield next;
        continue;
      }
      if (this.ended) return;
      await new Promise<void>((resolve) => {
        this.wake = resolve;
      });
      this.wake = null;
    }
  }
}

/** Collects a stream's messages so a test can wait for the one it expects. */
export class Inbox<T> {
  readonly messages: T[] = [];
  error: unknown = undefined;
  done = false;
  readonly finished: Promise<void>;

  constructor(stream: AsyncIterable<T>) {
    this.finished = (async () => {
      try {
        for await (const m of stream) this.messages.push(m);
      } catch (err) {
        this.error = err;
      } finally {
        this.done = true;
      }
    })();
  }

  /** Waits for a message matching `pred` that arrived after index `from`. */
  async next(what: string, pred: (m: T) => boolean, from = 0, timeoutMs = 15_000): Promise<T> {
    return waitFor(
      what,
      () =>
        this.messages.slice(from).find(pred) ??
        (this.done ? Promise.reject(new Error(`stream ended: ${String(this.error)}`)) : undefined),
      timeoutMs,
    );
  }
}
