/**
 * The rollout executor: moves running rollouts along. It is driven by events — a report or
 * health report from a machine in a running rollout, a new or resumed rollout — and by a
 * periodic tick that catches timeouts and soak periods. Every evaluation reads the rollout (its
 * fields and batches; the machines' evidence comes from gateEvidence) from the store, decides with the pure gate and state machine, and applies the decision in one
 * store transaction, so a control plane restarted mid-rollout simply continues.
 *
 * Evaluations run one at a time (a single queue); repeated requests for a rollout already
 * waiting in the queue coalesce, so a burst of reports from one batch costs one evaluation.
 *
 * It acts only while this process leads (lead()/follow(), from ../leader/): with several replicas
 * on one database exactly one leads, and kicks and ticks elsewhere are cheap no-ops — so kick()
 * may be called on every replica. Each write carries the term's epoch; one refused by the fence
 * (another replica has led since) ends this process's term at once (onFenced).
 */
import type { Logger } from "../../common/logger.js";
import type { Clock } from "../clock.js";
import { StaleEpochError } from "../store/lease.js";
import type { FleetStore } from "../store/repository.js";
import type { RolloutHead } from "../store/rollout-reads.js";
import { type BatchVerdict, classifyMachine, type MachineGate } from "./gate.js";
import type { RolloutNotifier } from "./notifier.js";
import { nextStep } from "./state-machine.js";
import { parseFailureThreshold } from "./threshold.js";

export interface ExecutorOptions {
  store: FleetStore;
  clock: Clock;
  notifier: RolloutNotifier;
  logger: Logger;
  tickMs: number;
  /** An executor write of `epoch` was refused: another replica leads now. */
  onFenced?: (epoch: number) => void;
}

/** One term of leadership: the epoch fencing its writes (null: the sole process on SQLite). */
interface Term {
  epoch: number | null;
}

/** A bound on steps per evaluation; a rollout needs at most two per batch. */
const MAX_STEPS = 10_000;

export class RolloutExecutor {
  private chain: Promise<void> = Promise.resolve();
  private readonly queued = new Map<string, Promise<void>>();
  private timer: NodeJS.Timeout | null = null;
  private stopped = false;
  private term: Term | null = null;

  constructor(private readonly o: ExecutorOptions) {}

  /** Whether this process runs rollouts now. */
  get leading(): boolean {
    return this.term !== null;
  }

  /**
   * Starts acting as the leader of `epoch` (null: unfenced, the sole process on SQLite) and
   * evaluates every running rollout at once — whatever the previous leader left half done.
   */
  lead(epoch: number | null): void {
    this.term = { epoch };
    void this.tick();
  }

  /** Stops acting: kicks become no-ops, and an evaluation in progress ends before its next write. */
  follow(): void {
    this.term = null;
  }

  start(): void {
    if (this.timer || this.stopped) return;
    this.timer = setInterval(() => {
      void this.tick();
    }, this.o.tickMs);
    this.timer.unref();
    void this.tick();
  }

  /** Stops ticking and waits for the evaluation in progress (if any) to finish. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.chain;
  }

  /** Evaluates every running rollout (timeouts, soak, and anything a restart left half done). */
  async tick(): Promise<void> {
    if (this.stopped || !this.term) return;
    let ids: string[];
    try {
      ids = await this.o.store.runningRolloutIds();
    } catch (err) {
      this.o.logger.error({ err }, "executor tick could not list running rollouts; retrying next tick");
      return;
    }
    await Promise.all(ids.map((id) => this.kick(id)));
  }

  /**
   * Schedules an evaluation of a rollout; resolves when it has run. Not leading: resolves at once
   * and does nothing (the leader evaluates the rollout on its own kick or tick).
   */
  kick(rolloutId: string): Promise<void> {
    if (this.stopped || !this.term) return Promise.resolve();
    const waiting = this.queued.get(rolloutId);
    if (waiting) return waiting;
    const run = this.chain.then(async () => {
      this.queued.delete(rolloutId);
      const term = this.term;
      if (this.stopped || !term) return;
      try {
        await this.evaluate(rolloutId, term);
      } catch (err) {
        if (err instanceof StaleEpochError) this.fenced(term, err);
        else
          this.o.logger.error(
            { err, rolloutId },
            "rollout evaluation failed; it is retried on the next tick",
          );
      }
    });
    this.queued.set(rolloutId, run);
    this.chain = run;
    return run;
  }

  private fenced(term: Term, err: StaleEpochError): void {
    this.o.logger.error(
      { epoch: err.epoch, currentEpoch: err.current.epoch, holder: err.current.holder },
      `${err.message}; nothing was written, and this replica stops acting as the executor leader`,
    );
    if (this.term === term) this.term = null;
    this.o.onFenced?.(err.epoch);
  }

  private async evaluate(rolloutId: string, term: Term): Promise<void> {
    const { store, clock } = this.o;
    const { epoch } = term;
    // The record a write just returned (as the store now reads it): the next step starts from it
    // instead of reading the whole rollout again. Later writes re-check what they depend on.
    let known: RolloutHead | null = null;
    for (let step = 0; step < MAX_STEPS; step++) {
      // Deposed meanwhile (follow()): stop before deciding anything more.
      if (this.term !== term) return;
      const rollout = known ?? (await store.rolloutHead(rolloutId));
      known = null;
      if (rollout?.status !== "running") return;
      const batch = rollout.batches[rollout.currentBatch];
      const threshold = parseFailureThreshold(rollout.failureThreshold);
      if (typeof threshold === "string") {
        // Validated at creation; a corrupt row must not loop forever.
        this.o.logger.error(
          { rolloutId, threshold: rollout.failureThreshold },
          "stored failure threshold is invalid",
        );
        return;
      }
      let gates: MachineGate[] | undefined;
      const now = clock.now();
      if (batch?.status === "deploying" && batch.startedAt !== null && batch.startedSeq !== null) {
        const { startedAt, startedSeq } = batch;
        const evidence = await store.gateEvidence(rolloutId, batch.index);
        gates = evidence.map((e) =>
          classifyMachine(
            {
              machineId: e.machineId,
              target: e.targetGeneration,
              startedAt,
              startedSeq,
              healthTimeoutMs: rollout.healthTimeoutSeconds * 1000,
              soakMs: rollout.soakSeconds * 1000,
              currentGeneration: e.currentGeneration,
              latestOutcome: e.latestOutcome,
              latestHealth: e.latestHealth,
              passingSince: e.passingSince,
            },
            now,
          ),
        );
      }
      const decision = nextStep(rollout, gates, threshold);
      switch (decision.kind) {
        case "none":
        case "complete":
          return;
        case "start-batch": {
          const change = await store.startBatch(rolloutId, decision.index, clock.now(), epoch);
          if (!change) return;
          this.o.notifier.applied(change);
          // The pushes are on the streams now; node:http2 writes them to the sockets on the event
          // loop's next turn. Give it that turn before the gate's reads (on SQLite they never
          // yield), so no agent waits for the gate.
          await nextTurn();
          known = change.rollout;
          continue;
        }
        case "wait": {
          const events = await store.recordGate(
            rolloutId,
            decision.index,
            batch!.startedSeq!,
            gates!,
            now,
            epoch,
          );
          this.o.notifier.gateRecorded(rolloutId, events);
          return;
        }
        case "batch-passed":
        case "batch-failed": {
          const startedSeq = batch!.startedSeq!;
          const events = await store.recordGate(rolloutId, decision.index, startedSeq, gates!, now, epoch);
          this.o.notifier.gateRecorded(rolloutId, events);
          const passed = decision.kind === "batch-passed";
          const change = await store.finishBatch(
            rolloutId,
            decision.index,
            startedSeq,
            {
              passed,
              message: verdictMessage(decision.verdict, gates!),
            },
            clock.now(),
            epoch,
          );
          if (!change) return;
          this.o.notifier.applied(change);
          await nextTurn();
          known = change.rollout;
          continue;
        }
      }
    }
    this.o.logger.error({ rolloutId }, "rollout evaluation did not settle; stopping this round");
  }
}

/** Resolves on the event loop's next turn (after pending I/O callbacks and writes). */
function nextTurn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

function verdictMessage(verdict: BatchVerdict, gates: readonly MachineGate[]): string {
  const unhealthy = gates.filter((g) => g.state === "unhealthy");
  const base = `${verdict.healthy} healthy, ${verdict.unhealthy} unhealthy`;
  if (verdict.kind === "passed") return `${base} (threshold allows ${verdict.allowed})`;
  const list = unhealthy
    .slice(0, 5)
    .map((g) => `${g.machineId} (${g.reason})`)
    .join("; ");
  const more = unhealthy.length > 5 ? `; and ${unhealthy.length - 5} more` : "";
  const allowed = "allowed" in verdict ? verdict.allowed : 0;
  return `${base}, threshold allows ${allowed}: ${list}${more}`;
}
