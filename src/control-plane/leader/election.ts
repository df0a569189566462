/**
 * Executor leadership between replicas on one PostgreSQL database: every replica claims the lease
 * row every `renewMs` (a third of the TTL by default); the holder renews it, the others follow
 * until it expires, then one of them acquires it with the next epoch. Which replica leads is
 * decided by the database (the row lock and its clock, store/lease.ts); this class only keeps
 * asking and tells the executor when to start and stop.
 *
 * Stepping down happens on whichever comes first: a claim answered "follow", the local deadline of
 * the last granted lease passing without a renewal (the database unreachable), or an executor
 * write refused by the fence (deposed(): another replica has led since). The fence is what makes
 * leadership safe; the deadline only keeps a replica cut off from the database from pretending.
 */
import type { Logger } from "../../common/logger.js";
import type { LeaseClaim } from "../store/lease.js";
import { localDeadline } from "./lease.js";

export interface LeaseStore {
  claimExecutorLease(holder: string, ttlMs: number, now: number): Promise<LeaseClaim>;
  releaseExecutorLease(holder: string, epoch: number, now: number): Promise<boolean>;
}

export interface ElectionOptions {
  store: LeaseStore;
  /** This process's id in the lease row: unique per start (host, pid, random). */
  holderId: string;
  ttlMs: number;
  renewMs: number;
  logger: Logger;
  /** Called on becoming leader with the epoch that fences this term's writes. */
  onLead(epoch: number): void;
  /** Called on losing leadership (the executor stops at once). */
  onFollow(): void;
  /** Wall clock (ms), passed to the store (only SQLite uses it). */
  now?: () => number;
  /** Monotonic clock (ms) for the local deadline: wall-clock steps must not extend a lease. */
  monotonic?: () => number;
}

export class LeaseElection {
  private epochValue: number | null = null;
  /** Results for this epoch or older are stale: a fenced write proved another replica led since. */
  private refusedEpoch = 0;
  private renewTimer: NodeJS.Timeout | null = null;
  private deadlineTimer: NodeJS.Timeout | null = null;
  private inFlight: Promise<void> = Promise.resolve();
  private stopped = false;
  private failing = false;
  private started = false;

  constructor(private readonly o: ElectionOptions) {}

  /** The epoch while leading, else null. */
  get epoch(): number | null {
    return this.epochValue;
  }

  get leading(): boolean {
    return this.epochValue !== null;
  }

  get holderId(): string {
    return this.o.holderId;
  }

  /** Claims at once (resolving when that first claim is answered), then every renewMs. */
  start(): Promise<void> {
    if (this.stopped || this.started) return this.inFlight;
    this.started = true;
    this.inFlight = this.claim().finally(() => this.schedule(this.o.renewMs));
    return this.inFlight;
  }

  /** Stops claiming; a leader gives the lease back so another replica takes over at once. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.renewTimer) clearTimeout(this.renewTimer);
    this.renewTimer = null;
    await this.inFlight;
    const epoch = this.epochValue;
    this.stepDown("shutting down", "info");
    if (epoch === null) return;
    try {
      if (await this.o.store.releaseExecutorLease(this.o.holderId, epoch, this.now()))
        this.o.logger.info({ epoch }, "executor lease given back; another replica takes over at once");
    } catch (err) {
      this.o.logger.warn({ err, epoch }, "could not give the executor lease back; it expires by itself");
    }
  }

  /** An executor write carrying `epoch` was refused by the fence: stop leading now. */
  deposed(epoch: number): void {
    this.refusedEpoch = Math.max(this.refusedEpoch, epoch);
    if (this.epochValue !== null && this.epochValue <= epoch)
      this.stepDown(`a write of epoch ${epoch} was refused: another replica has led since`);
  }

  private now(): number {
    return (this.o.now ?? Date.now)();
  }

  private monotonic(): number {
    return (this.o.monotonic ?? performance.now.bind(performance))();
  }

  private schedule(delayMs: number): void {
    if (this.stopped) return;
    this.renewTimer = setTimeout(() => {
      this.renewTimer = null;
      this.inFlight = this.claim().finally(() => this.schedule(this.o.renewMs));
    }, delayMs);
    this.renewTimer.unref();
  }

  private async claim(): Promise<void> {
    const sentAt = this.monotonic();
    let claim: LeaseClaim;
    try {
      claim = await this.o.store.claimExecutorLease(this.o.holderId, this.o.ttlMs, this.now());
    } catch (err) {
      // Logged once per outage; the deadline timer steps down if it outlasts the lease.
      if (!this.failing) this.o.logger.warn({ err }, "claiming the executor lease failed; retrying");
      this.failing = true;
      return;
    }
    if (this.failing) this.o.logger.info("claiming the executor lease works again");
    this.failing = false;
    if (this.stopped) return;
    const deadline = localDeadline(sentAt, this.o.ttlMs);
    const granted = claim.kind !== "follow" && claim.row.epoch > this.refusedEpoch;
    if (!granted || deadline <= this.monotonic()) {
      if (this.leading)
        this.stepDown(
          granted
            ? "the lease renewal came back too late"
            : `${claim.row.holder} holds the lease (epoch ${claim.row.epoch})`,
        );
      return;
    }
    this.armDeadline(deadline);
    if (this.epochValue === claim.row.epoch) return;
    if (this.epochValue !== null) this.stepDown(`the lease moved to epoch ${claim.row.epoch}`);
    this.epochValue = claim.row.epoch;
    this.o.logger.info(
      { epoch: claim.row.epoch, holder: this.o.holderId, leaseMs: this.o.ttlMs },
      `became executor leader (epoch ${claim.row.epoch})`,
    );
    this.o.onLead(claim.row.epoch);
  }

  private armDeadline(deadline: number): void {
    if (this.deadlineTimer) clearTimeout(this.deadlineTimer);
    this.deadlineTimer = setTimeout(
      () => this.stepDown("the lease expired without a renewal (is the database reachable?)"),
      Math.max(0, deadline - this.monotonic()),
    );
    this.deadlineTimer.unref();
  }

  private stepDown(reason: string, level: "warn" | "info" = "warn"): void {
    if (this.deadlineTimer) clearTimeout(this.deadlineTimer);
    this.deadlineTimer = null;
    const epoch = this.epochValue;
    if (epoch === null) return;
    this.epochValue = null;
    this.o.logger[level]({ epoch, reason }, `lost executor leadership: ${reason}`);
    this.o.onFollow();
  }
}
