/**
 * Delivering reports. Every Report and ReportHealth goes through a durable outbox in the journal
 * and is sent in order by unary calls (a unary answer is proof of receipt; a message written into
 * a stream is not). A report the control plane could not take — it was down, the network was —
 * is retried with back-off, across agent restarts, so ROLLED_BACK or ROLLBACK_FAILED is never
 * lost (v0.1 sent nothing when a rollback failed).
 *
 * Steady-state items are dropped when newer reports are queued behind them (an old UP_TO_DATE
 * or periodic health report says nothing a newer one doesn't); a deployment's outcome and its
 * post-apply health report are always delivered (journal.ts: outbox classes).
 *
 * INVALID_ARGUMENT is permanent only when the agent's own rules find the row malformed. A row the
 * agent considers valid — typically an enum value an older control plane does not know yet — is
 * retried with back-off and logged as an error on every refusal, never dropped.
 */
import { fromBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Logger } from "../../common/logger.js";
import {
  type ReportHealthRequest,
  ReportHealthRequestSchema,
  type ReportRequest,
  ReportRequestSchema,
} from "../../gen/nixfleet/v1/agent_pb.js";
import type { Journal, OutboxItem } from "../journal/journal.js";
import type { AgentMetrics } from "../metrics.js";
import { type BackoffOptions, reconnectDelayMs } from "../schedule.js";
import type { AgentClient } from "./client.js";
import { decodeRow, healthRow, reportRow, rowProblem } from "./outbox-row.js";

/** Errors that no retry will fix: the item is dropped (and logged) so it cannot block the queue. */
const PERMANENT = new Set<Code>([
  Code.FailedPrecondition,
  Code.NotFound,
  Code.OutOfRange,
  Code.Unimplemented,
]);

/**
 * Which queued items are worth sending: a status or periodic health item is dropped once a
 * later report of its kind is queued; an APPLYING once its deployment's outcome is queued.
 * Outcomes themselves are never dropped.
 */
export function selectDeliverable(items: readonly OutboxItem[]): { send: OutboxItem[]; drop: OutboxItem[] } {
  const send: OutboxItem[] = [];
  const drop: OutboxItem[] = [];
  items.forEach((item, i) => {
    const later = items.slice(i + 1);
    let superseded = false;
    if (item.class === "status") superseded = later.some((l) => l.kind === "report");
    else if (item.class === "health")
      superseded = later.some((l) => l.kind === "health" && l.class === "health");
    else if (item.kind === "report" && item.outcome === "APPLYING")
      superseded = later.some((l) => l.kind === "report" && l.deploymentId === item.deploymentId);
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

  /** Rows the control plane refused although they are valid here: not before this time again. */
  private readonly refusedUntil = new Map<number, number>();

  constructor(private readonly options: ReporterOptions) {
    this.updateMetrics();
  }

  /** Queues a report on its own (see reportRow for `status`) and sends it. */
  report(
    init: MessageInitShape<typeof ReportRequestSchema>,
    options: { status?: boolean } = {},
  ): ReportRequest {
    const row = reportRow(init, options);
    this.options.journal.enqueue(row);
    this.wake();
    return decodeRow(row) as ReportRequest;
  }

  health(init: MessageInitShape<typeof ReportHealthRequestSchema>): ReportHealthRequest {
    const row = healthRow(init);
    this.options.journal.enqueue(row);
    this.wake();
    return decodeRow(row) as ReportHealthRequest;
  }

  /** Something was queued (possibly by a journal transaction): send it. */
  wake(): void {
    this.updateMetrics();
    void this.flush();
  }

  private updateMetrics(): void {
    const { journal, metrics } = this.options;
    metrics.reportsPending.set(journal.outboxCount());
    for (const [kind, n] of Object.entries(journal.outboxBacklog())) metrics.reportsBacklog.set({ kind }, n);
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
    const { journal, client, log, requestTimeoutMs } = this.options;
    if (this.retryTimer) {
      clearTimeout(this.retryTimer);
      this.retryTimer = undefined;
    }
    const { send, drop } = selectDeliverable(journal.outbox());
    if (drop.length) {
      journal.removeFromOutbox(drop.map((d) => d.id));
      this.updateMetrics();
    }
    let refusedRetryAt: number | undefined;
    for (const item of send) {
      if (this.stopped) return;
      const notBefore = this.refusedUntil.get(item.id);
      if (notBefore !== undefined && Date.now() < notBefore) {
        refusedRetryAt = Math.min(refusedRetryAt ?? notBefore, notBefore);
        continue;
      }
      try {
        if (item.kind === "report") {
          await client.report(fromBinary(ReportRequestSchema, item.payload), { timeoutMs: requestTimeoutMs });
        } else {
          await client.reportHealth(fromBinary(ReportHealthRequestSchema, item.payload), {
            timeoutMs: requestTimeoutMs,
          });
        }
        journal.removeFromOutbox([item.id]);
        this.refusedUntil.delete(item.id);
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
        if (e.code === Code.InvalidArgument) {
          const problem = rowProblem(item);
          if (problem === undefined) {
            // Valid by our rules: most likely an older control plane that does not know a value
            // this agent sends. Keep it, let the rows behind it through, and retry with back-off.
            journal.markOutboxAttempt(item.id, e.message);
            const wait = reconnectDelayMs(item.attempts, this.options.backoff);
            this.refusedUntil.set(item.id, Date.now() + wait);
            refusedRetryAt = Math.min(refusedRetryAt ?? Date.now() + wait, Date.now() + wait);
            log.error(
              {
                event: "report_refused",
                kind: item.kind,
                outcome: item.outcome,
                deploymentId: item.deploymentId,
                code: Code[e.code],
                error: e.rawMessage,
                attempts: item.attempts + 1,
                retryInMs: wait,
              },
              "the control plane refused a report this agent considers valid (an older control plane that does not know a value it sends?); keeping it and retrying — upgrade the control plane",
            );
            continue;
          }
          journal.removeFromOutbox([item.id]);
          this.refusedUntil.delete(item.id);
          log.error(
            {
              event: "report_rejected",
              kind: item.kind,
              outcome: item.outcome,
              code: Code[e.code],
              error: e.rawMessage,
              problem,
            },
            "the control plane rejected a report the agent itself finds malformed; dropping it (a bug in the agent: report it)",
          );
          continue;
        }
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
        return;
      } finally {
        this.updateMetrics();
      }
    }
    if (refusedRetryAt !== undefined && !this.stopped) {
      this.retryTimer = setTimeout(
        () => {
          this.retryTimer = undefined;
          void this.flush();
        },
        Math.max(1, refusedRetryAt - Date.now()),
      );
      this.retryTimer.unref();
    }
  }

  stop(): void {
    this.stopped = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
  }
}
