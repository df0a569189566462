/**
 * The deploy cycle as the agent uses it: gathers the facts of the check step, then runs the
 * transition machine (cycle/machine.ts) through its interpreter (cycle/interpreter.ts) — for a
 * new cycle, or to settle a deployment the journal shows unfinished (crash recovery). Also the
 * periodic health reports, which wait while a deployment may be changing the host.
 *
 * The side effects (Nix, the switch, health checks, the file system) come in through `Deps`, so
 * the same code runs for real in the agent and over fakes in the tests.
 */
import { randomUUID } from "node:crypto";
import type { Logger } from "../common/logger.js";
import { isStorePath } from "../common/store-path.js";
import type { Activator } from "./activation.js";
import type { AgentConfig } from "./config.js";
import { Interpreter } from "./cycle/interpreter.js";
import { isBusy, startRecovery, transition } from "./cycle/machine.js";
import type { HealthPort, HostOps, NixOps, ReportSink } from "./cycle/ports.js";
import type { CheckFacts, State } from "./cycle/types.js";
import { type CheckDecision, type Desired, decideCheck } from "./decide.js";
import type { HealthSnapshot } from "./health/runner.js";
import type { Deployment, Journal } from "./journal/journal.js";
import type { AgentMetrics } from "./metrics.js";
import type { CycleVerdict } from "./schedule.js";

export type { HealthPort, HostOps, NixOps, ReportSink } from "./cycle/ports.js";
export { reportableGeneration } from "./cycle/reporting.js";

/** How many times a rollback is attempted (live and across restarts) before ROLLBACK_FAILED. */
export const MAX_ROLLBACK_ATTEMPTS = 2;

export interface Deps {
  config: AgentConfig;
  journal: Journal;
  nix: NixOps;
  host: HostOps;
  activator: Activator;
  health: HealthPort;
  reports: ReportSink;
  metrics: AgentMetrics;
  log: Logger;
  agentVersion: string;
  /** Where GC-root symlinks for the previous and desired generation live. */
  gcRootDir: string;
  now?: () => number;
  /** How often a running switch is polled for its status. */
  switchPollMs?: number;
  /** Test-only: called after every committed journal write of a deployment (crash injection). */
  afterPersist?: (state: State, dep: Deployment) => void;
}

export class Deployer {
  private readonly now: () => number;
  private readonly interpreter: Interpreter;

  constructor(private readonly d: Deps) {
    this.now = d.now ?? Date.now;
    const c = d.config;
    this.interpreter = new Interpreter(
      { ...d, now: this.now },
      {
        settings: {
          dryRun: c.dryRun,
          cacheUrl: c.cacheUrl,
          healthIntervalMs: c.healthInterval * 1000,
          verifyTimeoutSeconds: c.verifyTimeout,
          activationTimeoutSeconds: c.activationTimeout,
          maxRollbackAttempts: MAX_ROLLBACK_ATTEMPTS,
          currentSystemPath: c.paths.currentSystem,
          activationOrder: c.activationOrder,
        },
        identity: { machineId: c.machineId, tags: c.tags, agentVersion: d.agentVersion },
        gcRootDir: d.gcRootDir,
        systemProfile: c.paths.systemProfile,
        switchLock: c.paths.switchLock,
        fetchTimeoutMs: c.fetchTimeout * 1000,
        verifyTimeoutMs: c.verifyTimeout * 1000,
        activationTimeoutMs: c.activationTimeout * 1000,
        switchPollMs: d.switchPollMs ?? 250,
        ...(d.afterPersist ? { afterPersist: d.afterPersist } : {}),
      },
    );
  }

  /** True while a deployment may be changing the host: periodic health reports wait meanwhile. */
  get busy(): boolean {
    return isBusy(this.interpreter.state);
  }

  /**
   * The last deployment ended ROLLBACK_FAILED and the control plane still asks for that very
   * assignment: the host needs an operator, and the agent keeps saying so. A new assignment (or
   * a cleared one) is the operator's answer and ends the alarm.
   */
  private rollbackAlarm(desired: Desired | undefined): Deployment | undefined {
    const last = this.d.journal.lastFinished();
    if (last?.outcome !== "ROLLBACK_FAILED" || desired === undefined) return undefined;
    if (desired.path !== last.desired || desired.revision > last.desiredRevision) return undefined;
    return last;
  }

  /** What the check step knows: read once, then the machine decides. */
  private checkFacts(desired: Desired | undefined): CheckFacts {
    const { journal, host } = this.d;
    const current = host.readCurrent();
    const valid = desired !== undefined && isStorePath(desired.path);
    const decision: CheckDecision = decideCheck({
      desired,
      current,
      quarantine: valid ? journal.quarantineEntry(desired.path) : undefined,
      deployedBefore: valid && journal.deployedBefore(desired.path, desired.revision),
    });
    const last = journal.lastReport("steady");
    return {
      desired,
      current,
      decision,
      alarm: this.rollbackAlarm(desired),
      lastSteady: last ? { key: last.key, sentAt: last.sentAt } : undefined,
      now: this.now(),
      newId: randomUUID(),
    };
  }

  /** One cycle for the desired generation the control plane gave (undefined = none). */
  async runCycle(desired: Desired | undefined, signal: AbortSignal): Promise<CycleVerdict> {
    const { metrics, journal } = this.d;
    metrics.setState("checking");
    const facts = this.checkFacts(desired);
    metrics.setGeneration(facts.current);
    metrics.rollbackFailed.set(facts.alarm ? 1 : 0);
    metrics.quarantined.set(journal.quarantineCount());
    const first = transition({ at: "check" }, { on: "checked", facts }, this.interpreter.settings);
    return this.interpreter.run(first, signal);
  }

  /**
   * Settles every deployment the journal shows unfinished (called on start, before anything
   * else). Resolves with the verdict of the last one, or undefined when there was none.
   */
  async recover(signal: AbortSignal): Promise<CycleVerdict | undefined> {
    let verdict: CycleVerdict | undefined;
    for (const dep of this.d.journal.unfinished())
      verdict = await this.interpreter.run(startRecovery(dep), signal);
    return verdict;
  }

  /**
   * A periodic health report: the due checks (each honours its own interval) on the generation
   * current-system points at, reported only if that generation did not change meanwhile.
   */
  async periodicHealth(
    signal: AbortSignal,
  ): Promise<{ generation: string; snapshot: HealthSnapshot } | undefined> {
    const generation = this.d.host.readCurrent();
    if (!generation || !isStorePath(generation) || this.busy) return undefined;
    const snapshot = await this.d.health.runDue(generation, signal);
    if (signal.aborted || this.busy || this.d.host.readCurrent() !== generation) return undefined;
    this.interpreter.report({ kind: "health", generation, snapshot, postApply: false, deploymentId: "" });
    return { generation, snapshot };
  }
}
