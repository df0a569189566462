/**
 * The control plane assembled: listener(s), Connect router, store, executor, push hub, pruner.
 *
 * Start-up order: bind the port first (RPCs answer UNAVAILABLE, /readyz 503), then open and
 * migrate the database, then start the executor (which resumes any rollout a previous process
 * left running), then log "listening". Shutdown reverses it: refuse new RPCs, end the streams,
 * let in-flight requests and the current executor step finish, close the database.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Http2ServerRequest, Http2ServerResponse } from "node:http2";
import { Code, ConnectError, createContextValues } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import type { Logger } from "../common/logger.js";
import { AgentService } from "../gen/nixfleet/v1/agent_pb.js";
import { FleetService } from "../gen/nixfleet/v1/fleet_pb.js";
import { authInterceptor, availabilityInterceptor, type Phase } from "./auth/interceptors.js";
import { peerIdentityOf, peerKey } from "./auth/peer-identity.js";
import { StreamRevocation } from "./auth/stream-revocation.js";
import { type Clock, wallClock } from "./clock.js";
import { Cluster } from "./cluster/cluster.js";
import { agentGrpcRoute } from "./http/agent-grpc-route.js";
import { COMPRESSIONS } from "./http/compression.js";
import { type ConnectionTimeouts, DEFAULT_CONNECTION_TIMEOUTS } from "./http/connection-timeouts.js";
import {
  dashboardHandler,
  dashboardListenerHandler,
  dashboardPointer,
  defaultDashboardDir,
} from "./http/dashboard.js";
import type { GrpcSessionOptions } from "./http/grpc-session.js";
import { mapUnaryDecodeErrors, streamDecodeErrorInterceptor } from "./http/library-errors.js";
import {
  type Listener,
  listenInsecure,
  listenPlainHttp,
  listenTls,
  type StreamRoute,
  type TlsOptions,
} from "./http/listener.js";
import { plainRoutesHandler } from "./http/plain-routes.js";
import { restCompatHandler } from "./http/rest-compat.js";
import { ExecutorLeadership } from "./leader/leadership.js";
import { DEFAULT_EXECUTOR_LEASE_MS } from "./leader/lease.js";
import { ControlPlaneMetrics } from "./metrics.js";
import { PushHub } from "./push/hub.js";
import { registerReflection } from "./reflection.js";
import { RolloutExecutor } from "./rollouts/executor.js";
import { RolloutNotifier } from "./rollouts/notifier.js";
import { RolloutChanges } from "./rollouts/rollout-events.js";
import { AgentIntake } from "./services/agent-intake.js";
import { agentServiceImpl } from "./services/agent-service.js";
import { AgentSessions } from "./services/agent-session.js";
import { AgentUnary } from "./services/agent-unary.js";
import { isStale, type LiveView } from "./services/convert.js";
import { FleetChanges } from "./services/fleet-changes.js";
import { FleetFeed } from "./services/fleet-feed.js";
import { fleetServiceImpl } from "./services/fleet-service.js";
import { Presence } from "./services/presence.js";
import { DatabaseStartupError } from "./store/database.js";
import { databaseName, openStore } from "./store/open.js";
import type { MachineRecord } from "./store/records.js";
import type { FleetStore } from "./store/repository.js";

export interface HostPort {
  host: string;
  port: number;
}

export interface ControlPlaneOptions {
  listen: HostPort;
  dbPath: string;
  /** PostgreSQL instead of the SQLite file at dbPath. */
  databaseUrl?: string | null;
  /** Null only with allowInsecure. */
  tls: TlsOptions | null;
  allowInsecure: boolean;
  metricsListen: HostPort | null;
  metricsRequireKey: boolean;
  /** Where the web dashboard (and FleetService for it) is served, without client-certificate requests. */
  dashboardListen?: HostPort | null;
  /** The dashboard bundle directory (default: dist/dashboard). */
  dashboardDir?: string | null;
  staleAfterSeconds: number;
  pollHintSeconds: number;
  executorTickMs: number;
  /** Executor lease TTL on PostgreSQL (renewed every third of it); default DEFAULT_EXECUTOR_LEASE_MS. */
  executorLeaseMs?: number;
  heartbeatIntervalSeconds: number;
  reportRetentionHours: number;
  logger: Logger;
  clock?: Clock;
  /** Largest accepted RPC message (bytes). */
  maxMessageBytes?: number;
  /** How long shutdown waits for in-flight requests. */
  shutdownTimeoutMs?: number;
  /** How often old reports are pruned. */
  pruneIntervalMs?: number;
  /** How long start-up waits for a database locked by another process. */
  dbLockWaitMs?: number;
  /** Changes queued per WatchFleet stream before it is resynced instead (default 20,000). */
  watchFleetQueueLimit?: number;
  /** Handshake, header and idle timeouts of every listener (default DEFAULT_CONNECTION_TIMEOUTS). */
  connectionTimeouts?: ConnectionTimeouts;
  /** The listeners' accept queue (listen(2) backlog); undefined: DEFAULT_LISTEN_BACKLOG. */
  listenBacklog?: number;
  /** TLS handshakes in progress at once (http/handshake-gate.ts); undefined: DEFAULT_MAX_HANDSHAKES. */
  maxHandshakes?: number;
  /** How often shared presence is written and read, with PostgreSQL (default 2 s). */
  presenceFlushMs?: number;
  /** How often the API keys of open FleetService streams are re-read (default 5 s). */
  keyRecheckMs?: number;
}

export const DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024;

export class ControlPlane {
  private phaseValue: Phase = "starting";
  private storeValue: FleetStore | null = null;
  private listener: Listener | null = null;
  private metricsListener: Listener | null = null;
  private dashboardListener: Listener | null = null;
  private pruneTimer: NodeJS.Timeout | null = null;
  private readonly shutdown = new AbortController();
  readonly clock: Clock;
  readonly metrics = new ControlPlaneMetrics();
  readonly hub: PushHub;
  readonly changes = new RolloutChanges();
  readonly presence = new Presence();
  /** Machine changes for WatchFleet (on PostgreSQL the cluster bus relays them to and from the other replicas). */
  readonly fleetChanges = new FleetChanges();
  readonly feed: FleetFeed;
  /** Ends FleetService streams whose API key is revoked (here, on another replica, or offline). */
  readonly revocations: StreamRevocation;
  readonly notifier: RolloutNotifier;
  /** The bus to the other replicas and shared presence (one replica with SQLite). */
  readonly cluster: Cluster;
  private executorValue: RolloutExecutor | null = null;
  private leadershipValue: ExecutorLeadership | null = null;
  private readonly intake: AgentIntake;
  private readonly log: Logger;

  constructor(readonly options: ControlPlaneOptions) {
    this.clock = options.clock ?? wallClock;
    this.log = options.logger;
    this.hub = new PushHub({
      clock: this.clock,
      logger: this.log,
      heartbeatIntervalMs: options.heartbeatIntervalSeconds * 1000,
      observePushLatency: (s) => this.metrics.pushLatency.observe(s),
      onPresence: (id, connected) => this.fleetChanges.publish(id, connected ? "connected" : "disconnected"),
    });
    this.cluster = new Cluster({
      databaseUrl: options.databaseUrl ?? null,
      hub: this.hub,
      changes: this.changes,
      presence: this.presence,
      fleetChanges: this.fleetChanges,
      clock: this.clock,
      logger: this.log,
      pollHintSeconds: options.pollHintSeconds,
      store: () => this.store,
      kick: (rolloutId) => void this.executorValue?.kick(rolloutId),
      ...(options.presenceFlushMs ? { presenceFlushMs: options.presenceFlushMs } : {}),
    });
    this.notifier = new RolloutNotifier({
      bus: this.cluster.bus,
      logger: this.log,
      pollHintSeconds: options.pollHintSeconds,
      onStatus: (status) => this.metrics.rolloutReached(status),
      onApplied: (change) => this.fleetChanges.rolloutApplied(change),
    });
    this.intake = new AgentIntake({
      store: () => this.store,
      clock: this.clock,
      kick: (rolloutId) => {
        this.cluster.bus.publish({ kind: "kick", rolloutIds: [rolloutId] }, "others");
        return this.executorValue?.kick(rolloutId) ?? Promise.resolve();
      },
      presence: this.presence,
      logger: this.log,
      pollHintSeconds: options.pollHintSeconds,
      fleetChanges: this.fleetChanges,
    });
    this.feed = new FleetFeed({
      changes: this.fleetChanges,
      store: () => this.store,
      live: this.liveView(),
      clock: this.clock,
      logger: this.log,
      staleAfterMs: options.staleAfterSeconds * 1000,
    });
    this.revocations = new StreamRevocation({
      store: () => this.store,
      logger: this.log,
      ...(options.keyRecheckMs !== undefined ? { recheckMs: options.keyRecheckMs } : {}),
    });
  }

  get phase(): Phase {
    return this.phaseValue;
  }

  /** The store; only valid once initialize() finished (handlers run only then). */
  get store(): FleetStore {
    if (!this.storeValue) throw new ConnectError("the database is not open", Code.Unavailable);
    return this.storeValue;
  }

  get executor(): RolloutExecutor {
    if (!this.executorValue) throw new ConnectError("the executor is not running", Code.Unavailable);
    return this.executorValue;
  }

  /** Whether (and with which epoch) this process runs the executor; valid once initialized. */
  get leadership(): ExecutorLeadership {
    if (!this.leadershipValue) throw new Error("the control plane is not initialized");
    return this.leadershipValue;
  }

  get url(): string {
    if (!this.listener) throw new Error("not listening");
    return this.listener.url;
  }

  /** Aborted when stop() begins; FleetService calls observe it (tests count its listeners). */
  get shutdownSignal(): AbortSignal {
    return this.shutdown.signal;
  }

  get metricsUrl(): string | null {
    return this.metricsListener?.url ?? null;
  }

  get dashboardUrl(): string | null {
    return this.dashboardListener?.url ?? null;
  }

  private liveView(): LiveView {
    return {
      connected: (id) => this.cluster.connected(id),
      lastSeen: (m: MachineRecord) => {
        const heard = this.cluster.lastHeard(m.id);
        return m.lastSeen === null || (heard !== null && heard > m.lastSeen) ? heard : m.lastSeen;
      },
    };
  }

  private requestHandler() {
    const o = this.options;
    const helloTimeoutMs = Math.max(10_000, 3 * o.heartbeatIntervalSeconds * 1000);
    const grpcSession: GrpcSessionOptions = {
      sessions: new AgentSessions({
        intake: this.intake,
        hub: this.hub,
        logger: this.log,
        allowInsecure: o.allowInsecure,
      }),
      hub: this.hub,
      metrics: this.metrics,
      logger: this.log,
      phase: () => this.phaseValue,
      allowInsecure: o.allowInsecure,
      helloTimeoutMs,
      maxMessageBytes: o.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES,
    };
    const connect = connectNodeAdapter({
      routes: (router) => {
        router.service(
          AgentService,
          agentServiceImpl({
            intake: this.intake,
            hub: this.hub,
            logger: this.log,
            allowInsecure: o.allowInsecure,
            helloTimeoutMs,
          }),
        );
        router.service(
          FleetService,
          fleetServiceImpl({
            store: () => this.store,
            clock: this.clock,
            hub: this.hub,
            executor: () => this.executor,
            notifier: this.notifier,
            changes: this.changes,
            live: this.liveView(),
            logger: this.log,
            staleAfterMs: o.staleAfterSeconds * 1000,
            fleetChanges: this.fleetChanges,
            feed: this.feed,
            revocations: this.revocations,
            ...(o.watchFleetQueueLimit !== undefined ? { watchFleetQueueLimit: o.watchFleetQueueLimit } : {}),
          }),
          // Only FleetService links its calls to the shutdown signal (WatchRollout ends on it).
          // Connect adds one abort listener per call to that signal and Node's EventTarget scans
          // the whole list on every add and remove: given to every RPC, 10,000 open agent
          // streams made each unary call pay two 10,000-long scans (and a MaxListenersExceeded
          // warning). Agent streams end through hub.stop() instead; operator calls are few.
          { shutdownSignal: this.shutdown.signal },
        );
        registerReflection(router, [AgentService, FleetService]);
        // Undecodable requests are the caller's fault: INVALID_ARGUMENT, not INTERNAL.
        router.handlers.splice(0, router.handlers.length, ...router.handlers.map(mapUnaryDecodeErrors));
      },
      interceptors: [
        streamDecodeErrorInterceptor(),
        this.metrics.interceptor(),
        availabilityInterceptor(() => this.phaseValue),
        authInterceptor({ store: () => this.store, clock: this.clock, allowInsecure: o.allowInsecure }),
        this.revocations.interceptor(),
      ],
      contextValues: (req) => createContextValues().set(peerKey, peerIdentityOf(req)),
      readMaxBytes: o.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES,
      writeMaxBytes: 64 * 1024 * 1024,
      acceptCompression: COMPRESSIONS,
      // Connect GET requests carry the message in the URL; keep the JSON for curl readable.
      jsonOptions: { ignoreUnknownFields: true },
    });
    const plain = plainRoutesHandler({
      phase: () => this.phaseValue,
      store: () => this.storeValue,
      metrics: this.metrics,
      metricsRequireKey: o.metricsRequireKey,
      clock: this.clock,
      logger: this.log,
    });
    const rest = restCompatHandler({
      intake: this.intake,
      allowInsecure: o.allowInsecure,
      phase: () => this.phaseValue,
      logger: this.log,
    });
    const pointer = dashboardPointer(() => this.dashboardUrl);
    return {
      // The gRPC protocol of what agents call (Session, Report, ReportHealth, GetDesiredGeneration)
      // bypasses Connect: http/agent-grpc-route.ts.
      sessionRoute: agentGrpcRoute(grpcSession, {
        unary: new AgentUnary({ intake: this.intake, logger: this.log, allowInsecure: o.allowInsecure }),
        metrics: this.metrics,
        logger: this.log,
        phase: () => this.phaseValue,
        allowInsecure: o.allowInsecure,
        maxMessageBytes: grpcSession.maxMessageBytes,
        halfOpenTimeoutMs: (o.connectionTimeouts ?? DEFAULT_CONNECTION_TIMEOUTS).idleMs,
      }) satisfies StreamRoute,
      dashboard: dashboardListenerHandler({
        fleetServicePrefix: `/${FleetService.typeName}/`,
        connect: (req, res) => connect(req as never, res as never),
        plain,
        files: dashboardHandler(o.dashboardDir === undefined ? defaultDashboardDir() : o.dashboardDir),
      }),
      main: (req: IncomingMessage | Http2ServerRequest, res: ServerResponse | Http2ServerResponse) => {
        const path = (req.url ?? "/").split("?", 1)[0]!;
        if (plain(req, res, path)) return;
        if (rest(req, res, path)) return;
        if (pointer(req, res, path)) return;
        connect(req as never, res as never);
      },
      metricsOnly: (req: IncomingMessage | Http2ServerRequest, res: ServerResponse | Http2ServerResponse) => {
        const path = (req.url ?? "/").split("?", 1)[0]!;
        if (plain(req, res, path)) return;
        res.writeHead(404, { "content-type": "text/plain; charset=utf-8" });
        res.end("not found: this listener serves /metrics, /healthz and /readyz\n");
      },
    };
  }

  /** Binds the listener(s). RPCs answer UNAVAILABLE until initialize() completes. */
  async listen(): Promise<void> {
    const o = this.options;
    const handlers = this.requestHandler();
    const timeouts = {
      ...(o.connectionTimeouts ?? DEFAULT_CONNECTION_TIMEOUTS),
      backlog: o.listenBacklog,
      maxHandshakes: o.maxHandshakes,
    };
    if (o.allowInsecure) {
      this.listener = await listenInsecure(
        o.listen.host,
        o.listen.port,
        handlers.main,
        timeouts,
        handlers.sessionRoute,
      );
    } else {
      if (!o.tls) throw new Error("TLS material is required unless allowInsecure is set");
      this.listener = await listenTls(
        o.listen.host,
        o.listen.port,
        o.tls,
        handlers.main,
        timeouts,
        handlers.sessionRoute,
      );
    }
    if (o.metricsListen) {
      this.metricsListener = await listenPlainHttp(
        o.metricsListen.host,
        o.metricsListen.port,
        handlers.metricsOnly,
        timeouts,
      );
    }
    if (o.dashboardListen) {
      this.dashboardListener = o.tls
        ? await listenTls(
            o.dashboardListen.host,
            o.dashboardListen.port,
            { ...o.tls, requestClientCert: false },
            handlers.dashboard,
          )
        : await listenInsecure(o.dashboardListen.host, o.dashboardListen.port, handlers.dashboard);
    }
    this.log.info({ url: this.listener.url }, "bound; opening the database");
  }

  /** Opens and migrates the database, starts the executor, hub and pruner; then ready. */
  async initialize(): Promise<void> {
    const o = this.options;
    const { store, migration } = await openStore({
      databaseUrl: o.databaseUrl ?? null,
      path: o.dbPath,
      lockWaitMs: o.dbLockWaitMs ?? 60_000,
      onLockWait: (message) => this.log.warn({ dbPath: o.dbPath }, message),
      now: () => this.clock.now(),
    });
    if (this.phaseValue === "stopping") {
      await store.close();
      throw new DatabaseStartupError("shut down while starting");
    }
    this.storeValue = store;
    try {
      await this.cluster.start(store, this.listener?.url ?? "");
    } catch (err) {
      await store.close();
      throw err;
    }
    if (migration.applied.length) {
      this.log.info(
        { database: databaseName(o), from: migration.from, to: migration.to },
        `database migrated from schema version ${migration.from} to ${migration.to}`,
      );
    }
    const live = this.liveView();
    const staleAfterMs = this.options.staleAfterSeconds * 1000;
    this.metrics.attach({
      fleetCounts: () => store.fleetCounts(),
      agentSessions: () => this.hub.size,
      staleMachines: async () => {
        const now = this.clock.now();
        const machines = await store.listMachines({
          tags: [],
          match: "all",
          lifecycle: null,
          afterId: null,
          limit: 1_000_000,
        });
        return machines.filter(
          (m) => m.lifecycle !== "decommissioned" && isStale(m, live.lastSeen(m), now, staleAfterMs),
        ).length;
      },
    });
    this.executorValue = new RolloutExecutor({
      store,
      clock: this.clock,
      notifier: this.notifier,
      logger: this.log,
      tickMs: o.executorTickMs,
      onFenced: (epoch) => this.leadershipValue?.fenced(epoch),
    });
    this.leadershipValue = new ExecutorLeadership({
      kind: store.kind,
      store,
      executor: this.executorValue,
      registry: this.metrics.registry,
      logger: this.log,
      clock: this.clock,
      leaseMs: o.executorLeaseMs ?? DEFAULT_EXECUTOR_LEASE_MS,
    });
    this.hub.start();
    this.phaseValue = "ready";
    this.executorValue.start();
    await this.leadershipValue.start();
    const prune = () => {
      const cutoff = this.clock.now() - o.reportRetentionHours * 3600_000;
      store
        .prune(cutoff)
        .then((n) => {
          if (n.reports || n.healthReports) this.log.info(n, "pruned old reports");
        })
        .catch((err) => this.log.error({ err }, "pruning old reports failed; retrying later"));
    };
    prune();
    this.pruneTimer = setInterval(prune, o.pruneIntervalMs ?? 3600_000);
    this.pruneTimer.unref();
  }

  /** listen() + initialize(), then the "listening" log line harnesses wait for. */
  async start(): Promise<void> {
    await this.listen();
    await this.initialize();
    this.log.info(
      {
        url: this.url,
        metricsUrl: this.metricsUrl ?? undefined,
        dashboardUrl: this.dashboardUrl ?? undefined,
        database: databaseName(this.options),
      },
      "listening",
    );
  }

  async stop(): Promise<void> {
    if (this.phaseValue === "stopping") return;
    this.phaseValue = "stopping";
    this.log.info("shutting down: refusing new RPCs, ending streams");
    if (this.pruneTimer) clearInterval(this.pruneTimer);
    this.hub.stop(
      new ConnectError("the control plane is shutting down; reconnect shortly", Code.Unavailable),
    );
    this.shutdown.abort(new ConnectError("the control plane is shutting down", Code.Unavailable));
    const deadline = this.options.shutdownTimeoutMs ?? 10_000;
    await Promise.all([
      this.listener?.close(deadline),
      this.metricsListener?.close(deadline),
      this.dashboardListener?.close(deadline),
    ]);
    this.intake.stop();
    this.revocations.stop();
    await this.executorValue?.stop();
    await this.leadershipValue?.stop();
    await this.cluster.stop();
    await this.storeValue?.close();
    this.log.info("stopped");
  }
}
