/**
 * Delivering reports. Every Report and ReportHealth goes through a durable outbox in the journal
 * and is sent in order by unary calls (a unary answer is proof of receipt; a message written into
 * a stream is not). A report the control plane could not take — it was down, the network was —
 * is retried with back-off, across agent restarts, so ROLLED_BACK or ROLLBACK_FAILED is never
 * lost (v0.1 sent nothing when a rollback failed).
 *
 * Stale steady-state items are dropped when newer ones are queued behind them (an old
 * UP_TO_DATE or periodic health report says nothing a newer one doesn't); final outcomes and
 * post-apply health reports are always delivered.
 */
import { create, fromBinary, type MessageInitShape, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Logger } from "../../common/logger.js";
import {
  type ReportHealthRequest,
  ReportHealthRequestSchema,
  type ReportRequest,
  ReportRequestSchema,
} from "../../gen/nixfleet/v1/agent_pb.js";
import { Outcome } from "../../gen/nixfleet/v1/types_pb.js";
import type { Journal, OutboxItem } from "../journal/journal.js";
import type { AgentMetrics } from "../metrics.js";
import { type BackoffOptions, reconnectDelayMs } from "../schedule.js";
import type { AgentClient } from "./client.js";

/** Outcomes a later report makes obsolete. */
const SUPERSEDABLE = new Set<string>([
  Outcome[Outcome.UP_TO_DATE],
  Outcome[Outcome.QUARANTINED],
  Outcome[Outcome.SWITCH_LOCKED],
  Outcome[Outcome.APPLYING],
  Outcome[Outcome.DRY_RUN],
  Outcome[Outcome.FETCH_FAILED],
  Outcome[Outcome.UNSPECIFIED],
]);

/** Errors that no retry will fix: the item is dropped (and logged) so it cannot block the queue. */
const PERMANENT = new Set<Code>([
  Code.InvalidArgument,
  Code.FailedPrecondition,
  Code.NotFound,
  Code.OutOfRange,
  Code.Unimplemented,
]);

/** Which queued items are worth sending: drops superseded steady-state ones. */
export function selectDeliverable(items: readonly OutboxItem[]): { send: OutboxItem[]; drop: OutboxItem[] } {
  const send: OutboxItem[] = [];
  const drop: OutboxItem[] = [];
  items.forEach((item, i) => {
    const later = items.slice(i + 1);
    const superseded =
      item.kind === "report"
        ? SUPERSEDABLE.has(item.outcome) && later.some((l) => l.kind === "report")
        : item.outcome === "periodic" && later.some((l) => l.kind === "health" && l.outcome === "periodic");
    (superseded ? drop : send).push(item);
  });
  return { send, drop };
}

export interface ReporterOptions {
  journal: Journal;
  client: AgentClient;
  log: Logger;
  metrics: AgentMetrics;
  requestTimeoutMs: number;
  backoff: BackoffOptions;
}

export class Reporter {
  private flushing: Promise<void> | undefined;
  private again = false;
  private retryTimer: NodeJS.Timeout | undefined;
  private failures = 0;
  private stopped = false;

  constructor(private readonly options: ReporterOptions) {
    options.metrics.reportsPending.set(options.journal.outboxCount());
  }

  report(init: MessageInitShape<typeof ReportRequestSchema>): ReportRequest {
    const message = create(ReportRequestSchema, init);
    this.options.journal.enqueue({
      kind: "report",
      outcome: Outcome[message.outcome] ?? String(message.outcome),
      deploymentId: message.deploymentId,
      payload: toBinary(ReportRequestSchema, message),
    });
    this.afterEnqueue();
    return message;
  }

  health(init: MessageInitShape<typeof ReportHealthRequestSchema>): ReportHealthRequest {
    const message = create(ReportHealthRequestSchema, init);
    this.options.journal.enqueue({
      kind: "health",
      outcome: message.postApply ? "post_apply" : "periodic",
      deploymentId: message.deploymentId,
      payload: toBinary(ReportHealthRequestSchema, message),
    });
    this.afterEnqueue();
    return message;
  }

  private afterEnqueue(): void {
    this.options.metrics.reportsPending.set(this.options.journal.outboxCount());
    void this.flush();
  }

  pending(): number {
    return this.options.journal.outboxCount();
  }

  /**
   * Sends what is queued. Concurrent calls share one run; a call during a run schedules another
   * pass, so nothing enqueued meanwhile waits for the retry timer.
   */
  flush(): Promise<void> {
    if (this.stopped) return Promise.resolve();
    if (this.flushing) {
      this.again = true;
      return this.flushing;
    }
    this.flushing = (async () => {
      try {
        do {
          this.again = false;
          await this.flushOnce();
        } while (this.again && !this.stopped);
      } finally {
        this.flushing = undefined;
      }
    })();
    return this.flushing;
  }

  /** Waits for the queue to drain or `timeoutMs` to pass, whichever is first. */
  async drain(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      await Promise.race([
        this.flush(),
        new Promise((r) => setTimeout(r, Math.max(1, deadline - Date.now()))),
      ]);
      if (this.pending() === 0) return true;
      if (this.retryTimer) return false; // failing: the retry timer owns it now
    }
    return this.pending() === 0;
  }

  private async flushOnce(): Promise<void> {
    const { journal, client, log, metrics, requestTimeoutMs } = this.options;
    if (this.retryTimer) {
      clearTimeout(this.retryTimer);
      this.retryTimer = undefined;
    }
    const { send, drop } = selectDeliverable(journal.outbox());
    if (drop.length) {
      journal.removeFromOutbox(drop.map((d) => d.id));
      metrics.reportsPending.set(journal.outboxCount());
    }
    for (const item of send) {
      if (this.stopped) return;
      try {
        if (item.kind === "report") {
          await client.report(fromBinary(ReportRequestSchema, item.payload), { timeoutMs: requestTimeoutMs });
        } else {
          await client.reportHealth(fromBinary(ReportHealthRequestSchema, item.payload), {
            timeoutMs: requestTimeoutMs,
          });
        }
        journal.removeFromOutbox([item.id]);
        this.failures = 0;
        log.debug(
          {
            event: "report_delivered",
            kind: item.kind,
            outcome: item.outcome,
            deploymentId: item.deploymentId,
          },
          "report delivered",
        );
      } catch (err) {
        const e = ConnectError.from(err);
        if (PERMANENT.has(e.code)) {
          journal.removeFromOutbox([item.id]);
          log.error(
            {
              event: "report_rejected",
              kind: item.kind,
              outcome: item.outcome,
              code: Code[e.code],
              error: e.rawMessage,
            },
            "the control plane rejected a report; dropping it (fix the cause shown in error)",
          );
          continue;
        }
        journal.markOutboxAttempt(item.id, e.message);
        const delay = reconnectDelayMs(this.failures++, this.options.backoff);
        log.warn(
          {
            event: "report_failed",
            kind: item.kind,
            outcome: item.outcome,
            code: Code[e.code],
            error: e.rawMessage,
            retryInMs: delay,
          },
          "could not deliver a report; will retry",
        );
        if (!this.stopped) {
          this.retryTimer = setTimeout(() => {
            this.retryTimer = undefined;
            void this.flush();
          }, delay);
          this.retryTimer.unref();
        }
        break;
      } finally {
        metrics.reportsPending.set(journal.outboxCount());
      }
    }
  }

  stop(): void {
    this.stopped = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
  }
}
