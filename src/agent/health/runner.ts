/**
 * Running health checks: all at once in parallel (each with its own timeout), for the periodic
 * reporter with each check's own interval honoured (results cached in between, and dropped when
 * the generation changes), and for post-switch verification with failing checks retried until
 * they pass or verifyTimeout runs out (services need a moment after a switch).
 */
import type { AgentMetrics } from "../metrics.js";
import type { CheckResult, HealthCheck } from "./checks.js";

export interface HealthSnapshot {
  results: CheckResult[];
  allPassed: boolean;
}

export interface VerifyOptions {
  /** Absolute deadline (ms since the epoch). */
  deadline: number;
  /** Pause between re-runs of failing checks. */
  retryDelayMs?: number;
  signal?: AbortSignal;
  /** Called after every round, e.g. to log progress. */
  onRound?: (snapshot: HealthSnapshot, round: number) => void;
}

export const VERIFY_RETRY_MS = 1000;

function snapshot(results: CheckResult[]): HealthSnapshot {
  return { results, allPassed: results.every((r) => r.passed) };
}

/** Resolves after `ms`, or early (without throwing) when `signal` aborts. */
function pause(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}

export class HealthRunner {
  private cache = new Map<string, CheckResult>();
  private cachedFor: string | undefined;

  constructor(
    readonly checks: readonly HealthCheck[],
    private readonly metrics?: AgentMetrics,
    private readonly now: () => number = Date.now,
  ) {}

  private async runOne(check: HealthCheck, signal?: AbortSignal): Promise<CheckResult> {
    const started = this.now();
    let outcome: { passed: boolean; message: string };
    try {
      outcome = await check.run(signal);
    } catch (err) {
      outcome = { passed: false, message: `check crashed: ${(err as Error).message}` };
    }
    const at = this.now();
    const result: CheckResult = {
      name: check.name,
      kind: check.kind,
      durationMs: at - started,
      at,
      ...outcome,
    };
    this.metrics?.healthCheckDuration.observe(
      { check_name: check.name, check_type: check.kind },
      result.durationMs / 1000,
    );
    this.metrics?.healthCheckStatus.set({ check_name: check.name }, result.passed ? 1 : 0);
    return result;
  }

  /** Every check, now, in parallel. `generation` is what the results are cached for. */
  async runAll(generation: string | null, signal?: AbortSignal): Promise<HealthSnapshot> {
    const results = await Promise.all(this.checks.map((c) => this.runOne(c, signal)));
    this.remember(generation, results);
    return snapshot(results);
  }

  /**
   * For periodic reports: re-runs only the checks whose interval elapsed since their last run on
   * this generation, and reuses the others' cached results.
   */
  async runDue(generation: string | null, signal?: AbortSignal): Promise<HealthSnapshot> {
    if (this.cachedFor !== (generation ?? "")) {
      this.cache.clear();
      this.cachedFor = generation ?? "";
    }
    const now = this.now();
    const due = this.checks.filter((c) => {
      const last = this.cache.get(c.name);
      return last === undefined || now - last.at >= c.intervalMs;
    });
    const fresh = await Promise.all(due.map((c) => this.runOne(c, signal)));
    this.remember(generation, fresh);
    return snapshot(this.checks.map((c) => this.cache.get(c.name)!));
  }

  private remember(generation: string | null, results: CheckResult[]): void {
    if (this.cachedFor !== (generation ?? "")) {
      this.cache.clear();
      this.cachedFor = generation ?? "";
    }
    for (const r of results) this.cache.set(r.name, r);
  }

  /**
   * Post-switch verification: runs every check, then re-runs the failing ones until all have
   * passed or the deadline passes. Resolves with the latest result of each check.
   */
  async verify(generation: string, options: VerifyOptions): Promise<HealthSnapshot> {
    const latest = new Map<string, CheckResult>();
    let pending = [...this.checks];
    let round = 0;
    for (;;) {
      round++;
      const results = await Promise.all(pending.map((c) => this.runOne(c, options.signal)));
      for (const r of results) latest.set(r.name, r);
      const current = snapshot(this.checks.map((c) => latest.get(c.name)!));
      options.onRound?.(current, round);
      pending = pending.filter((c) => !latest.get(c.name)!.passed);
      if (pending.length === 0 || options.signal?.aborted) break;
      const wait = Math.min(options.retryDelayMs ?? VERIFY_RETRY_MS, options.deadline - this.now());
      if (wait <= 0) break;
      await pause(wait, options.signal);
      if (this.now() >= options.deadline || options.signal?.aborted) break;
    }
    const final = this.checks.map((c) => latest.get(c.name)!);
    this.remember(generation, final);
    return snapshot(final);
  }
}

/** "check-a (HTTP 500, expected 200); check-b (exit 1)" — the failing checks, for messages. */
export function describeFailures(snapshot: HealthSnapshot): string {
  return snapshot.results
    .filter((r) => !r.passed)
    .map((r) => `${r.name} (${r.message})`)
    .join("; ");
}
