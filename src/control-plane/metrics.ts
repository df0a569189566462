/**
 * Prometheus metrics (prom-client, on a registry of this control plane's own so several
 * instances can live in one test process). Request metrics are labelled by procedure and code
 * only — bounded sets — never by machine id. Fleet gauges are computed from the store when
 * scraped, so they are right after a restart and never drift.
 */
import type { DescMethod } from "@bufbuild/protobuf";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";
import type { RolloutStatus } from "./store/records.js";
import type { FleetCounts } from "./store/repository.js";

export interface MetricsSources {
  fleetCounts(): Promise<FleetCounts>;
  agentSessions(): number;
  /** Machines (not decommissioned) not heard from for longer than the stale threshold. */
  staleMachines(): Promise<number>;
}

function codeLabel(code: Code | null): string {
  if (code === null) return "ok";
  return (Code[code] ?? String(code)).replace(/([a-z])([A-Z])/g, "$1_$2").toLowerCase();
}

export class ControlPlaneMetrics {
  readonly registry = new Registry();
  readonly rpcRequests: Counter<"procedure" | "code">;
  readonly rpcDuration: Histogram<"procedure">;
  readonly rolloutsTotal: Counter<"status">;
  readonly pushLatency: Histogram;
  private readonly fleetSize: Gauge;
  private readonly byLifecycle: Gauge<"lifecycle">;
  private readonly inSync: Gauge;
  private readonly stale: Gauge;
  private readonly rolloutsActive: Gauge;
  private readonly sessions: Gauge;
  private sources: MetricsSources | null = null;

  constructor() {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });
    this.fleetSize = new Gauge({
      name: "nixfleet_fleet_size",
      help: "Registered machines (every lifecycle).",
      registers,
    });
    this.byLifecycle = new Gauge({
      name: "nixfleet_machines_by_lifecycle",
      help: "Registered machines per lifecycle.",
      labelNames: ["lifecycle"],
      registers,
    });
    this.inSync = new Gauge({
      name: "nixfleet_machines_in_sync",
      help: "Machines whose reported current generation equals their desired generation.",
      registers,
    });
    this.stale = new Gauge({
      name: "nixfleet_machines_stale",
      help: "Machines (not decommissioned) whose agent has not been heard from for longer than --stale-after.",
      registers,
    });
    this.rolloutsActive = new Gauge({
      name: "nixfleet_rollouts_active",
      help: "Rollouts that are running or paused.",
      registers,
    });
    this.sessions = new Gauge({
      name: "nixfleet_agent_sessions",
      help: "Agents holding an open Session or Watch stream.",
      registers,
    });
    this.rpcRequests = new Counter({
      name: "nixfleet_rpc_requests_total",
      help: "RPCs handled, by procedure and result code.",
      labelNames: ["procedure", "code"],
      registers,
    });
    this.rpcDuration = new Histogram({
      name: "nixfleet_rpc_duration_seconds",
      help: "RPC handling time by procedure (streams: until the stream ends).",
      labelNames: ["procedure"],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
      registers,
    });
    this.rolloutsTotal = new Counter({
      name: "nixfleet_rollouts_total",
      help: "Rollout transitions into a status (completed, failed, cancelled, paused) since start.",
      labelNames: ["status"],
      registers,
    });
    this.pushLatency = new Histogram({
      name: "nixfleet_push_latency_seconds",
      help: "From assigning a desired generation to the agent acknowledging its push.",
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    });
    for (const status of ["completed", "failed", "cancelled", "paused"])
      this.rolloutsTotal.inc({ status }, 0);
  }

  /** Connects the gauges to their data once the store is open. */
  attach(sources: MetricsSources): void {
    this.sources = sources;
  }

  rolloutReached(status: RolloutStatus): void {
    if (status !== "running") this.rolloutsTotal.inc({ status });
  }

  /** The Prometheus text, with the fleet gauges read fresh from the store for this scrape. */
  async render(): Promise<string> {
    if (this.sources) {
      const c = await this.sources.fleetCounts();
      this.fleetSize.set(c.total);
      for (const [lifecycle, n] of Object.entries(c.byLifecycle)) this.byLifecycle.set({ lifecycle }, n);
      this.inSync.set(c.inSync);
      this.stale.set(await this.sources.staleMachines());
      this.rolloutsActive.set(c.activeRollouts);
      this.sessions.set(this.sources.agentSessions());
    }
    return this.registry.metrics();
  }

  /** Counts one finished RPC (the interceptor's, and the raw gRPC Session path's, which Connect does not serve). */
  rpcDone(procedure: string, code: Code | null, seconds: number): void {
    this.rpcRequests.inc({ procedure, code: codeLabel(code) });
    this.rpcDuration.observe({ procedure }, seconds);
  }

  /** Counts and times every RPC; streams are measured until they end. */
  interceptor(): Interceptor {
    return (next) => async (req) => {
      const procedure = procedureName(req.method);
      const started = performance.now();
      const done = (code: Code | null) => this.rpcDone(procedure, code, (performance.now() - started) / 1000);
      let res: Awaited<ReturnType<typeof next>>;
      try {
        res = await next(req);
      } catch (err) {
        done(ConnectError.from(err).code);
        throw err;
      }
      if (!res.stream) {
        done(null);
        return res;
      }
      const inner = res.message;
      async function* observed() {
        let code: Code | null = null;
        try {
          yield* inner;
        } catch (err) {
          code = ConnectError.from(err).code;
          throw err;
        } finally {
          done(code);
        }
      }
      return { ...res, message: observed() };
    };
  }
}

export function procedureName(method: DescMethod): string {
  return `/${method.parent.typeName}/${method.name}`;
}
