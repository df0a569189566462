/**
 * The running agent: wires the journal, Nix, activation, health, transport and metrics together,
 * settles any unfinished deployment first, then runs
 * - the cycle loop: one cycle at a time (never overlapping), the next scheduled from *now*
 *   (schedule.ts); a push or CheckNow runs one at once (or right after the running one);
 * - the push channel: Session (grpc/connect) or Watch (connect-json); while it is down the
 *   cycle polls GetDesiredGeneration;
 * - periodic health reports every healthInterval, bound to the generation observed, paused
 *   while a deployment is switching, verifying or rolling back.
 * `stop()` parks whatever runs (the journal makes it resumable) and returns within a bounded time.
 */
import type { Server } from "node:http";
import { dirname, join } from "node:path";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Logger } from "../common/logger.js";
import type { TlsMaterial } from "../common/tls.js";
import type { DesiredGenerationChanged } from "../gen/nixfleet/v1/agent_pb.js";
import type { DesiredGeneration } from "../gen/nixfleet/v1/types_pb.js";
import { pruneActivationFiles } from "./activation.js";
import type { AgentConfig } from "./config.js";
import type { Desired } from "./decide.js";
import { type Deployer, reportableGeneration } from "./deployer.js";
import type { CheckEnvironment } from "./health/checks.js";
import { readSystemLink } from "./host.js";
import { Journal } from "./journal/journal.js";
import { AgentMetrics, startMetricsServer } from "./metrics.js";
import { jittered, nextCycleDelayMs, type Random } from "./schedule.js";
import { type AgentConnection, connectAgentService } from "./transport/client.js";
import { PushChannel } from "./transport/push.js";
import { Reporter } from "./transport/reporter.js";
import { AGENT_VERSION } from "./version.js";
import { Parked } from "./wait.js";
import { createDeployer } from "./wiring.js";

export interface AgentOptions {
  config: AgentConfig;
  tls: TlsMaterial;
  log: Logger;
  /** Environment for nix, the switch and health commands (default: the agent's own). */
  env?: NodeJS.ProcessEnv;
  random?: Random;
  checkEnvironment?: CheckEnvironment;
}

/** Bounded waits when stopping. */
const STOP_CYCLE_WAIT_MS = 20_000;
const STOP_REPORT_DRAIN_MS = 2_000;

function toDesired(g: DesiredGeneration | undefined): Desired | undefined {
  if (!g) return undefined;
  return { path: g.hash, cacheUrl: g.cacheUrl, revision: g.revision, rolloutId: g.rolloutId };
}

export class Agent {
  readonly metrics = new AgentMetrics();
  private readonly config: AgentConfig;
  private readonly log: Logger;
  private readonly random: Random;
  private readonly stopController = new AbortController();
  private journal!: Journal;
  private connection!: AgentConnection;
  private reporter!: Reporter;
  private deployer!: Deployer;
  private push: PushChannel | undefined;
  private metricsServer: Server | undefined;
  private cycleLoop: Promise<void> | undefined;
  private healthLoop: Promise<void> | undefined;
  private wake: (() => void) | undefined;
  private triggered = false;
  private cycleRunning = false;
  private pollHintSeconds: number | undefined;
  /** The assignment pushed over the stream; trusted only while the stream is connected. */
  private pushed: { desired: Desired | undefined } | undefined;
  private stopping = false;
  /** The metrics listener's port once started (useful with metricsPort 0). */
  metricsPort: number | undefined;

  constructor(private readonly options: AgentOptions) {
    this.config = options.config;
    this.log = options.log;
    this.random = options.random ?? Math.random;
  }

  async start(): Promise<void> {
    const { config, log, metrics } = this;
    const stateDir = dirname(config.dbPath);
    const opened = Journal.open(config.dbPath);
    this.journal = opened.journal;
    if (opened.movedAside) {
      log.error(
        { event: "journal_corrupt", dbPath: config.dbPath, movedTo: opened.movedAside },
        "the journal was unreadable and was moved aside; starting with an empty one (quarantine and history are lost)",
      );
    }
    metrics.info.set({ version: AGENT_VERSION, protocol: config.protocol, activation: config.activation }, 1);
    const lastDeployed = this.journal.lastDeployedAt();
    if (lastDeployed !== undefined) metrics.lastSuccessfulDeploy.set(lastDeployed / 1000);
    metrics.quarantined.set(this.journal.quarantineCount());
    if (this.options.tls.notAfter) metrics.certificateExpiry.set(this.options.tls.notAfter.getTime() / 1000);

    if (config.metricsPort !== null) {
      const { server, port } = await startMetricsServer(metrics, config.metricsPort, config.metricsAddress);
      this.metricsServer = server;
      this.metricsPort = port;
      log.info(
        { event: "metrics_listening", port, address: config.metricsAddress },
        `metrics on http://${config.metricsAddress}:${port}/metrics`,
      );
    }

    this.connection = connectAgentService({
      baseUrls: config.controlPlaneUrl,
      protocol: config.protocol,
      tls: this.options.tls,
      pingIntervalMs: config.heartbeatInterval * 1000,
      log,
    });
    this.reporter = new Reporter({
      journal: this.journal,
      client: this.connection.client,
      log,
      metrics,
      requestTimeoutMs: config.requestTimeout * 1000,
      backoff: { baseMs: 500, maxMs: config.retryInterval * 1000 },
    });
    const activationDir = join(stateDir, "activations");
    const { deployer, health } = createDeployer({
      config,
      journal: this.journal,
      reports: this.reporter,
      metrics,
      log,
      stateDir,
      env: this.options.env,
      checkEnvironment: this.options.checkEnvironment,
    });
    this.deployer = deployer;

    log.info(
      {
        event: "agent_started",
        version: AGENT_VERSION,
        machineId: config.machineId,
        controlPlaneUrl: config.controlPlaneUrl,
        protocol: config.protocol,
        activation: config.activation,
        dryRun: config.dryRun,
        current: readSystemLink(config.paths.currentSystem),
        checks: health.checks.map((c) => `${c.kind}:${c.name}`),
      },
      "nixfleet-agent started",
    );
    if (config.controlPlaneUrl.some((url) => !url.startsWith("https:"))) {
      log.warn(
        { event: "insecure" },
        "allowInsecure: talking to the control plane over plain HTTP (development only)",
      );
    }

    // Crash recovery before anything else: the truth about an interrupted deployment first.
    let firstVerdict: "ok" | "failed" | undefined;
    try {
      firstVerdict = await this.deployer.recover(this.stopController.signal);
      pruneActivationFiles(activationDir, 7 * 24 * 3600 * 1000);
    } catch (err) {
      if (err instanceof Parked) {
        log.warn({ event: "parked", where: err.where }, err.message);
        return;
      }
      throw err;
    }
    if (firstVerdict !== undefined)
      log.info({ event: "recovery_done", verdict: firstVerdict }, "interrupted deployment settled");
    if (this.stopping) return;
    // Session where the protocol can stream both ways (HTTP/2), Watch over HTTP/1.1.
    this.push = new PushChannel({
      client: this.connection.client,
      mode: this.connection.supportsSession ? "session" : "watch",
      identity: {
        machineId: config.machineId,
        tags: config.tags,
        agentVersion: AGENT_VERSION,
        currentGeneration: () => reportableGeneration(readSystemLink(config.paths.currentSystem)),
      },
      heartbeatIntervalMs: config.heartbeatInterval * 1000,
      log,
      random: this.random,
      currentUrl: () => this.connection.currentUrl(),
      handlers: {
        onDesired: (change) => this.onPushedDesired(change),
        onPollHint: (seconds) => {
          this.pollHintSeconds = seconds > 0 ? seconds : undefined;
        },
        onCheckNow: () => {
          log.info({ event: "check_now" }, "the control plane asked for a cycle now");
          this.trigger();
        },
        onConnectedChange: (connected) => {
          metrics.sessionConnected.set(connected ? 1 : 0);
          if (!connected) this.pushed = undefined;
        },
      },
    });
    this.push.start();
    void this.reporter.flush();
    this.cycleLoop = this.runCycleLoop();
    this.healthLoop = this.runHealthLoop();
  }

  private onPushedDesired(change: DesiredGenerationChanged): void {
    const desired = toDesired(change.generation);
    this.pushed = { desired };
    if (change.pollHintSeconds !== undefined) {
      this.pollHintSeconds = change.pollHintSeconds > 0 ? change.pollHintSeconds : undefined;
    }
    this.metrics.lastPoll.set(Date.now() / 1000);
    this.log.info(
      { event: "pushed", desired: desired?.path ?? null, revision: desired?.revision.toString() ?? null },
      "desired generation pushed by the control plane",
    );
    this.trigger();
  }

  /** Runs a cycle now, or right after the one running. */
  trigger(): void {
    this.triggered = true;
    this.wake?.();
  }

  private sleepUntilTriggered(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      if (this.triggered || this.stopping) return resolve();
      const timer = setTimeout(done, ms);
      const wake = () => done();
      this.wake = wake;
      function done() {
        clearTimeout(timer);
        resolve();
      }
    }).finally(() => {
      this.wake = undefined;
    });
  }

  private async learnDesired(): Promise<Desired | undefined> {
    if (this.push?.connected && this.pushed) {
      // A live (heartbeat-checked) stream's assignment is as fresh as a poll.
      this.metrics.lastPoll.set(Date.now() / 1000);
      return this.pushed.desired;
    }
    const started = Date.now();
    const response = await this.connection.client.getDesiredGeneration(
      { machineId: this.config.machineId },
      { timeoutMs: this.config.requestTimeout * 1000, signal: this.stopController.signal },
    );
    this.metrics.pollDuration.observe((Date.now() - started) / 1000);
    this.metrics.lastPoll.set(Date.now() / 1000);
    this.pollHintSeconds =
      response.pollHintSeconds && response.pollHintSeconds > 0 ? response.pollHintSeconds : undefined;
    return toDesired(response.generation);
  }

  private async runOneCycle(): Promise<"ok" | "failed"> {
    const { log, metrics } = this;
    this.cycleRunning = true;
    try {
      // A deployment left unfinished by an unexpected error in an earlier cycle is settled
      // before any new one can start: never two deployments at once.
      if (this.journal.unfinished().length > 0) {
        log.warn(
          { event: "unfinished_deployment" },
          "settling an unfinished deployment before the next cycle",
        );
        const settled = await this.deployer.recover(this.stopController.signal);
        if (settled === "failed") return "failed";
      }
      metrics.setState("checking");
      let desired: Desired | undefined;
      try {
        desired = await this.learnDesired();
      } catch (err) {
        if (this.stopping) return "ok";
        const e = ConnectError.from(err);
        log.warn(
          {
            event: "poll_failed",
            code: Code[e.code],
            error: e.rawMessage,
            retryIn: this.config.retryInterval,
          },
          "could not reach the control plane; retrying after retryInterval",
        );
        return "failed";
      }
      return await this.deployer.runCycle(desired, this.stopController.signal);
    } catch (err) {
      if (err instanceof Parked) {
        log.warn({ event: "parked", where: err.where }, err.message);
        return "ok";
      }
      log.error(
        { event: "cycle_crashed", error: (err as Error).stack ?? String(err) },
        "deploy cycle failed unexpectedly",
      );
      return "failed";
    } finally {
      this.cycleRunning = false;
      if (!this.stopping) {
        metrics.setState("reporting");
        await this.reporter.drain(5000);
      }
      metrics.setState("idle");
    }
  }

  private async runCycleLoop(): Promise<void> {
    let delayMs = 0;
    while (!this.stopping) {
      await this.sleepUntilTriggered(delayMs);
      if (this.stopping) break;
      this.triggered = false;
      const verdict = await this.runOneCycle();
      this.metrics.cycles.inc({ result: verdict });
      delayMs = nextCycleDelayMs(
        {
          verdict,
          pollHintSeconds: this.pollHintSeconds,
          pollIntervalSeconds: this.config.pollInterval,
          retryIntervalSeconds: this.config.retryInterval,
        },
        this.random,
      );
      this.log.debug(
        { event: "next_cycle", verdict, delayMs, pollHint: this.pollHintSeconds ?? null },
        "next cycle scheduled",
      );
    }
  }

  private async runHealthLoop(): Promise<void> {
    const signal = this.stopController.signal;
    const sleep = (ms: number) =>
      new Promise<void>((resolve) => {
        const timer = setTimeout(done, ms);
        function done() {
          clearTimeout(timer);
          signal.removeEventListener("abort", done);
          resolve();
        }
        signal.addEventListener("abort", done, { once: true });
      });
    while (!this.stopping) {
      await sleep(jittered(this.config.healthInterval * 1000, 0.05, this.random));
      // Results taken while a switch restarts services mean nothing; wait for the outcome.
      while (!this.stopping && this.deployer.busy) await sleep(500);
      if (this.stopping) break;
      try {
        const result = await this.deployer.periodicHealth(signal);
        if (!result) continue;
        const { generation, snapshot } = result;
        this.log.info(
          {
            event: "health",
            generation,
            allPassed: snapshot.allPassed,
            failing: snapshot.results.filter((r) => !r.passed).map((r) => r.name),
          },
          snapshot.allPassed ? "periodic health: all checks pass" : "periodic health: some checks fail",
        );
      } catch (err) {
        this.log.error(
          { event: "health_failed", error: (err as Error).message },
          "periodic health run failed",
        );
      }
    }
  }

  /** Whether a cycle is running right now (for tests and the shutdown path). */
  get busy(): boolean {
    return this.cycleRunning;
  }

  /**
   * Parks the running step (the journal resumes it on the next start), stops the loops, tries
   * briefly to deliver queued reports, and releases everything. Bounded in time.
   */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    this.log.info({ event: "stopping" }, "stopping: parking the current step");
    this.stopController.abort();
    this.wake?.();
    const pushStopped = this.push?.stop();
    const loops = Promise.all([this.cycleLoop, this.healthLoop].filter(Boolean));
    await Promise.race([loops, new Promise((r) => setTimeout(r, STOP_CYCLE_WAIT_MS).unref())]);
    await Promise.race([pushStopped, new Promise((r) => setTimeout(r, 2000).unref())]);
    if (this.reporter) {
      await this.reporter.drain(STOP_REPORT_DRAIN_MS).catch(() => false);
      this.reporter.stop();
    }
    this.connection?.close();
    if (this.metricsServer) {
      const server = this.metricsServer;
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
    this.journal?.close();
    this.log.info({ event: "stopped" }, "nixfleet-agent stopped");
  }
}
