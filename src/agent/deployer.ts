/**
 * The durable deploy cycle: check → fetch → apply → verify → commit, or roll back to the exact
 * previous generation. Every step's intent is journaled before the step runs; every phase
 * transition is one log line and one metric update; every outcome is reported through the
 * outbox. Crash recovery (`recover`) resumes an unfinished deployment with the same steps.
 *
 * The side effects (Nix, the switch, health checks, the file system) come in through `Deps`, so
 * the same code runs for real in the agent and in the integration tests.
 */
import { randomUUID } from "node:crypto";
import { uptime } from "node:os";
import { join } from "node:path";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import type { Logger } from "../common/logger.js";
import { isStorePath } from "../common/store-path.js";
import type { ReportHealthRequestSchema, ReportRequestSchema } from "../gen/nixfleet/v1/agent_pb.js";
import { HealthCheckKind, Outcome } from "../gen/nixfleet/v1/types_pb.js";
import type { ActivationHandle, Activator } from "./activation.js";
import type { AgentConfig } from "./config.js";
import { type Desired, decideCheck, shouldSendSteadyReport, steadyReportKey } from "./decide.js";
import type { CheckResult } from "./health/checks.js";
import { describeFailures, type HealthRunner, type HealthSnapshot } from "./health/runner.js";
import type { SwitchLockState } from "./host.js";
import { describeLock } from "./host.js";
import type {
  Deployment,
  FinalOutcome,
  HealthRecord,
  Journal,
  OutboxRow,
  Phase,
  Settlement,
} from "./journal/journal.js";
import type { AgentMetrics, AgentState } from "./metrics.js";
import { FetchError } from "./nix.js";
import { decideRecovery, type SwitchObservation, switchedExitCode } from "./recovery.js";
import type { CycleVerdict } from "./schedule.js";
import { formatSeconds, MAX_REPORT_MESSAGE_BYTES, trimOutput, truncateUtf8 } from "./text.js";
import { healthRow, reportRow } from "./transport/outbox-row.js";
import { delay, Parked, throwIfParked } from "./wait.js";

/** The Nix operations the cycle needs (nix.ts implements them). */
export interface NixOps {
  fetch(
    path: string,
    cacheUrl: string | null,
    options: { timeoutMs: number; signal?: AbortSignal },
  ): Promise<"cache" | "local">;
  setProfile(profile: string, path: string, options: { timeoutMs: number }): Promise<void>;
  switchProfileGeneration(profile: string, generation: number, options: { timeoutMs: number }): Promise<void>;
  addGcRoot(link: string, path: string, options: { timeoutMs: number }): Promise<void>;
}

/** What the cycle reads from the host (host.ts implements it). */
export interface HostOps {
  readCurrent(): string | null;
  readProfile(): string | null;
  profileGeneration(): number | null;
  profileGenerationPath(generation: number): string | null;
  switchScriptProblem(path: string): string | undefined;
  checkSwitchLock(): Promise<SwitchLockState>;
}

export interface ReportSink {
  /** Queues a report on its own; `status` marks a steady-state one (coalesced). */
  report(init: MessageInitShape<typeof ReportRequestSchema>, options?: { status?: boolean }): unknown;
  health(init: MessageInitShape<typeof ReportHealthRequestSchema>): unknown;
  /** Rows were queued by a journal transaction: deliver them. */
  wake(): void;
}

/** The health checks as the cycle uses them (health/runner.ts implements them). */
export type HealthPort = Pick<HealthRunner, "runAll" | "runDue" | "verify">;

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
}

/** What current-system points at, for a report: a store path or nothing (never garbage). */
export function reportableGeneration(current: string | null): string {
  return current !== null && isStorePath(current) ? current : "";
}

/** How many times a rollback is attempted (live and across restarts) before ROLLBACK_FAILED. */
export const MAX_ROLLBACK_ATTEMPTS = 2;
/** Short Nix operations (profile, GC root) get this long. */
const NIX_STEP_TIMEOUT_MS = 120_000;
/** How long a rollback waits for someone else's switch lock to be released. */
const LOCK_POLL_MS = 500;

type SwitchEnd = { kind: "exited"; code: number } | { kind: "timeout" } | { kind: "vanished" };

const KIND_TO_PROTO: Record<CheckResult["kind"], HealthCheckKind> = {
  systemd: HealthCheckKind.SYSTEMD,
  http: HealthCheckKind.HTTP,
  command: HealthCheckKind.COMMAND,
};

const PHASE_STATE: Record<Exclude<Phase, "done">, AgentState> = {
  fetching: "fetching",
  applying: "applying",
  switching: "applying",
  verifying: "verifying",
  rolling_back: "rolling_back",
};

/** Logs one line per phase transition and times phases for the histogram. */
class PhaseTracker {
  private phase: Phase | undefined;
  private since: number;
  private readonly started: number;

  constructor(
    private readonly d: Deps,
    private readonly id: string,
    private readonly desired: string,
    private previous: string | null,
    private readonly now: () => number,
  ) {
    this.since = now();
    this.started = this.since;
  }

  setPrevious(previous: string | null): void {
    this.previous = previous;
  }

  current(): Phase | undefined {
    return this.phase;
  }

  enter(phase: Exclude<Phase, "done">, error?: string): void {
    const at = this.now();
    const durationMs = at - this.since;
    if (this.phase && this.phase !== "done")
      this.d.metrics.phaseDuration.observe({ phase: this.phase }, durationMs / 1000);
    this.d.log.info(
      {
        event: "phase",
        deploymentId: this.id,
        phase,
        from: this.phase ?? null,
        desired: this.desired,
        previous: this.previous,
        durationMs,
        ...(error ? { error } : {}),
      },
      `deployment ${this.id}: ${this.phase ?? "start"} → ${phase}`,
    );
    this.phase = phase;
    this.since = at;
    this.d.metrics.setState(PHASE_STATE[phase]);
  }

  finish(outcome: FinalOutcome, message: string, level: "info" | "warn" | "error"): void {
    const at = this.now();
    if (this.phase && this.phase !== "done")
      this.d.metrics.phaseDuration.observe({ phase: this.phase }, (at - this.since) / 1000);
    this.d.log[level](
      {
        event: "deployment_finished",
        deploymentId: this.id,
        phase: "done",
        from: this.phase ?? null,
        outcome,
        desired: this.desired,
        previous: this.previous,
        durationMs: at - this.since,
        totalMs: at - this.started,
        ...(level !== "info" ? { error: message } : { message }),
      },
      `deployment ${this.id}: ${outcome}`,
    );
    this.phase = "done";
  }
}

export class Deployer {
  private readonly now: () => number;
  private readonly config: AgentConfig;
  /** True from the journal intent to the outcome: periodic health reports wait meanwhile. */
  private deploying = false;

  constructor(private readonly d: Deps) {
    this.now = d.now ?? Date.now;
    this.config = d.config;
  }

  get busy(): boolean {
    return this.deploying;
  }

  // --------------------------------------------------------------------------- reports

  private baseReport(): {
    machineId: string;
    currentGeneration: string;
    tags: string[];
    agentVersion: string;
    uptimeSeconds: bigint;
    timestamp: ReturnType<typeof timestampFromMs>;
  } {
    return {
      machineId: this.config.machineId,
      currentGeneration: reportableGeneration(this.d.host.readCurrent()),
      tags: this.config.tags,
      agentVersion: this.d.agentVersion,
      uptimeSeconds: BigInt(Math.floor(uptime())),
      timestamp: timestampFromMs(this.now()),
    };
  }

  private reportInit(
    outcome: Outcome,
    success: boolean,
    message: string,
    extra: { deploymentId?: string; desired?: Desired } = {},
  ): MessageInitShape<typeof ReportRequestSchema> {
    return {
      ...this.baseReport(),
      outcome,
      success,
      message: truncateUtf8(message, MAX_REPORT_MESSAGE_BYTES),
      deploymentId: extra.deploymentId ?? "",
      desiredGeneration: extra.desired?.path ?? "",
      desiredRevision: extra.desired?.revision ?? 0n,
    };
  }

  /** A steady-state report (coalesced in the outbox). */
  private report(
    outcome: Outcome,
    success: boolean,
    message: string,
    extra: { deploymentId?: string; desired?: Desired } = {},
  ): void {
    this.d.reports.report(this.reportInit(outcome, success, message, extra), { status: true });
  }

  /** A deployment's report as an outbox row, to be written with the state change it describes. */
  private outcomeRow(
    outcome: Outcome,
    success: boolean,
    message: string,
    extra: { deploymentId: string; desired: Desired },
  ): OutboxRow {
    return reportRow(this.reportInit(outcome, success, message, extra));
  }

  /** Sends a steady-state report only when it says something new, or once per healthInterval. */
  private steadyReport(kind: string, key: string, send: () => void): { sent: boolean; changed: boolean } {
    const last = this.d.journal.lastReport(kind);
    const now = this.now();
    const changed = last === undefined || last.key !== key;
    if (!shouldSendSteadyReport(last, key, now, this.config.healthInterval * 1000))
      return { sent: false, changed };
    send();
    this.d.journal.recordReport(kind, key, key.split("|")[0] ?? "", now);
    return { sent: true, changed };
  }

  /** Runs the checks now and sends a health report bound to the generation they observed. */
  async healthReport(
    opts: { postApply: boolean; deploymentId?: string; snapshot?: HealthSnapshot; generation?: string },
    signal?: AbortSignal,
  ): Promise<HealthSnapshot | undefined> {
    const generation = opts.generation ?? this.d.host.readCurrent();
    // A health report is bound to a generation: without a store path there is nothing to bind to.
    if (!generation || !isStorePath(generation)) return undefined;
    const snapshot = opts.snapshot ?? (await this.d.health.runAll(generation, signal));
    // Bound to what the checks observed: if the system moved meanwhile, the results are not its.
    if (!opts.snapshot && this.d.host.readCurrent() !== generation) return undefined;
    this.sendHealth(generation, snapshot, opts.postApply, opts.deploymentId ?? "");
    return snapshot;
  }

  /**
   * A periodic health report: the due checks (each honours its own interval) on the generation
   * current-system points at, reported only if that generation did not change meanwhile.
   */
  async periodicHealth(
    signal: AbortSignal,
  ): Promise<{ generation: string; snapshot: HealthSnapshot } | undefined> {
    const generation = this.d.host.readCurrent();
    if (!generation || !isStorePath(generation) || this.deploying) return undefined;
    const snapshot = await this.d.health.runDue(generation, signal);
    if (signal.aborted || this.deploying || this.d.host.readCurrent() !== generation) return undefined;
    this.sendHealth(generation, snapshot, false, "");
    return { generation, snapshot };
  }

  sendHealth(generation: string, snapshot: HealthSnapshot, postApply: boolean, deploymentId: string): void {
    const { record, init } = this.healthOf(generation, snapshot, postApply, deploymentId);
    this.d.journal.recordHealth(record);
    this.d.reports.health(init);
  }

  private healthOf(
    generation: string,
    snapshot: HealthSnapshot,
    postApply: boolean,
    deploymentId: string,
  ): { record: HealthRecord; init: MessageInitShape<typeof ReportHealthRequestSchema> } {
    const at = this.now();
    const record = {
      generation,
      allPassed: snapshot.allPassed,
      postApply,
      deploymentId,
      results: snapshot.results,
      at,
    };
    const init = {
      machineId: this.config.machineId,
      currentGeneration: generation,
      results: snapshot.results.map((r) => ({
        name: r.name,
        kind: KIND_TO_PROTO[r.kind],
        passed: r.passed,
        durationMs: Math.min(r.durationMs, 2 ** 32 - 1),
        message: truncateUtf8(r.message, 1024),
      })),
      allPassed: snapshot.allPassed,
      timestamp: timestampFromMs(at),
      postApply,
      deploymentId,
    };
    return { record, init };
  }

  // --------------------------------------------------------------------------- the cycle

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

  /** One cycle for the desired generation the control plane gave (undefined = none). */
  async runCycle(desired: Desired | undefined, signal: AbortSignal): Promise<CycleVerdict> {
    const { journal, metrics, log } = this.d;
    metrics.setState("checking");
    const current = this.d.host.readCurrent();
    metrics.setGeneration(current);
    const alarm = this.rollbackAlarm(desired);
    metrics.rollbackFailed.set(alarm ? 1 : 0);
    metrics.quarantined.set(journal.quarantineCount());
    const quarantine =
      desired && isStorePath(desired.path) ? journal.quarantineEntry(desired.path) : undefined;
    const deployedBefore =
      desired !== undefined &&
      isStorePath(desired.path) &&
      journal.deployedBefore(desired.path, desired.revision);
    const decision = decideCheck({ desired, current, quarantine, deployedBefore });

    switch (decision.kind) {
      case "idle": {
        const key = steadyReportKey({ outcome: "IDLE", desired: "", revision: 0n, current });
        this.steadyReport("steady", key, () => {
          log.info({ event: "idle", current }, "no desired generation assigned; idle");
          this.report(
            Outcome.UP_TO_DATE,
            true,
            `no desired generation assigned; running ${current ?? "(current-system missing)"}`,
          );
        });
        return "ok";
      }
      case "invalid": {
        const d = desired!;
        const key = steadyReportKey({
          outcome: "INVALID",
          desired: d.path.slice(0, 300),
          revision: d.revision,
          current,
        });
        this.steadyReport("steady", key, () => {
          log.error(
            { event: "desired_refused", error: decision.reason, revision: d.revision.toString() },
            decision.reason,
          );
          // desired_generation stays empty: the value is not a store path and may not be echoed back.
          this.report(Outcome.FETCH_FAILED, false, `${decision.reason}; nothing was fetched or executed`, {
            desired: { ...d, path: "" },
          });
          metrics.deploys.inc({ outcome: "FETCH_FAILED" });
        });
        return "failed";
      }
      case "up-to-date": {
        const d = desired!;
        const key = steadyReportKey({
          outcome: "UP_TO_DATE",
          desired: d.path,
          revision: d.revision,
          current,
        });
        const { sent, changed } = this.steadyReport("steady", key, () => {
          log.info(
            { event: "up_to_date", generation: d.path, revision: d.revision.toString() },
            "up to date",
          );
          this.report(Outcome.UP_TO_DATE, true, `running the desired generation ${d.path}`, { desired: d });
        });
        // A rollout gate needs a health report newer than its batch start: on a new assignment
        // of the generation the host already runs, report health at once.
        if (sent && changed) await this.healthReport({ postApply: false }, signal);
        return "ok";
      }
      case "drifted": {
        const d = desired!;
        const key = steadyReportKey({ outcome: "DRIFTED", desired: d.path, revision: d.revision, current });
        this.steadyReport("steady", key, () => {
          log.warn(
            { event: "drifted", desired: d.path, revision: d.revision.toString(), current },
            "the host no longer runs the generation deployed here; not switching it back",
          );
          this.report(
            Outcome.FOREIGN_GENERATION,
            false,
            `current-system points at ${current ?? "nothing"}, not at ${d.path}, which was deployed here ` +
              `(revision ${d.revision}): someone switched this host by hand, or it booted another generation. ` +
              "The agent does not switch it back; assign the generation again (a new rollout, or " +
              "nixfleet machines set-desired) to re-apply it",
            { desired: d },
          );
        });
        return "ok";
      }
      case "quarantined": {
        const d = desired!;
        const entry = decision.entry;
        if (alarm && alarm.desired === d.path) {
          const key = steadyReportKey({
            outcome: "ROLLBACK_FAILED",
            desired: d.path,
            revision: d.revision,
            current,
          });
          this.steadyReport("steady", key, () => {
            log.error(
              { event: "rollback_failed_alarm", deploymentId: alarm.id, desired: d.path, current },
              "the last rollback failed; the host needs an operator",
            );
            this.report(Outcome.ROLLBACK_FAILED, false, alarm.message ?? "rollback failed", {
              desired: d,
              deploymentId: alarm.id,
            });
          });
          return "ok";
        }
        const key = steadyReportKey({
          outcome: "QUARANTINED",
          desired: d.path,
          revision: d.revision,
          current,
        });
        this.steadyReport("steady", key, () => {
          log.warn(
            {
              event: "quarantined",
              desired: d.path,
              revision: d.revision.toString(),
              failedRevision: entry.revision.toString(),
            },
            "desired generation is quarantined; not applying it",
          );
          this.report(
            Outcome.QUARANTINED,
            false,
            `${d.path} failed here before (revision ${entry.revision}: ${entry.outcome}: ${entry.reason}); ` +
              "not applying it again until the control plane assigns it with a newer revision",
            { desired: d },
          );
        });
        return "ok";
      }
      case "deploy": {
        const d = desired!;
        if (decision.liftQuarantine) {
          journal.clearQuarantine(d.path);
          metrics.quarantined.set(journal.quarantineCount());
          log.info(
            {
              event: "quarantine_lifted",
              desired: d.path,
              revision: d.revision.toString(),
              failedRevision: decision.liftQuarantine.revision.toString(),
            },
            "the control plane assigned a quarantined generation again with a newer revision; trying it",
          );
        }
        if (this.config.dryRun) {
          const key = steadyReportKey({ outcome: "DRY_RUN", desired: d.path, revision: d.revision, current });
          const last = journal.lastReport("steady");
          if (!shouldSendSteadyReport(last, key, this.now(), this.config.healthInterval * 1000)) return "ok";
        }
        return this.deploy(d, current, signal);
      }
    }
  }

  // --------------------------------------------------------------------------- deploy

  private async deploy(desired: Desired, current: string | null, signal: AbortSignal): Promise<CycleVerdict> {
    const { journal, log } = this.d;
    const id = randomUUID();
    const cacheUrl = desired.cacheUrl || this.config.cacheUrl;
    journal.createDeployment({
      id,
      desired: desired.path,
      desiredRevision: desired.revision,
      rolloutId: desired.rolloutId,
      cacheUrl,
    });
    const tracker = new PhaseTracker(this.d, id, desired.path, current, this.now);
    tracker.enter("fetching");
    try {
      return await this.fetchAndApply(id, tracker, desired, cacheUrl, current, signal);
    } catch (err) {
      if (!(err instanceof Parked)) {
        log.error(
          {
            event: "deployment_error",
            deploymentId: id,
            phase: journal.get(id)?.phase,
            desired: desired.path,
            error: (err as Error).stack ?? String(err),
          },
          "unexpected error in a deployment; it is settled (recovery) before the next cycle",
        );
      }
      throw err;
    }
  }

  private async fetchAndApply(
    id: string,
    tracker: PhaseTracker,
    desired: Desired,
    cacheUrl: string | null,
    current: string | null,
    signal: AbortSignal,
  ): Promise<CycleVerdict> {
    const { journal, nix, host, log, metrics } = this.d;

    // ---- fetch: nothing on the host changes, so any failure is simply retried later.
    let source: "cache" | "local";
    try {
      source = await nix.fetch(desired.path, cacheUrl, {
        timeoutMs: this.config.fetchTimeout * 1000,
        signal,
      });
    } catch (err) {
      if (signal.aborted) {
        journal.finish(id, "INTERRUPTED", "the agent stopped while fetching; nothing changed");
        tracker.finish("INTERRUPTED", "stopped while fetching", "info");
        throw new Parked("fetching");
      }
      const message =
        err instanceof FetchError
          ? err.message
          : `could not fetch ${desired.path}: ${(err as Error).message}`;
      return this.finishWithoutChange(
        id,
        tracker,
        desired,
        "FETCH_FAILED",
        Outcome.FETCH_FAILED,
        `${message}; the running system was not touched`,
      );
    }
    log.info(
      { event: "fetched", deploymentId: id, desired: desired.path, source, cacheUrl },
      "closure is in the local store",
    );

    if (this.config.dryRun) {
      journal.finish(id, "DRY_RUN", `fetched ${desired.path}; dryRun is set, so it was not applied`, {
        reports: [
          this.outcomeRow(
            Outcome.DRY_RUN,
            true,
            `fetched ${desired.path} (from ${source === "cache" ? cacheUrl : "the local store"}); dryRun: not applied`,
            { deploymentId: id, desired },
          ),
        ],
      });
      this.d.reports.wake();
      tracker.finish("DRY_RUN", "fetched; not applied (dryRun)", "info");
      metrics.deploys.inc({ outcome: "DRY_RUN" });
      journal.recordReport(
        "steady",
        steadyReportKey({ outcome: "DRY_RUN", desired: desired.path, revision: desired.revision, current }),
        "DRY_RUN",
      );
      return "ok";
    }

    // ---- preflight: never start what cannot be finished or undone.
    const desiredProblem = host.switchScriptProblem(desired.path);
    if (desiredProblem) {
      const message = `${desired.path} cannot be switched to: ${desiredProblem}; quarantined until it is assigned again`;
      return this.finishWithoutChange(id, tracker, desired, "APPLY_FAILED", Outcome.APPLY_FAILED, message, {
        path: desired.path,
        revision: desired.revision,
        outcome: "APPLY_FAILED",
        reason: desiredProblem,
      });
    }
    const previous = host.readCurrent();
    if (previous === null || !isStorePath(previous)) {
      return this.finishWithoutChange(
        id,
        tracker,
        desired,
        "APPLY_FAILED",
        Outcome.APPLY_FAILED,
        `${this.config.paths.currentSystem} ${previous === null ? "does not exist" : `points at ${previous}, not a store path`}: ` +
          "there is no generation to roll back to, so the agent refuses to switch",
      );
    }
    tracker.setPrevious(previous);
    const previousProblem = host.switchScriptProblem(previous);
    if (previousProblem) {
      return this.finishWithoutChange(
        id,
        tracker,
        desired,
        "APPLY_FAILED",
        Outcome.APPLY_FAILED,
        `the running generation ${previous} cannot be switched back to (${previousProblem}): no rollback target, so the agent refuses to switch`,
      );
    }
    const lock = await host.checkSwitchLock();
    if (lock.held) {
      const message = `${describeLock(this.config.paths.switchLock, lock)} (another switch, e.g. a manual nixos-rebuild, is running); not stacking a second switch, retrying after retryInterval`;
      return this.finishWithoutChange(id, tracker, desired, "SWITCH_LOCKED", Outcome.SWITCH_LOCKED, message);
    }
    throwIfParked(signal, "about to apply");

    // ---- apply: the intent (with the exact previous path) is durable before anything changes.
    this.deploying = true;
    try {
      // APPLYING is queued with the intent: whatever happens next, this deployment id gets an
      // outcome (an abandoned apply is settled with one too, see recoverOne).
      journal.beginApply(id, previous, host.profileGeneration(), [
        this.outcomeRow(Outcome.APPLYING, true, `switching from ${previous} to ${desired.path}`, {
          deploymentId: id,
          desired,
        }),
      ]);
      this.d.reports.wake();
      tracker.enter("applying");
      try {
        await nix.addGcRoot(join(this.d.gcRootDir, "previous"), previous, { timeoutMs: NIX_STEP_TIMEOUT_MS });
        await nix.addGcRoot(join(this.d.gcRootDir, "desired"), desired.path, {
          timeoutMs: NIX_STEP_TIMEOUT_MS,
        });
      } catch (err) {
        return this.finishWithoutChange(
          id,
          tracker,
          desired,
          "APPLY_FAILED",
          Outcome.APPLY_FAILED,
          `${(err as Error).message}; nothing was switched`,
        );
      }
      try {
        await nix.setProfile(this.config.paths.systemProfile, desired.path, {
          timeoutMs: NIX_STEP_TIMEOUT_MS,
        });
      } catch (err) {
        await this.restoreProfileQuietly(journal.get(id)!);
        return this.finishWithoutChange(
          id,
          tracker,
          desired,
          "APPLY_FAILED",
          Outcome.APPLY_FAILED,
          `${(err as Error).message}; nothing was switched`,
        );
      }
      if (signal.aborted) {
        // Not switched yet: recovery restores the profile and the next start retries.
        throw new Parked("about to switch");
      }
      const planned = this.d.activator.plan({ deploymentId: id, role: "switch", path: desired.path });
      journal.setPhase(id, "switching", { activation: planned });
      tracker.enter("switching");
      let handle: ActivationHandle;
      try {
        handle = await this.d.activator.start(planned);
        journal.recordActivation(id, "activation", handle);
      } catch (err) {
        // A start that "failed" after all (e.g. systemd-run timed out once the unit was up) is
        // still a switch: follow it instead of assuming nothing ran.
        const status = await this.d.activator.status(planned).catch(() => ({ state: "vanished" as const }));
        if (status.state !== "vanished") {
          log.warn(
            {
              event: "switch_start_error",
              deploymentId: id,
              error: (err as Error).message,
              state: status.state,
            },
            "starting the switch reported an error, but the switch runs; following it",
          );
          const end = await this.waitSwitch(planned, "switching", signal);
          return await this.afterSwitch(journal.get(id)!, tracker, planned, end, signal);
        }
        // Nothing ran: put the profile back and report; no rollback needed.
        await this.restoreProfileQuietly(journal.get(id)!);
        return this.finishWithoutChange(
          id,
          tracker,
          desired,
          "APPLY_FAILED",
          Outcome.APPLY_FAILED,
          `could not start switch-to-configuration: ${(err as Error).message}; nothing was switched`,
        );
      }
      log.info(
        { event: "switch_started", deploymentId: id, mode: handle.mode, unit: handle.unit, pid: handle.pid },
        "switch-to-configuration started",
      );
      const end = await this.waitSwitch(handle, "switching", signal);
      return await this.afterSwitch(journal.get(id)!, tracker, handle, end, signal);
    } finally {
      this.deploying = false;
    }
  }

  /** Ends a deployment that changed nothing on the host. */
  private finishWithoutChange(
    id: string,
    tracker: PhaseTracker,
    desired: Desired,
    outcome: FinalOutcome,
    proto: Outcome,
    message: string,
    quarantine?: Settlement["quarantine"],
  ): CycleVerdict {
    this.d.journal.finish(id, outcome, message, {
      error: message,
      reports: [this.outcomeRow(proto, false, message, { deploymentId: id, desired })],
      ...(quarantine ? { quarantine } : {}),
    });
    this.d.reports.wake();
    tracker.finish(outcome, message, outcome === "SWITCH_LOCKED" ? "warn" : "error");
    this.d.metrics.deploys.inc({ outcome });
    return "failed";
  }

  /** Polls the switch until it exits, vanishes or passes activationTimeout (measured from its start). */
  private async waitSwitch(handle: ActivationHandle, where: string, signal: AbortSignal): Promise<SwitchEnd> {
    const deadline = handle.startedAt + this.config.activationTimeout * 1000;
    const pollMs = this.d.switchPollMs ?? 250;
    for (;;) {
      const status = await this.d.activator.status(handle);
      if (status.state === "exited") return { kind: "exited", code: status.code };
      if (status.state === "vanished") return { kind: "vanished" };
      if (this.now() >= deadline) return { kind: "timeout" };
      await delay(Math.min(pollMs, Math.max(1, deadline - this.now())), signal, where);
    }
  }

  private async afterSwitch(
    dep: Deployment,
    tracker: PhaseTracker,
    handle: ActivationHandle,
    end: SwitchEnd,
    signal: AbortSignal,
  ): Promise<CycleVerdict> {
    const { log, activator } = this.d;
    if (end.kind === "timeout") {
      const reason = `switch-to-configuration did not finish within activationTimeout (${formatSeconds(this.config.activationTimeout)}) and was killed`;
      // The decision is journaled before the kill: an agent that dies while killing the switch
      // must resume the rollback, not mistake the half-done switch for a finished one.
      this.d.journal.setPhase(dep.id, "rolling_back", { rollbackReason: reason, error: reason });
      tracker.enter("rolling_back", reason);
      log.warn(
        { event: "switch_timeout", deploymentId: dep.id, unit: handle.unit, pid: handle.pid },
        "switch exceeded activationTimeout; stopping it",
      );
      await activator.stop(handle);
      const tail = trimOutput(await activator.outputTail(handle), 600);
      return this.rollback(
        this.d.journal.get(dep.id)!,
        tracker,
        `${reason}${tail ? `; last output: ${tail}` : ""}`,
        signal,
      );
    }
    if (end.kind === "vanished") {
      return this.rollback(
        dep,
        tracker,
        "switch-to-configuration disappeared without recording an exit status",
        signal,
      );
    }
    if (!switchedExitCode(end.code)) {
      const tail = trimOutput(await activator.outputTail(handle), 800);
      return this.rollback(
        dep,
        tracker,
        `switch-to-configuration exited with code ${end.code}${tail ? `: ${tail}` : ""}`,
        signal,
      );
    }
    if (end.code === 4) {
      log.warn(
        { event: "switch_exit_4", deploymentId: dep.id },
        "switch-to-configuration exited 4 (switched, some units failed); health checks decide",
      );
    }
    return this.verify(dep, tracker, end.code, signal);
  }

  // --------------------------------------------------------------------------- verify / commit

  private async verify(
    dep: Deployment,
    tracker: PhaseTracker,
    exitCode: number | undefined,
    signal: AbortSignal,
  ): Promise<CycleVerdict> {
    const { journal, host, health, log } = this.d;
    journal.setPhase(dep.id, "verifying");
    tracker.enter("verifying");
    const exitNote = exitCode === 4 ? " (switch-to-configuration exited 4)" : "";
    const current = host.readCurrent();
    if (current !== dep.desired) {
      if (current === dep.previous) {
        return this.rollback(
          dep,
          tracker,
          `current-system still points at the previous generation after switch-to-configuration ${exitCode === undefined ? "ended" : `exited ${exitCode}`}`,
          signal,
        );
      }
      return this.foreign(dep, tracker, current);
    }
    const deadline = this.now() + this.config.verifyTimeout * 1000;
    const snapshot = await health.verify(dep.desired, {
      deadline,
      ...(signal ? { signal } : {}),
      onRound: (s, round) => {
        if (!s.allPassed) {
          log.info(
            { event: "verify_round", deploymentId: dep.id, round, failing: describeFailures(s) },
            "health checks not passing yet",
          );
        }
      },
    });
    throwIfParked(signal, "verifying");
    const after = host.readCurrent();
    if (after !== dep.desired) return this.foreign(dep, tracker, after);
    if (!snapshot.allPassed) {
      // The failing results are the truth about the new generation: report them bound to it.
      this.sendHealth(dep.desired, snapshot, true, dep.id);
      return this.rollback(
        dep,
        tracker,
        `health checks failed for ${formatSeconds(this.config.verifyTimeout)} after the switch${exitNote}: ${describeFailures(snapshot)}`,
        signal,
      );
    }
    return this.commit(dep, tracker, snapshot, exitCode);
  }

  private commit(
    dep: Deployment,
    tracker: PhaseTracker,
    snapshot: HealthSnapshot,
    exitCode: number | undefined,
  ): CycleVerdict {
    const { journal, metrics } = this.d;
    const note =
      exitCode === 4
        ? " (switch-to-configuration exited 4: some units failed, but every health check passed)"
        : "";
    const message = `switched from ${dep.previous} to ${dep.desired}; ${snapshot.results.length} health check(s) passed${note}`;
    const desired = this.desiredOf(dep);
    const health = this.healthOf(dep.desired, snapshot, true, dep.id);
    // The outcome, its report and the post-apply health report commit together.
    journal.finish(dep.id, "DEPLOYED", message, {
      reports: [
        this.outcomeRow(Outcome.DEPLOYED, true, message, { deploymentId: dep.id, desired }),
        healthRow(health.init),
      ],
      health: health.record,
    });
    this.d.reports.wake();
    tracker.finish("DEPLOYED", message, "info");
    metrics.deploys.inc({ outcome: "DEPLOYED" });
    metrics.lastSuccessfulDeploy.set(this.now() / 1000);
    metrics.rollbackFailed.set(0);
    metrics.setGeneration(dep.desired);
    // The next cycle need not repeat "up to date" for this assignment.
    journal.recordReport(
      "steady",
      steadyReportKey({
        outcome: "UP_TO_DATE",
        desired: dep.desired,
        revision: dep.desiredRevision,
        current: dep.desired,
      }),
      "UP_TO_DATE",
    );
    return "ok";
  }

  private foreign(dep: Deployment, tracker: PhaseTracker, current: string | null): CycleVerdict {
    const { journal, metrics } = this.d;
    const message =
      `current-system points at ${current ?? "nothing"}, neither the new generation ${dep.desired} nor the previous ${dep.previous}: ` +
      "another switch changed the host (e.g. a manual nixos-rebuild). The agent does not fight it: it leaves the host as is " +
      "and will not apply this assignment again; assign the generation again (a new revision) to retry";
    journal.finish(dep.id, "FOREIGN_GENERATION", message, {
      error: message,
      quarantine: {
        path: dep.desired,
        revision: dep.desiredRevision,
        outcome: "FOREIGN_GENERATION",
        reason: `another switch took the host to ${current ?? "nothing"}`,
      },
      reports: [
        this.outcomeRow(Outcome.FOREIGN_GENERATION, false, message, {
          deploymentId: dep.id,
          desired: this.desiredOf(dep),
        }),
      ],
    });
    this.d.reports.wake();
    tracker.finish("FOREIGN_GENERATION", message, "warn");
    metrics.deploys.inc({ outcome: "FOREIGN_GENERATION" });
    metrics.quarantined.set(journal.quarantineCount());
    return "failed";
  }

  private desiredOf(dep: Deployment): Desired {
    return {
      path: dep.desired,
      cacheUrl: dep.cacheUrl ?? "",
      revision: dep.desiredRevision,
      rolloutId: dep.rolloutId,
    };
  }

  // --------------------------------------------------------------------------- rollback

  /** Puts the system profile back to the exact previous generation. */
  private async restoreProfile(dep: Deployment): Promise<void> {
    const { host, nix } = this.d;
    const profile = this.config.paths.systemProfile;
    if (!dep.previous) return;
    if (host.readProfile() === dep.previous) return;
    const gen = dep.previousProfileGeneration;
    // Back to the very generation the profile had (the boot menu stays as it was), if it still
    // points at the previous path; otherwise a new generation for the previous path.
    if (gen !== null && host.profileGenerationPath(gen) === dep.previous) {
      await nix.switchProfileGeneration(profile, gen, { timeoutMs: NIX_STEP_TIMEOUT_MS });
    } else {
      await nix.setProfile(profile, dep.previous, { timeoutMs: NIX_STEP_TIMEOUT_MS });
    }
  }

  private async restoreProfileQuietly(dep: Deployment): Promise<void> {
    try {
      await this.restoreProfile(dep);
    } catch (err) {
      this.d.log.error(
        {
          event: "profile_restore_failed",
          deploymentId: dep.id,
          previous: dep.previous,
          error: (err as Error).message,
        },
        "could not put the system profile back; the next boot may select the new generation",
      );
    }
  }

  /**
   * Rolls back to the exact previous generation with the previous generation's *own*
   * switch-to-configuration (the failed one's would re-activate the failed system; v0.2 bug
   * 572a10c), confirms current-system == previous, quarantines the failed path.
   */
  private async rollback(
    dep: Deployment,
    tracker: PhaseTracker,
    reason: string,
    signal: AbortSignal,
  ): Promise<CycleVerdict> {
    const { journal, host, activator, log } = this.d;
    let attempt = dep.rollbackAttempts;
    const firstReason = dep.rollbackReason ?? reason;
    let lastProblem = "no rollback attempts left";
    const previous = dep.previous;
    if (!previous)
      return this.rollbackFailed(
        dep,
        tracker,
        firstReason,
        "the journal has no previous generation to roll back to",
      );
    while (attempt < MAX_ROLLBACK_ATTEMPTS) {
      attempt++;
      const why = attempt === 1 ? reason : lastProblem || reason;
      journal.setPhase(dep.id, "rolling_back", {
        rollbackReason: firstReason,
        rollbackAttempts: attempt,
        error: why,
      });
      // (A timed-out switch already entered rolling_back before it was killed.)
      if (tracker.current() !== "rolling_back" || attempt > 1) tracker.enter("rolling_back", why);
      // A forward switch still running (e.g. found after a restart) holds the switch lock and
      // would keep changing the system: it goes first.
      if (dep.activation && (await activator.status(dep.activation)).state === "running") {
        log.warn(
          { event: "switch_stopped", deploymentId: dep.id },
          "stopping the forward switch before rolling back",
        );
        await activator.stop(dep.activation);
      }
      let profileProblem = "";
      try {
        await this.restoreProfile(journal.get(dep.id)!);
      } catch (err) {
        profileProblem = (err as Error).message;
      }
      // Our own killed switch released the lock; someone else's switch must finish first.
      const lockDeadline = this.now() + this.config.activationTimeout * 1000;
      let lock = await host.checkSwitchLock();
      while (lock.held && this.now() < lockDeadline) {
        await delay(LOCK_POLL_MS, signal, "waiting for the switch lock to roll back");
        lock = await host.checkSwitchLock();
      }
      if (lock.held) {
        lastProblem = `${describeLock(this.config.paths.switchLock, lock)} for longer than activationTimeout`;
        continue;
      }
      const planned = activator.plan({ deploymentId: dep.id, role: `rollback-${attempt}`, path: previous });
      journal.setPhase(dep.id, "rolling_back", { rollbackActivation: planned });
      let handle: ActivationHandle;
      try {
        handle = await activator.start(planned);
        journal.recordActivation(dep.id, "rollbackActivation", handle);
      } catch (err) {
        lastProblem = `could not start ${previous}/bin/switch-to-configuration: ${(err as Error).message}`;
        continue;
      }
      log.info(
        {
          event: "rollback_switch_started",
          deploymentId: dep.id,
          previous,
          attempt,
          unit: handle.unit,
          pid: handle.pid,
        },
        "running the previous generation's own switch-to-configuration",
      );
      const end = await this.waitSwitch(handle, "rolling back", signal);
      const verdict = await this.judgeRollback(journal.get(dep.id)!, handle, end, profileProblem);
      if (verdict === undefined) return this.rolledBack(journal.get(dep.id)!, tracker, firstReason);
      lastProblem = verdict;
      log.warn(
        { event: "rollback_attempt_failed", deploymentId: dep.id, attempt, error: verdict },
        "rollback attempt failed",
      );
    }
    return this.rollbackFailed(journal.get(dep.id)!, tracker, firstReason, lastProblem);
  }

  /** Undefined when the rollback switch worked; otherwise what went wrong. */
  private async judgeRollback(
    dep: Deployment,
    handle: ActivationHandle,
    end: SwitchEnd,
    profileProblem: string,
  ): Promise<string | undefined> {
    const { activator, host } = this.d;
    if (end.kind === "timeout") {
      await activator.stop(handle);
      return `the previous generation's switch-to-configuration did not finish within activationTimeout and was killed`;
    }
    if (end.kind === "vanished")
      return "the previous generation's switch-to-configuration disappeared without an exit status";
    const current = host.readCurrent();
    if (!switchedExitCode(end.code)) {
      const tail = trimOutput(await activator.outputTail(handle), 600);
      return `the previous generation's switch-to-configuration exited with code ${end.code}${tail ? `: ${tail}` : ""}`;
    }
    if (current !== dep.previous)
      return `after the rollback switch current-system points at ${current ?? "nothing"}, not ${dep.previous}`;
    if (profileProblem)
      return `the running system is back on ${dep.previous} but the profile could not be restored: ${profileProblem}`;
    return undefined;
  }

  /** Journals a failed deployment's outcome and quarantines its path at this revision. */
  private endInQuarantine(
    dep: Deployment,
    tracker: PhaseTracker,
    outcome: "ROLLED_BACK" | "ROLLBACK_FAILED",
    o: { message: string; error: string; reason: string; level: "warn" | "error" },
  ): void {
    const { journal, metrics } = this.d;
    // Outcome, quarantine and report in one transaction: an agent killed in between would
    // otherwise forget the quarantine and run the failed switch again at the same revision.
    journal.finish(dep.id, outcome, o.message, {
      error: o.error,
      quarantine: { path: dep.desired, revision: dep.desiredRevision, outcome, reason: o.reason },
      reports: [
        this.outcomeRow(
          outcome === "ROLLED_BACK" ? Outcome.ROLLED_BACK : Outcome.ROLLBACK_FAILED,
          false,
          o.message,
          {
            deploymentId: dep.id,
            desired: this.desiredOf(dep),
          },
        ),
      ],
    });
    this.d.reports.wake();
    tracker.finish(outcome, o.message, o.level);
    metrics.deploys.inc({ outcome });
    metrics.quarantined.set(journal.quarantineCount());
  }

  private rolledBack(dep: Deployment, tracker: PhaseTracker, reason: string): CycleVerdict {
    const message = `${reason}; rolled back to ${dep.previous} with its own switch-to-configuration; ${dep.desired} is quarantined until it is assigned again`;
    this.endInQuarantine(dep, tracker, "ROLLED_BACK", { message, error: reason, reason, level: "warn" });
    this.d.metrics.rollbacks.inc({ result: "succeeded" });
    this.d.metrics.setGeneration(this.d.host.readCurrent());
    return "failed";
  }

  private rollbackFailed(
    dep: Deployment,
    tracker: PhaseTracker,
    reason: string,
    problem: string,
  ): CycleVerdict {
    const { journal, metrics, host } = this.d;
    const current = host.readCurrent();
    const message =
      `${reason}; ROLLBACK FAILED: ${problem}. current-system points at ${current ?? "nothing"}, profile at ${host.readProfile() ?? "nothing"}. ` +
      `The host needs an operator: switch it to a working generation (e.g. ${dep.previous}/bin/switch-to-configuration switch) ` +
      "or assign a fixed generation";
    this.endInQuarantine(dep, tracker, "ROLLBACK_FAILED", {
      message,
      error: problem,
      reason,
      level: "error",
    });
    metrics.rollbacks.inc({ result: "failed" });
    metrics.rollbackFailed.set(1);
    metrics.setGeneration(current);
    journal.recordReport(
      "steady",
      steadyReportKey({
        outcome: "ROLLBACK_FAILED",
        desired: dep.desired,
        revision: dep.desiredRevision,
        current,
      }),
      "ROLLBACK_FAILED",
    );
    return "failed";
  }

  // --------------------------------------------------------------------------- recovery

  private async observe(handle: ActivationHandle | null): Promise<SwitchObservation> {
    if (!handle) return { state: "not-started" };
    return this.d.activator.status(handle);
  }

  /**
   * Settles every deployment the journal shows unfinished (called on start, before anything
   * else). Resolves with the verdict of the last one, or undefined when there was none.
   */
  async recover(signal: AbortSignal): Promise<CycleVerdict | undefined> {
    let verdict: CycleVerdict | undefined;
    for (const dep of this.d.journal.unfinished()) {
      this.deploying = true;
      try {
        verdict = await this.recoverOne(dep, signal);
      } finally {
        this.deploying = false;
      }
    }
    return verdict;
  }

  private async recoverOne(dep: Deployment, signal: AbortSignal): Promise<CycleVerdict> {
    const { journal, log, host } = this.d;
    const current = host.readCurrent();
    const phase = dep.phase as Exclude<Phase, "done">;
    const forward = await this.observe(dep.activation);
    const rollback = await this.observe(dep.rollbackActivation);
    const action = decideRecovery({
      phase,
      desired: dep.desired,
      previous: dep.previous,
      current,
      forward,
      rollback,
      rollbackAttempts: dep.rollbackAttempts,
      maxRollbackAttempts: MAX_ROLLBACK_ATTEMPTS,
    });
    log.warn(
      {
        event: "recovery",
        deploymentId: dep.id,
        phase,
        desired: dep.desired,
        previous: dep.previous,
        current,
        forward: forward.state,
        rollback: rollback.state,
        action: action.kind,
      },
      `settling deployment ${dep.id} left in phase ${phase}: ${action.kind}`,
    );
    const tracker = new PhaseTracker(this.d, dep.id, dep.desired, dep.previous, this.now);
    switch (action.kind) {
      case "abandon": {
        if (action.restoreProfile && host.readProfile() === dep.desired)
          await this.restoreProfileQuietly(dep);
        // Past the intent the control plane has seen APPLYING for this id: it gets an outcome for
        // it too. FETCH_FAILED is the outcome the rollout gate reads as "nothing changed, the
        // agent retries" (the retry is a new deployment id).
        const message = `${action.reason}; nothing on the host changed and the next cycle starts over`;
        journal.finish(dep.id, "INTERRUPTED", message, {
          reports:
            dep.phase === "applying"
              ? [
                  this.outcomeRow(Outcome.FETCH_FAILED, false, message, {
                    deploymentId: dep.id,
                    desired: this.desiredOf(dep),
                  }),
                ]
              : [],
        });
        this.d.reports.wake();
        tracker.finish("INTERRUPTED", action.reason, "info");
        return "ok";
      }
      case "wait-switch": {
        tracker.enter("switching");
        const end = await this.waitSwitch(
          dep.activation!,
          "waiting for a switch started before the restart",
          signal,
        );
        return this.afterSwitch(journal.get(dep.id)!, tracker, dep.activation!, end, signal);
      }
      case "after-switch":
        return this.afterSwitch(
          dep,
          tracker,
          dep.activation!,
          { kind: "exited", code: action.exitCode },
          signal,
        );
      case "verify":
        return this.verify(dep, tracker, undefined, signal);
      case "rollback":
        return this.rollback(
          dep,
          tracker,
          dep.rollbackReason
            ? `${dep.rollbackReason} (retrying after a restart: ${action.reason})`
            : action.reason,
          signal,
        );
      case "wait-rollback": {
        tracker.enter("rolling_back");
        const handle = dep.rollbackActivation!;
        const end = await this.waitSwitch(
          handle,
          "waiting for a rollback started before the restart",
          signal,
        );
        const problem = await this.judgeRollback(journal.get(dep.id)!, handle, end, "");
        const reason = dep.rollbackReason ?? "rollback";
        if (problem === undefined) {
          await this.restoreProfileQuietly(dep);
          return this.rolledBack(journal.get(dep.id)!, tracker, reason);
        }
        if (dep.rollbackAttempts < MAX_ROLLBACK_ATTEMPTS)
          return this.rollback(journal.get(dep.id)!, tracker, reason, signal);
        return this.rollbackFailed(journal.get(dep.id)!, tracker, reason, problem);
      }
      case "rolled-back":
        await this.restoreProfileQuietly(dep);
        return this.rolledBack(dep, tracker, dep.rollbackReason ?? "rollback");
      case "rollback-failed":
        return this.rollbackFailed(dep, tracker, dep.rollbackReason ?? "rollback", action.reason);
    }
  }
}
