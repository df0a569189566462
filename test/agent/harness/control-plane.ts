/**
 * A scripted stand-in for the control plane, for the agent's integration tests: a real Connect
 * server (connectNodeAdapter on node:http2 with mTLS, HTTP/1.1 allowed for connect-json) serving
 * AgentService. Tests set each machine's desired generation, push it over live Session/Watch
 * streams, make the server answer UNAVAILABLE or go down entirely, and read back every report,
 * health report, ack and heartbeat it received.
 *
 * It checks what the real one checks at the edge: the client certificate CN must equal the
 * request's machine_id (PERMISSION_DENIED otherwise), and Session must start with Hello.
 */
import { readFileSync } from "node:fs";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import type { TLSSocket } from "node:tls";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import {
  Code,
  ConnectError,
  type ConnectRouter,
  createContextKey,
  createContextValues,
  type HandlerContext,
} from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import {
  type AgentMessage,
  AgentService,
  type ControlMessage,
  ControlMessageSchema,
  type ReportHealthRequest,
  type ReportRequest,
} from "../../../src/gen/nixfleet/v1/agent_pb.js";
import {
  type DesiredGeneration,
  DesiredGenerationSchema,
  Outcome,
} from "../../../src/gen/nixfleet/v1/types_pb.js";
import type { Pki } from "../../fixtures/pki.js";

const kPeerCn = createContextKey<string | undefined>(undefined, { description: "client certificate CN" });

export interface Received<T> {
  at: number;
  cn: string | undefined;
  message: T;
  via: "unary";
}

interface Stream {
  machineId: string;
  kind: "session" | "watch";
  send(msg: MessageInitShape<typeof ControlMessageSchema>): void;
  close(): void;
}

/** An async queue feeding a server stream. */
class Feed {
  private items: ControlMessage[] = [];
  private waiter: (() => void) | undefined;
  closed = false;
  push(m: ControlMessage): void {
    this.items.push(m);
    this.waiter?.();
  }
  close(): void {
    this.closed = true;
    this.waiter?.();
  }
  async *drain(signal: AbortSignal): AsyncGenerator<ControlMessage> {
    const onAbort = () => this.close();
    signal.addEventListener("abort", onAbort, { once: true });
    try {
      for (;;) {
        while (this.items.length) yield this.items.shift()!;
        if (this.closed) return;
        await new Promise<void>((r) => {
          this.waiter = r;
        });
        this.waiter = undefined;
      }
    } finally {
      signal.removeEventListener("abort", onAbort);
    }
  }
}

export interface DesiredInit {
  hash: string;
  cacheUrl?: string;
  /** Default: a new, higher revision each call. */
  revision?: bigint;
  rolloutId?: string;
}

export interface ControlPlaneOptions {
  pki: Pki;
  /** Reuse a port (restart on the same address). */
  port?: number;
  /** Seconds between heartbeats the server sends on streams (0 = none). */
  heartbeatSeconds?: number;
}

export class ScriptedControlPlane {
  readonly reports: Received<ReportRequest>[] = [];
  readonly healthReports: Received<ReportHealthRequest>[] = [];
  readonly acks: Array<{ machineId: string; revision: bigint; at: number }> = [];
  readonly heartbeats: Array<{ machineId: string; at: number }> = [];
  readonly hellos: Array<{ machineId: string; currentGeneration: string; tags: string[]; at: number }> = [];
  /** Heartbeats this server wrote to streams. */
  heartbeatsSent = 0;
  readonly calls: Record<string, number> = {
    getDesiredGeneration: 0,
    report: 0,
    reportHealth: 0,
    session: 0,
    watch: 0,
  };
  /** When set, every RPC fails with this code (e.g. Code.Unavailable for a cold start). */
  failWith: Code | undefined;
  /** When true, streams stay silent: no heartbeats, no initial assignment. */
  silentStreams = false;
  /** When true, Session and Watch fail with UNAVAILABLE (unary calls still work). */
  refuseStreams = false;
  private desired = new Map<string, DesiredGeneration | undefined>();
  private pollHints = new Map<string, number | undefined>();
  private streams = new Set<Stream>();
  private revision = 0n;
  private server: http2.Http2SecureServer | undefined;
  private sessions = new Set<http2.ServerHttp2Session>();
  private heartbeatTimer: NodeJS.Timeout | undefined;
  private listeners = new Set<() => void>();
  port: number;

  private constructor(private readonly options: ControlPlaneOptions) {
    this.port = options.port ?? 0;
  }

  static async start(options: ControlPlaneOptions): Promise<ScriptedControlPlane> {
    const cp = new ScriptedControlPlane(options);
    await cp.start();
    return cp;
  }

  get url(): string {
    return `https://127.0.0.1:${this.port}`;
  }

  get running(): boolean {
    return this.server !== undefined;
  }

  // ------------------------------------------------------------------ scripting

  /** Sets (or clears, with undefined) a machine's desired generation; pushes it to open streams. */
  setDesired(
    machineId: string,
    init: DesiredInit | undefined,
    options: { push?: boolean; pollHint?: number } = {},
  ): DesiredGeneration | undefined {
    let generation: DesiredGeneration | undefined;
    if (init) {
      this.revision =
        init.revision !== undefined && init.revision > this.revision ? init.revision : this.revision + 1n;
      generation = create(DesiredGenerationSchema, {
        hash: init.hash,
        cacheUrl: init.cacheUrl ?? "",
        revision: init.revision ?? this.revision,
        rolloutId: init.rolloutId ?? "",
        setAt: timestampFromMs(Date.now()),
      });
    }
    this.desired.set(machineId, generation);
    if (options.pollHint !== undefined) this.pollHints.set(machineId, options.pollHint);
    if (options.push ?? true) this.pushDesired(machineId);
    return generation;
  }

  pushDesired(machineId: string): void {
    const generation = this.desired.get(machineId);
    const hint = this.pollHints.get(machineId);
    for (const s of this.streams) {
      if (s.machineId !== machineId) continue;
      s.send({
        message: {
          case: "desiredGenerationChanged",
          value: {
            ...(generation ? { generation } : {}),
            ...(hint !== undefined ? { pollHintSeconds: hint } : {}),
          },
        },
      });
    }
  }

  checkNow(machineId: string): void {
    for (const s of this.streams)
      if (s.machineId === machineId) s.send({ message: { case: "checkNow", value: {} } });
  }

  connectedStreams(machineId?: string): number {
    return [...this.streams].filter((s) => machineId === undefined || s.machineId === machineId).length;
  }

  /** Ends every open stream from the server side (the agent should reconnect). */
  dropStreams(): void {
    for (const s of this.streams) s.close();
    this.streams.clear();
  }

  reportsFor(machineId: string): ReportRequest[] {
    return this.reports.filter((r) => r.message.machineId === machineId).map((r) => r.message);
  }

  outcomes(machineId: string): string[] {
    return this.reportsFor(machineId).map((r) => Outcome[r.outcome]);
  }

  /** Resolves with the first report (at or after index `from`) matching `pred`. */
  waitForReport(pred: (r: ReportRequest) => boolean, timeoutMs = 60_000, from = 0): Promise<ReportRequest> {
    return this.waitFor(
      () => this.reports.slice(from).find((r) => pred(r.message))?.message,
      timeoutMs,
      "report",
    );
  }

  waitForHealth(
    pred: (r: ReportHealthRequest) => boolean,
    timeoutMs = 60_000,
    from = 0,
  ): Promise<ReportHealthRequest> {
    return this.waitFor(
      () => this.healthReports.slice(from).find((r) => pred(r.message))?.message,
      timeoutMs,
      "health report",
    );
  }

  /** Polls `check` on every received message (and every 50 ms) until it yields a value. */
  waitFor<T>(check: () => T | undefined | false, timeoutMs = 60_000, what = "condition"): Promise<T> {
    return new Promise((resolve, reject) => {
      const tick = () => {
        const v = check();
        if (v !== undefined && v !== false) {
          done();
          resolve(v);
        }
      };
      const interval = setInterval(tick, 50);
      const timer = setTimeout(() => {
        done();
        reject(
          new Error(
            `timed out after ${timeoutMs} ms waiting for ${what}; ${this.reports.length} reports, the last ones: ${JSON.stringify(
              this.reports
                .slice(-8)
                .map((r) => `${Outcome[r.message.outcome]}: ${r.message.message.slice(0, 240)}`),
            )}`,
          ),
        );
      }, timeoutMs);
      const done = () => {
        clearInterval(interval);
        clearTimeout(timer);
        this.listeners.delete(tick);
      };
      this.listeners.add(tick);
      tick();
    });
  }

  private notify(): void {
    for (const l of [...this.listeners]) l();
  }

  // ------------------------------------------------------------------ service

  private identify(ctx: HandlerContext, machineId: string): void {
    if (this.failWith !== undefined) throw new ConnectError("scripted failure", this.failWith);
    const cn = ctx.values.get(kPeerCn);
    if (cn !== machineId) {
      throw new ConnectError(
        `machine_id ${JSON.stringify(machineId)} does not match the certificate CN ${JSON.stringify(cn)}`,
        Code.PermissionDenied,
      );
    }
  }

  private routes = (router: ConnectRouter) => {
    router.service(AgentService, {
      getDesiredGeneration: (req, ctx) => {
        this.calls["getDesiredGeneration"]!++;
        this.identify(ctx, req.machineId);
        this.notify();
        const generation = this.desired.get(req.machineId);
        const hint = this.pollHints.get(req.machineId);
        return {
          ...(generation ? { generation } : {}),
          ...(hint !== undefined ? { pollHintSeconds: hint } : {}),
        };
      },
      report: (req, ctx) => {
        this.calls["report"]!++;
        this.identify(ctx, req.machineId);
        this.reports.push({ at: Date.now(), cn: ctx.values.get(kPeerCn), message: req, via: "unary" });
        this.notify();
        return {};
      },
      reportHealth: (req, ctx) => {
        this.calls["reportHealth"]!++;
        this.identify(ctx, req.machineId);
        this.healthReports.push({ at: Date.now(), cn: ctx.values.get(kPeerCn), message: req, via: "unary" });
        this.notify();
        return {};
      },
      session: (requests, ctx) => this.session(requests, ctx),
      watch: (req, ctx) => this.watch(req.machineId, ctx),
    });
  };

  private openStream(machineId: string, kind: "session" | "watch", feed: Feed): Stream {
    const stream: Stream = {
      machineId,
      kind,
      send: (msg) => feed.push(create(ControlMessageSchema, msg)),
      close: () => feed.close(),
    };
    this.streams.add(stream);
    return stream;
  }

  private async *session(
    requests: AsyncIterable<AgentMessage>,
    ctx: HandlerContext,
  ): AsyncGenerator<ControlMessage> {
    this.calls["session"]!++;
    if (this.refuseStreams) throw new ConnectError("streams are refused (scripted)", Code.Unavailable);
    const iterator = requests[Symbol.asyncIterator]();
    const first = await iterator.next();
    if (first.done || first.value.message.case !== "hello") {
      throw new ConnectError("the first Session message must be Hello", Code.InvalidArgument);
    }
    const hello = first.value.message.value;
    this.identify(ctx, hello.machineId);
    this.hellos.push({
      machineId: hello.machineId,
      currentGeneration: hello.currentGeneration,
      tags: hello.tags,
      at: Date.now(),
    });
    const feed = new Feed();
    const stream = this.openStream(hello.machineId, "session", feed);
    // The agent's half: acks and heartbeats, read in the background.
    void (async () => {
      try {
        for (;;) {
          const next = await iterator.next();
          if (next.done) break;
          const m = next.value.message;
          if (m.case === "ack")
            this.acks.push({ machineId: hello.machineId, revision: m.value.revision, at: Date.now() });
          if (m.case === "heartbeat") this.heartbeats.push({ machineId: hello.machineId, at: Date.now() });
          this.notify();
        }
      } catch {
        // the stream ended
      }
    })();
    this.notify();
    try {
      if (!this.silentStreams) this.pushDesiredTo(stream);
      yield* feed.drain(ctx.signal);
    } finally {
      this.streams.delete(stream);
      this.notify();
    }
  }

  private async *watch(machineId: string, ctx: HandlerContext): AsyncGenerator<ControlMessage> {
    this.calls["watch"]!++;
    if (this.refuseStreams) throw new ConnectError("streams are refused (scripted)", Code.Unavailable);
    this.identify(ctx, machineId);
    const feed = new Feed();
    const stream = this.openStream(machineId, "watch", feed);
    this.notify();
    try {
      if (!this.silentStreams) this.pushDesiredTo(stream);
      yield* feed.drain(ctx.signal);
    } finally {
      this.streams.delete(stream);
      this.notify();
    }
  }

  private pushDesiredTo(stream: Stream): void {
    const generation = this.desired.get(stream.machineId);
    const hint = this.pollHints.get(stream.machineId);
    stream.send({
      message: {
        case: "desiredGenerationChanged",
        value: {
          ...(generation ? { generation } : {}),
          ...(hint !== undefined ? { pollHintSeconds: hint } : {}),
        },
      },
    });
  }

  // ------------------------------------------------------------------ lifecycle

  async start(): Promise<void> {
    if (this.server) return;
    const { pki } = this.options;
    const server = http2.createSecureServer(
      {
        cert: readFileSync(pki.server.cert),
        key: readFileSync(pki.server.key),
        ca: readFileSync(pki.ca),
        requestCert: true,
        rejectUnauthorized: true,
        allowHTTP1: true,
      },
      connectNodeAdapter({
        routes: this.routes,
        contextValues: (req) => {
          const socket = req.socket as TLSSocket;
          const cert =
            typeof socket.getPeerCertificate === "function" ? socket.getPeerCertificate() : undefined;
          return createContextValues().set(kPeerCn, cert?.subject?.CN as string | undefined);
        },
      }),
    );
    server.on("session", (s) => {
      this.sessions.add(s);
      s.on("close", () => this.sessions.delete(s));
    });
    const httpSockets = new Set<import("node:net").Socket>();
    server.on("secureConnection", (socket) => {
      httpSockets.add(socket);
      socket.on("close", () => httpSockets.delete(socket));
    });
    (server as unknown as { nixfleetSockets: typeof httpSockets }).nixfleetSockets = httpSockets;
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(this.port, "127.0.0.1", () => {
        server.off("error", reject);
        resolve();
      });
    });
    this.port = (server.address() as AddressInfo).port;
    this.server = server;
    const hb = this.options.heartbeatSeconds ?? 1;
    if (hb > 0) {
      this.heartbeatTimer = setInterval(() => {
        if (this.silentStreams) return;
        for (const s of this.streams) {
          s.send({
            message: {
              case: "heartbeat",
              value: { sentAt: timestampFromMs(Date.now()), intervalSeconds: hb },
            },
          });
          this.heartbeatsSent++;
        }
      }, hb * 1000);
    }
  }

  /** Goes down: streams cut, connections refused until start() (same port). */
  async stop(): Promise<void> {
    const server = this.server;
    if (!server) return;
    this.server = undefined;
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    this.dropStreams();
    for (const s of this.sessions) s.destroy();
    const sockets = (server as unknown as { nixfleetSockets: Set<import("node:net").Socket> })
      .nixfleetSockets;
    for (const socket of sockets) socket.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}
