/**
 * Several control-plane URLs behind one Connect `Transport`, for the agent and the CLI. Calls go
 * to one of them at a time — the last one that worked, the first at start — and move to the next
 * when it is unreachable: connection
 * refused, name not resolved, connect timeout, or an answer of UNAVAILABLE (a replica shutting
 * down, a load balancer with no healthy backend). A deadline that passed also counts: a replica
 * that hangs must not hold the agent.
 *
 * - Unary calls try the remaining URLs at once, in order, within the same call: a refused
 *   connection costs milliseconds, and each call already carries its own deadline. When every
 *   URL failed, the last error is the call's, and the caller's own back-off (the report outbox,
 *   the cycle's retryInterval) decides when to try again.
 * - A server-streaming call (Watch, WatchRollout) sends one request message, kept here, so when
 *   its URL fails before the first answer the call is sent again to the next URL, like a unary.
 * - A bidi stream (Session) cannot be replayed — its request is a live queue — so a stream that
 *   fails on a URL only marks it failed; the agent's push channel's jittered, capped reconnect
 *   back-off then opens the next stream on the next URL.
 *
 * One URL is the common case (a single control plane, or one load-balanced name): everything
 * then behaves exactly as before, without failover messages.
 */
import type { DescMessage, DescMethodStreaming, DescMethodUnary, MessageInitShape } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  type ContextValues,
  type StreamResponse,
  type Transport,
  type UnaryResponse,
} from "@connectrpc/connect";
import type { Logger } from "./logger.js";

/** The headers argument of a call (HeadersInit, which this project's lib settings do not name). */
type Header = Parameters<Transport["unary"]>[3];

export interface Endpoint {
  url: string;
  transport: Transport;
  close(): void;
}

/** Errors after which another URL may do better. Anything else is the control plane's answer. */
export function isUnreachable(err: unknown): boolean {
  const code = ConnectError.from(err).code;
  return code === Code.Unavailable || code === Code.DeadlineExceeded;
}

export class FailoverTransport implements Transport {
  private index = 0;

  constructor(
    readonly endpoints: readonly Endpoint[],
    private readonly log?: Logger,
  ) {
    if (endpoints.length === 0) throw new Error("at least one control-plane URL is needed");
  }

  /** The URL the next call goes to: the last one that answered (or the first, at start). */
  get currentUrl(): string {
    return this.endpoints[this.index]!.url;
  }

  /** `failed` (an index) did not answer: later calls go to the next URL in the list. */
  private markFailed(failed: number, err: unknown): void {
    if (this.endpoints.length === 1 || failed !== this.index) return; // someone already moved on
    const next = (failed + 1) % this.endpoints.length;
    this.index = next;
    this.log?.warn(
      {
        event: "control_plane_failover",
        from: this.endpoints[failed]!.url,
        to: this.endpoints[next]!.url,
        error: ConnectError.from(err).message,
      },
      "control plane unreachable; trying the next URL",
    );
  }

  private markWorking(index: number): void {
    this.index = index;
  }

  async unary<I extends DescMessage, O extends DescMessage>(
    method: DescMethodUnary<I, O>,
    signal: AbortSignal | undefined,
    timeoutMs: number | undefined,
    header: Header,
    input: MessageInitShape<I>,
    contextValues?: ContextValues,
  ): Promise<UnaryResponse<I, O>> {
    return this.eachEndpoint(signal, async (i) => {
      const response = await this.endpoints[i]!.transport.unary(
        method,
        signal,
        timeoutMs,
        header,
        input,
        contextValues,
      );
      this.markWorking(i);
      return response;
    });
  }

  async stream<I extends DescMessage, O extends DescMessage>(
    method: DescMethodStreaming<I, O>,
    signal: AbortSignal | undefined,
    timeoutMs: number | undefined,
    header: Header,
    input: AsyncIterable<MessageInitShape<I>>,
    contextValues?: ContextValues,
  ): Promise<StreamResponse<I, O>> {
    if (method.methodKind !== "server_streaming") {
      return this.liveStream(this.index, method, signal, timeoutMs, header, input, contextValues);
    }
    const request: MessageInitShape<I>[] = [];
    for await (const m of input) request.push(m);
    return this.eachEndpoint(signal, async (i) => {
      const response = await this.endpoints[i]!.transport.stream(
        method,
        signal,
        timeoutMs,
        header,
        replay(request),
        contextValues,
      );
      // Wait for the first answer: until then, another URL may still take the call.
      const messages = response.message[Symbol.asyncIterator]();
      const first = await messages.next();
      this.markWorking(i);
      return { ...response, message: this.rest(i, first, messages) };
    });
  }

  /**
   * Runs `call` on each endpoint in turn, from the one that last answered, until one answers.
   * Only unreachability moves on; a deadline is the whole call's budget, spent on that URL.
   */
  private async eachEndpoint<T>(
    signal: AbortSignal | undefined,
    call: (i: number) => Promise<T>,
  ): Promise<T> {
    const start = this.index;
    let lastError: unknown;
    for (let tried = 0; tried < this.endpoints.length; tried++) {
      const i = (start + tried) % this.endpoints.length;
      try {
        return await call(i);
      } catch (err) {
        if (signal?.aborted || !isUnreachable(err)) throw err;
        this.markFailed(i, err);
        lastError = err;
        if (ConnectError.from(err).code === Code.DeadlineExceeded) break;
      }
    }
    throw lastError;
  }

  /** A bidi stream on endpoint `i`: not replayable, so a failure only moves later calls on. */
  private async liveStream<I extends DescMessage, O extends DescMessage>(
    i: number,
    method: DescMethodStreaming<I, O>,
    signal: AbortSignal | undefined,
    timeoutMs: number | undefined,
    header: Header,
    input: AsyncIterable<MessageInitShape<I>>,
    contextValues?: ContextValues,
  ): Promise<StreamResponse<I, O>> {
    let response: StreamResponse<I, O>;
    try {
      response = await this.endpoints[i]!.transport.stream(
        method,
        signal,
        timeoutMs,
        header,
        input,
        contextValues,
      );
    } catch (err) {
      // Even when the caller aborted: the agent's watchdog aborts a silent stream as UNAVAILABLE.
      if (isUnreachable(err)) this.markFailed(i, err);
      throw err;
    }
    const messages = response.message[Symbol.asyncIterator]();
    return { ...response, message: this.rest(i, undefined, messages) };
  }

  /** The rest of a stream's messages; the first answer proves the URL works. */
  private async *rest<T>(
    i: number,
    first: IteratorResult<T> | undefined,
    messages: AsyncIterator<T>,
  ): AsyncGenerator<T> {
    try {
      if (first) {
        if (first.done) return;
        yield first.value;
      }
      for (;;) {
        const next = await messages.next();
        if (next.done) return;
        if (!first) {
          first = next;
          this.markWorking(i);
        }
        yield next.value;
      }
    } catch (err) {
      if (isUnreachable(err)) this.markFailed(i, err);
      throw err;
    } finally {
      await messages.return?.();
    }
  }

  close(): void {
    for (const e of this.endpoints) e.close();
  }
}

/** The kept request of a server-streaming call, as a fresh iterable for each attempt. */
async function* replay<T>(items: readonly T[]): AsyncIterable<T> {
  yield* items;
}
