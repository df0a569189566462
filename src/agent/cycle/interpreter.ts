/**
 * Carries out the machine's effects over the ports and feeds each action's result back as the
 * next event — no decisions of its own: what to do next is always the transition function's
 * (machine.ts). A stop (the abort signal) parks the cycle before the next action; the journal
 * then says where it was, exactly as after a crash.
 */
import { join } from "node:path";
import { isStorePath } from "../../common/store-path.js";
import { type ActivationHandle, SwitchQueryError } from "../activation.js";
import { describeFailures } from "../health/runner.js";
import { describeLock } from "../host.js";
import type { Deployment } from "../journal/journal.js";
import { FetchError } from "../nix.js";
import type { SwitchObservation } from "../recovery.js";
import type { CycleVerdict } from "../schedule.js";
import { delay, Parked, throwIfParked } from "../wait.js";
import { isAction, TransitionError, transition } from "./machine.js";
import { PhaseLog } from "./phase-log.js";
import type { Ports } from "./ports.js";
import { healthInit, healthRecord, type Identity, reportInit, rowsOf } from "./reporting.js";
import type { Action, Event, JournalWrite, Note, Settings, State, Step, SwitchEnd } from "./types.js";

/** Short Nix operations (profile, GC root) get this long. */
const NIX_STEP_TIMEOUT_MS = 120_000;
/** How long a rollback waits between looks at someone else's switch lock. */
const LOCK_POLL_MS = 500;

export interface InterpreterOptions {
  settings: Settings;
  identity: Identity;
  gcRootDir: string;
  systemProfile: string;
  switchLock: string;
  fetchTimeoutMs: number;
  verifyTimeoutMs: number;
  activationTimeoutMs: number;
  switchPollMs: number;
  /** Test-only: called after every committed journal write (crash injection). */
  afterPersist?: (state: State, dep: Deployment) => void;
}

export class Interpreter {
  /** The state being waited in (for `busy`); "done" between runs. */
  state: State = { at: "done", verdict: "ok" };
  private dep: Deployment | undefined;
  private phases: PhaseLog | undefined;

  constructor(
    private readonly p: Ports,
    private readonly o: InterpreterOptions,
  ) {}

  get settings(): Settings {
    return this.o.settings;
  }

  /** Queues a report on its own (periodic health). */
  report(report: Extract<Note, { do: "report" }>["report"]): void {
    this.note({ do: "report", report });
  }

  async run(first: Step, signal: AbortSignal): Promise<CycleVerdict> {
    let step = first;
    try {
      for (;;) {
        this.state = step.state;
        if ("dep" in step.state) this.follow(step.state.dep);
        let next: Event | undefined;
        for (const effect of step.effects) {
          if (isAction(effect)) next = await this.act(effect, signal);
          else this.note(effect);
        }
        if (next === undefined) {
          if (step.state.at === "done") return step.state.verdict;
          throw new TransitionError(`${step.state.at}: the step has no action and does not end the cycle`);
        }
        step = transition(step.state, next, this.o.settings);
      }
    } catch (err) {
      if (!(err instanceof Parked) && this.dep) {
        this.p.log.error(
          {
            event: "deployment_error",
            deploymentId: this.dep.id,
            phase: this.dep.phase,
            desired: this.dep.desired,
            error: (err as Error).stack ?? String(err),
          },
          "unexpected error in a deployment; it is settled (recovery) before the next cycle",
        );
      }
      throw err;
    } finally {
      this.state = { at: "done", verdict: "ok" };
      this.dep = undefined;
      this.phases = undefined;
    }
  }

  /** Keeps the deployment the log lines are about. */
  private follow(dep: Deployment): void {
    if (this.dep?.id !== dep.id) {
      this.phases = new PhaseLog(this.p.log, this.p.metrics, this.p.now, {
        id: dep.id,
        desired: dep.desired,
        previous: dep.previous,
      });
    }
    this.dep = dep;
  }

  private note(n: Note): void {
    const { journal, metrics, log, reports, host, now } = this.p;
    switch (n.do) {
      case "log":
        log[n.level]({ event: n.event, ...n.fields }, n.msg);
        return;
      case "enter-phase":
        this.phases?.enter(n.phase, this.dep?.previous ?? null, n.error);
        return;
      case "finished": {
        this.phases?.finish(n.outcome, this.dep?.previous ?? null, n.message, n.level);
        if (n.outcome !== "INTERRUPTED") metrics.deploys.inc({ outcome: n.outcome });
        if (n.outcome === "DEPLOYED") metrics.lastSuccessfulDeploy.set(now() / 1000);
        if (n.outcome === "ROLLED_BACK") metrics.rollbacks.inc({ result: "succeeded" });
        if (n.outcome === "ROLLBACK_FAILED") metrics.rollbacks.inc({ result: "failed" });
        metrics.setGeneration(host.readCurrent());
        metrics.quarantined.set(journal.quarantineCount());
        return;
      }
      case "steady-report":
        if (n.report.kind === "report")
          reports.report(reportInit(n.report, this.o.identity, host.readCurrent(), now()), { status: true });
        journal.recordReport("steady", n.key, n.outcome, now());
        return;
      case "remember-steady":
        journal.recordReport("steady", n.key, n.outcome, now());
        return;
      case "report":
        if (n.report.kind === "health") {
          journal.recordHealth(healthRecord(n.report, now()));
          reports.health(healthInit(n.report, this.o.identity, now()));
        } else reports.report(reportInit(n.report, this.o.identity, host.readCurrent(), now()));
        return;
      case "lift-quarantine":
        journal.clearQuarantine(n.path);
        metrics.quarantined.set(journal.quarantineCount());
        return;
      case "rollback-alarm":
        metrics.rollbackFailed.set(n.on ? 1 : 0);
        return;
    }
  }

  private async act(a: Action, signal: AbortSignal): Promise<Event> {
    if (a.do === "park") throw new Parked(a.where);
    // A commit always completes; a fetch answers a stop itself (INTERRUPTED).
    if (a.do !== "persist" && a.do !== "fetch") throwIfParked(signal, this.state.at);
    const { nix, host, activator } = this.p;
    switch (a.do) {
      case "persist": {
        const dep = this.persist(a.id, a.write);
        this.o.afterPersist?.(this.state, dep);
        return { on: "persisted", dep };
      }
      case "fetch":
        try {
          const source = await nix.fetch(a.path, a.cacheUrl, { timeoutMs: this.o.fetchTimeoutMs, signal });
          return { on: "fetched", source };
        } catch (err) {
          if (signal.aborted) return { on: "fetch-stopped" };
          const m =
            err instanceof FetchError ? err.message : `could not fetch ${a.path}: ${(err as Error).message}`;
          return { on: "fetch-failed", message: m };
        }
      case "inspect": {
        const previous = host.readCurrent();
        const lock = await host.checkSwitchLock();
        return {
          on: "inspected",
          facts: {
            desiredProblem: host.switchScriptProblem(a.path),
            previous,
            previousProblem:
              previous && isStorePath(previous) ? host.switchScriptProblem(previous) : undefined,
            lockHolder: lock.held ? describeLock(this.o.switchLock, lock) : undefined,
            profileGeneration: host.profileGeneration(),
            bootId: host.bootId(),
          },
        };
      }
      case "gc-roots":
        return this.attempt(async () => {
          const opts = { timeoutMs: NIX_STEP_TIMEOUT_MS };
          await nix.addGcRoot(join(this.o.gcRootDir, "previous"), a.previous, opts);
          await nix.addGcRoot(join(this.o.gcRootDir, "desired"), a.desired, opts);
        });
      case "set-profile":
        return this.attempt(() =>
          nix.setProfile(this.o.systemProfile, a.path, { timeoutMs: NIX_STEP_TIMEOUT_MS }),
        );
      case "restore-profile": {
        const result = await this.attempt(() => this.restoreProfile(a.previous, a.generation));
        if (result.on === "failed")
          this.p.log.error(
            {
              event: "profile_restore_failed",
              deploymentId: this.dep?.id,
              previous: a.previous,
              error: result.message,
            },
            "could not put the system profile back; the next boot may select the new generation",
          );
        return result;
      }
      case "plan-switch":
        return {
          on: "planned",
          handle: activator.plan({
            deploymentId: a.deploymentId,
            role: a.role,
            path: a.path,
            verb: a.verb,
          }),
        };
      case "boot-default":
        return this.attempt(() =>
          activator.makeBootDefault(a.path, { timeoutMs: this.o.activationTimeoutMs }),
        );
      case "start-switch":
        try {
          return { on: "started", handle: await activator.start(a.planned) };
        } catch (err) {
          // A state that cannot be read is followed like a running switch: waiting for it ends
          // at its status file, its unit's end or activationTimeout — never at a guess.
          const status = await activator.status(a.planned).catch(() => ({ state: "running" as const }));
          return { on: "start-failed", message: (err as Error).message, status };
        }
      case "wait-switch": {
        const end = await this.waitSwitch(a.handle, a.where, signal);
        return { on: "switch-ended", end, tail: await activator.outputTail(a.handle).catch(() => "") };
      }
      case "stop-switch":
        await activator.stop(a.handle);
        return { on: "switch-stopped", tail: await activator.outputTail(a.handle).catch(() => "") };
      case "observe":
        return {
          on: "observed",
          facts: {
            current: host.readCurrent(),
            bootId: host.bootId(),
            profile: host.readProfile(),
            forward: await this.status(a.forward),
            rollback: await this.status(a.rollback),
          },
        };
      case "verify": {
        const snapshot = await this.p.health.verify(a.generation, {
          deadline: this.p.now() + this.o.verifyTimeoutMs,
          signal,
          onRound: (s, round) => {
            if (!s.allPassed)
              this.p.log.info(
                { event: "verify_round", deploymentId: a.deploymentId, round, failing: describeFailures(s) },
                "health checks not passing yet",
              );
          },
        });
        throwIfParked(signal, "verifying");
        return { on: "verified", snapshot, current: host.readCurrent() };
      }
      case "wait-lock": {
        const deadline = this.p.now() + this.o.activationTimeoutMs;
        let lock = await host.checkSwitchLock();
        while (lock.held && this.p.now() < deadline) {
          await delay(LOCK_POLL_MS, signal, "waiting for the switch lock to roll back");
          lock = await host.checkSwitchLock();
        }
        return { on: "lock", held: lock.held, description: describeLock(this.o.switchLock, lock) };
      }
      case "health-report":
        await this.healthReport(signal);
        return { on: "ok" };
    }
  }

  private async attempt(f: () => Promise<void>): Promise<Event> {
    try {
      await f();
      return { on: "ok" };
    } catch (err) {
      return { on: "failed", message: (err as Error).message };
    }
  }

  private persist(id: string, w: JournalWrite): Deployment {
    const { journal, host, now, reports } = this.p;
    const rowsFor = (specs: Parameters<typeof rowsOf>[0]) =>
      rowsOf(specs, this.o.identity, host.readCurrent(), now());
    let dep: Deployment;
    let wake = false;
    switch (w.op) {
      case "create":
        dep = journal.createDeployment({
          id: w.id,
          desired: w.desired.path,
          desiredRevision: w.desired.revision,
          rolloutId: w.desired.rolloutId,
          cacheUrl: w.cacheUrl,
        });
        break;
      case "begin-apply":
        dep = journal.beginApply(id, w.previous, w.profileGeneration, rowsFor(w.reports).rows, {
          order: w.order,
          bootId: w.bootId,
        });
        wake = w.reports.length > 0;
        break;
      case "phase":
        dep = journal.setPhase(id, w.phase, w.update);
        break;
      case "activation":
        dep = journal.recordActivation(id, w.field, w.handle);
        break;
      case "finish": {
        const { rows, health } = rowsFor(w.reports);
        dep = journal.finish(id, w.outcome, w.message, {
          ...(w.error !== undefined ? { error: w.error } : {}),
          ...(w.quarantine ? { quarantine: { ...w.quarantine, outcome: w.outcome } } : {}),
          ...(health ? { health } : {}),
          reports: rows,
        });
        wake = rows.length > 0;
        break;
      }
    }
    if (wake) reports.wake();
    return dep;
  }

  private async status(handle: ActivationHandle | null): Promise<SwitchObservation> {
    return handle ? this.p.activator.status(handle) : { state: "not-started" };
  }

  /** Puts the system profile back to the exact previous generation (a no-op if it is there). */
  private async restoreProfile(previous: string | null, generation: number | null): Promise<void> {
    const { host, nix } = this.p;
    if (!previous || host.readProfile() === previous) return;
    const opts = { timeoutMs: NIX_STEP_TIMEOUT_MS };
    // Back to the very generation the profile had (the boot menu stays as it was), if it still
    // points at the previous path; otherwise a new generation for the previous path.
    if (generation !== null && host.profileGenerationPath(generation) === previous)
      await nix.switchProfileGeneration(this.o.systemProfile, generation, opts);
    else await nix.setProfile(this.o.systemProfile, previous, opts);
  }

  /**
   * Waits for the switch to exit, vanish or pass activationTimeout (from its start). The watch
   * wakes this the moment the wrapper writes its status; the timer between looks (doubling from
   * switchPollMs up to 8×) only finds a switch killed without one, and the deadline. A look that
   * cannot read the state (systemd did not answer) is logged and tried again: not knowing is not
   * "vanished"; the deadline still bounds the wait.
   */
  private async waitSwitch(handle: ActivationHandle, where: string, signal: AbortSignal): Promise<SwitchEnd> {
    const deadline = handle.startedAt + this.o.activationTimeoutMs;
    const watch = this.p.activator.watch(handle);
    try {
      let pollMs = this.o.switchPollMs;
      for (;;) {
        const status = await this.p.activator.status(handle).catch((err: Error) => {
          if (!(err instanceof SwitchQueryError)) throw err;
          this.p.log.warn(
            {
              event: "switch_query_failed",
              deploymentId: this.dep?.id,
              unit: handle.unit,
              error: err.message,
            },
            "cannot read the switch's state; looking again",
          );
          return undefined;
        });
        if (status?.state === "exited")
          return status.reason !== undefined
            ? { kind: "exited", code: status.code, reason: status.reason }
            : { kind: "exited", code: status.code };
        if (status?.state === "vanished") return { kind: "vanished" };
        if (this.p.now() >= deadline) return { kind: "timeout" };
        await watch.changed(Math.min(pollMs, Math.max(1, deadline - this.p.now())), signal, where);
        pollMs = Math.min(pollMs * 2, this.o.switchPollMs * 8);
      }
    } finally {
      watch.close();
    }
  }

  /** Runs every check now and reports them bound to the generation they observed. */
  async healthReport(signal?: AbortSignal): Promise<void> {
    const { host, health } = this.p;
    const generation = host.readCurrent();
    // A health report is bound to a generation: without a store path there is nothing to bind to.
    if (!generation || !isStorePath(generation)) return;
    const snapshot = await health.runAll(generation, signal);
    // Bound to what the checks observed: if the system moved meanwhile, the results are not its.
    if (host.readCurrent() !== generation) return;
    this.note({
      do: "report",
      report: { kind: "health", generation, snapshot, postApply: false, deploymentId: "" },
    });
  }
}
