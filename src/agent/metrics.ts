/**
 * The agent's Prometheus metrics (prom-client, on its own registry) and the listener on
 * metricsPort. Label values are bounded: states, check names from the configuration, outcomes,
 * phases — and one generation, the current one (the old series is removed on change, unlike
 * v0.1 whose generation_info grew forever).
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";

export const AGENT_STATES = [
  "idle",
  "checking",
  "fetching",
  "applying",
  "verifying",
  "rolling_back",
  "reporting",
] as const;
export type AgentState = (typeof AGENT_STATES)[number];

export class AgentMetrics {
  readonly registry = new Registry();
  private state: AgentState = "idle";
  private generation: string | undefined;

  readonly stateGauge = new Gauge({
    name: "nixfleet_agent_state",
    help: "What the agent is doing: exactly one state is 1",
    labelNames: ["state"],
    registers: [this.registry],
  });
  readonly pollDuration = new Histogram({
    name: "nixfleet_agent_poll_duration_seconds",
    help: "Duration of GetDesiredGeneration calls",
    buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [this.registry],
  });
  readonly lastPoll = new Gauge({
    name: "nixfleet_agent_last_poll_timestamp_seconds",
    help: "When the agent last learned its desired generation (a poll, a push, or a cycle on a live stream), Unix seconds",
    registers: [this.registry],
  });
  readonly healthCheckDuration = new Histogram({
    name: "nixfleet_agent_health_check_duration_seconds",
    help: "Duration of health check runs",
    labelNames: ["check_name", "check_type"],
    buckets: [0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [this.registry],
  });
  readonly healthCheckStatus = new Gauge({
    name: "nixfleet_agent_health_check_status",
    help: "Last result of each health check: 1 passed, 0 failed",
    labelNames: ["check_name"],
    registers: [this.registry],
  });
  readonly generationInfo = new Gauge({
    name: "nixfleet_agent_generation_info",
    help: "The generation current-system points at (value always 1; only the current one is exported)",
    labelNames: ["generation"],
    registers: [this.registry],
  });
  readonly deploys = new Counter({
    name: "nixfleet_agent_deploys_total",
    help: "Deployment attempts by outcome",
    labelNames: ["outcome"],
    registers: [this.registry],
  });
  readonly phaseDuration = new Histogram({
    name: "nixfleet_agent_phase_duration_seconds",
    help: "Duration of deployment phases",
    labelNames: ["phase"],
    buckets: [0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800],
    registers: [this.registry],
  });
  readonly rollbacks = new Counter({
    name: "nixfleet_agent_rollbacks_total",
    help: "Rollbacks by result (succeeded, failed)",
    labelNames: ["result"],
    registers: [this.registry],
  });
  readonly rollbackFailed = new Gauge({
    name: "nixfleet_agent_rollback_failed",
    help: "1 while the last deployment ended ROLLBACK_FAILED: the host needs an operator",
    registers: [this.registry],
  });
  readonly sessionConnected = new Gauge({
    name: "nixfleet_agent_session_connected",
    help: "1 while the push stream (Session or Watch) is connected",
    registers: [this.registry],
  });
  readonly quarantined = new Gauge({
    name: "nixfleet_agent_quarantined_paths",
    help: "Store paths in the local quarantine",
    registers: [this.registry],
  });
  readonly lastSuccessfulDeploy = new Gauge({
    name: "nixfleet_agent_last_successful_deploy_timestamp_seconds",
    help: "When the last deployment ended DEPLOYED, Unix seconds",
    registers: [this.registry],
  });
  readonly certificateExpiry = new Gauge({
    name: "nixfleet_agent_certificate_expiry_timestamp_seconds",
    help: "When the agent's client certificate expires, Unix seconds (alert well before it)",
    registers: [this.registry],
  });
  readonly reportsPending = new Gauge({
    name: "nixfleet_agent_reports_pending",
    help: "Reports and health reports waiting to be delivered to the control plane",
    registers: [this.registry],
  });
  readonly reportsBacklog = new Gauge({
    name: "nixfleet_agent_reports_backlog",
    help: "Queued reports by kind: outcome (never evicted), status (coalesced), health (periodic, coalesced)",
    labelNames: ["kind"],
    registers: [this.registry],
  });
  readonly cycles = new Counter({
    name: "nixfleet_agent_cycles_total",
    help: "Deploy cycles by result (ok, failed)",
    labelNames: ["result"],
    registers: [this.registry],
  });
  readonly info = new Gauge({
    name: "nixfleet_agent_info",
    help: "Agent version and settings (value always 1)",
    labelNames: ["version", "protocol", "activation"],
    registers: [this.registry],
  });

  private processMetrics = false;

  constructor() {
    for (const s of AGENT_STATES) this.stateGauge.set({ state: s }, s === "idle" ? 1 : 0);
    this.sessionConnected.set(0);
    this.rollbackFailed.set(0);
    this.quarantined.set(0);
    this.reportsPending.set(0);
    for (const kind of ["outcome", "status", "health"]) this.reportsBacklog.set({ kind }, 0);
  }

  /** One-hot: the old state goes to 0 and the new one to 1 together. */
  setState(state: AgentState): void {
    if (state === this.state) return;
    this.stateGauge.set({ state: this.state }, 0);
    this.stateGauge.set({ state }, 1);
    this.state = state;
  }

  currentState(): AgentState {
    return this.state;
  }

  setGeneration(generation: string | null): void {
    const next = generation ?? "";
    if (next === this.generation) return;
    if (this.generation !== undefined) this.generationInfo.remove({ generation: this.generation });
    this.generation = next;
    if (next) this.generationInfo.set({ generation: next }, 1);
  }

  /**
   * The process metrics (CPU, memory, event-loop lag, GC): only with a listener to read them.
   * The lag monitor samples the event loop every 10 ms and the GC observer wakes on every
   * collection — an idle agent without a listener must not pay for either.
   */
  enableProcessMetrics(): void {
    if (this.processMetrics) return;
    this.processMetrics = true;
    collectDefaultMetrics({ register: this.registry });
  }

  async text(): Promise<string> {
    return this.registry.metrics();
  }
}

/** Serves GET /metrics; resolves with the bound port (useful with port 0). */
export function startMetricsServer(
  metrics: AgentMetrics,
  port: number,
  host: string,
): Promise<{ server: Server; port: number }> {
  metrics.enableProcessMetrics();
  const server = createServer((req, res) => {
    const path = (req.url ?? "/").split("?")[0];
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.writeHead(405, { allow: "GET, HEAD" }).end();
      return;
    }
    if (path === "/metrics") {
      metrics
        .text()
        .then((body) => res.writeHead(200, { "content-type": metrics.registry.contentType }).end(body))
        .catch((err: Error) => res.writeHead(500, { "content-type": "text/plain" }).end(err.message));
      return;
    }
    if (path === "/healthz") {
      res.writeHead(200, { "content-type": "text/plain" }).end("ok\n");
      return;
    }
    res.writeHead(404, { "content-type": "text/plain" }).end("not found; try /metrics\n");
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve({ server, port: (server.address() as AddressInfo).port });
    });
  });
}
