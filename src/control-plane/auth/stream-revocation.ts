/**
 * Ends FleetService streams (WatchFleet, WatchRollout) whose API key has been revoked.
 *
 * The key is checked when a call opens; a stream then lives for hours. A revocation can come
 * through this process's RevokeApiKey (checked at once), another replica's on a shared PostgreSQL,
 * or `nixfleet-control-plane keys revoke` writing straight to the database — so while any
 * stream is open, the keys behind them are re-read from the database every `recheckMs` (one
 * small query: operators hold few keys), and a revoked or deleted key's streams end with
 * UNAUTHENTICATED.
 */
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import type { Logger } from "../../common/logger.js";
import type { FleetStore } from "../store/repository.js";
import { principalKey } from "./interceptors.js";

export const DEFAULT_KEY_RECHECK_MS = 5000;

export interface StreamRevocationOptions {
  store: () => FleetStore;
  logger: Logger;
  /** How often the keys of open streams are re-read (default DEFAULT_KEY_RECHECK_MS). */
  recheckMs?: number;
}

type End = (err: ConnectError) => void;

export class StreamRevocation {
  /** Open streams by API key id. */
  private readonly streams = new Map<string, Set<End>>();
  private timer: NodeJS.Timeout | null = null;
  private checking: Promise<void> | null = null;

  constructor(private readonly o: StreamRevocationOptions) {}

  /** The interceptor: wraps every server stream opened with an API key. */
  interceptor(): Interceptor {
    return (next) => async (req) => {
      const res = await next(req);
      const principal = req.contextValues.get(principalKey);
      if (!res.stream || !principal) return res;
      return { ...res, message: this.guard(principal.keyId, res.message) };
    };
  }

  /** Re-reads the keys of open streams now (after a revocation in this process). */
  check(): Promise<void> {
    if (!this.checking) {
      this.checking = this.recheck().finally(() => {
        this.checking = null;
      });
    }
    return this.checking;
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  private async recheck(): Promise<void> {
    if (this.streams.size === 0) return;
    let keys: Awaited<ReturnType<FleetStore["listApiKeys"]>>;
    try {
      keys = await this.o.store().listApiKeys(true);
    } catch (err) {
      this.o.logger.warn({ err }, "could not re-read the API keys of open streams; retrying");
      return;
    }
    const byId = new Map(keys.map((k) => [k.id, k]));
    for (const [keyId, ends] of this.streams) {
      const key = byId.get(keyId);
      if (key && key.revokedAt === null) continue;
      const name = key?.name ?? keyId;
      this.o.logger.info({ keyId, streams: ends.size }, `API key ${name} was revoked: ending its streams`);
      const err = new ConnectError(
        `API key ${name} was revoked; this stream ends (open it again with a valid key)`,
        Code.Unauthenticated,
      );
      for (const end of ends) end(err);
      this.streams.delete(keyId);
    }
    this.idle();
  }

  private register(keyId: string, end: End): () => void {
    const ends = this.streams.get(keyId) ?? new Set<End>();
    this.streams.set(keyId, ends);
    ends.add(end);
    if (!this.timer) {
      this.timer = setInterval(() => void this.check(), this.o.recheckMs ?? DEFAULT_KEY_RECHECK_MS);
      this.timer.unref();
    }
    return () => {
      const set = this.streams.get(keyId);
      set?.delete(end);
      if (set?.size === 0) this.streams.delete(keyId);
      this.idle();
    };
  }

  /** No stream open: no timer (an idle control plane does not poll its keys). */
  private idle(): void {
    if (this.streams.size === 0) this.stop();
  }

  /**
   * The stream's messages until its key is revoked. One promise per message, rejected by the
   * revocation — not a race against one long-lived promise, which would keep a reaction per
   * message for the stream's whole life.
   */
  private async *guard<T>(keyId: string, source: AsyncIterable<T>): AsyncGenerator<T> {
    const it = source[Symbol.asyncIterator]();
    let revoked: ConnectError | null = null;
    let fail: End | null = null;
    const unregister = this.register(keyId, (err) => {
      revoked = err;
      fail?.(err);
    });
    let finished = false;
    try {
      for (;;) {
        const r = await new Promise<IteratorResult<T>>((resolve, reject) => {
          if (revoked) {
            reject(revoked);
            return;
          }
          fail = reject;
          it.next().then(resolve, reject);
        });
        fail = null;
        if (r.done) {
          finished = true;
          return;
        }
        yield r.value;
      }
    } finally {
      unregister();
      // The handler may be waiting for its next change: its return is queued until then, and
      // Connect aborts the call's signal as this stream ends, which wakes it.
      if (!finished) it.return?.()?.catch(() => {});
    }
  }
}
