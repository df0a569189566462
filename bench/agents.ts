/**
 * The load generator of the scale bench (a child of bench/run.ts, never sharing a server's event
 * loop): one mTLS HTTP/2 connection and one gRPC Session stream per simulated agent, each with its
 * own client certificate, driven by raw node:http2 with pre-encoded frames so the client's cost is
 * the same for every server. Each agent says Hello, sends a heartbeat every interval, and after a
 * broken connection reconnects with the agent's own back-off (src/agent/schedule.ts).
 *
 * Commands, one per stdin line; each answers with one JSON line on stdout:
 *   connect <url>          open every stream            → {event:"connected", ms, failed}
 *   arm <marker>           await the next push carrying marker on every stream
 *                                                       → {event:"round", received:[epoch ms…], missing}
 *   report <s> <conc>      unary Report calls for s seconds → {event:"report", rps, errors, lastError}
 *   storm <resume>         from now, time until every stream is back; resume 1: reconnects offer
 *                          the last TLS session as the agent does (src/agent/transport/tls-session.ts),
 *                          0: full handshakes     → {event:"storm", ms, attempts, resumed, handshakes,
 *                          arrivals: {p10, p50, p90, p99} ms from the kill}
 *   quit
 * Args (JSON file path): {certsFile, ca, heartbeatMs, backoffMaxMs, roundTimeoutMs}.
 */
import { readFileSync } from "node:fs";
import http2 from "node:http2";
import { monitorEventLoopDelay } from "node:perf_hooks";
import { createInterface } from "node:readline";
import { createSecureContext, type SecureContext, type TLSSocket } from "node:tls";
import { reconnectDelayMs } from "../src/agent/schedule.js";
import { resumingTlsConnector } from "../src/agent/transport/tls-session.js";
import {
  AgentMessageSchema,
  ControlMessageSchema,
  ReportRequestSchema,
} from "../src/gen/nixfleet/v1/agent_pb.js";
import { benchReport, frame, frameReader, SESSION_PATH } from "./grpc-frames.js";

interface Args {
  certsFile: string;
  ca: string;
  heartbeatMs: number;
  backoffMaxMs: number;
  roundTimeoutMs: number;
}
const args = JSON.parse(readFileSync(process.argv[2]!, "utf8")) as Args;
const { key: agentKey, certs } = JSON.parse(readFileSync(args.certsFile, "utf8")) as {
  key: string;
  certs: { cn: string; cert: string }[];
};
const ca = readFileSync(args.ca);
const heartbeat = frame(AgentMessageSchema, {
  message: { case: "heartbeat", value: { intervalSeconds: Math.round(args.heartbeatMs / 1000) } },
});

const out = (o: Record<string, unknown>) => process.stdout.write(`${JSON.stringify(o)}\n`);

class Agent {
  session: http2.ClientHttp2Session | null = null;
  up = false;
  attempt = 0;
  received = 0;
  private connector: ReturnType<typeof resumingTlsConnector>;
  /**
   * Built once: tls.connect would otherwise parse the CA, certificate and key again for every
   * connection (≈ 5 ms, synchronously). A real agent pays that on its own machine; 10,000 of
   * them in this one process blocked its event loop for many seconds per wave of reconnects, so
   * the server's handshake timeout dropped connections whose client had not yet answered — a
   * storm of this load generator's making.
   */
  private readonly tls: { secureContext: SecureContext };
  constructor(
    readonly cn: string,
    readonly cert: string,
  ) {
    this.tls = { secureContext: createSecureContext({ ca, cert, key: agentKey }) };
    this.connector = resumingTlsConnector(this.tls);
  }

  /** Opens the connection and the Session; resolves when the initial message arrived (or it failed). */
  open(url: string): Promise<boolean> {
    return new Promise((resolve) => {
      // Without resumption each connection starts with no ticket: a full handshake.
      if (!resume) this.connector = resumingTlsConnector(this.tls);
      const session = http2.connect(url, { createConnection: this.connector.createConnection });
      this.session = session;
      let connected = false;
      session.once("connect", () => {
        connected = true;
        handshakes++;
        timeline?.mark("handshakes");
        if ((session.socket as unknown as TLSSocket).isSessionReused()) resumed++;
      });
      let settled = false;
      const settle = (ok: boolean) => {
        if (settled) return;
        settled = true;
        clearTimeout(giveUp);
        resolve(ok);
      };
      // An overloaded server may never answer; count the agent as failed rather than hang.
      const giveUp = setTimeout(() => settle(false), args.roundTimeoutMs);
      giveUp.unref();
      session.on("error", () => settle(false));
      session.on("close", () => {
        // A handshake the client finished but the server dropped before the Session was up (in
        // TLS 1.3 the client is done before the server has checked its certificate): work lost.
        if (connected && !this.up) {
          droppedAfterHandshake++;
          timeline?.mark("dropped");
        }
        settle(false);
        if (this.session === session) this.lost(url);
      });
      const stream = session.request({
        ":method": "POST",
        ":path": SESSION_PATH,
        "content-type": "application/grpc+proto",
        te: "trailers",
      });
      stream.on("error", () => {});
      stream.on("close", () => {
        if (this.session === session) session.close();
      });
      stream.write(
        frame(AgentMessageSchema, {
          message: { case: "hello", value: { machineId: this.cn, tags: ["bench"] } },
        }),
      );
      stream.on(
        "data",
        frameReader(ControlMessageSchema, (m) => {
          if (m.message.case !== "desiredGenerationChanged") return;
          if (!this.up) {
            this.up = true;
            this.attempt = 0;
            settle(true);
            onUp();
            return;
          }
          onPush(this, m.message.value.generation?.hash ?? "");
        }),
      );
      const hb = setInterval(() => stream.write(heartbeat), args.heartbeatMs * (0.9 + Math.random() * 0.2));
      stream.on("close", () => clearInterval(hb));
    });
  }

  private lost(url: string) {
    this.up = false;
    this.session = null;
    if (!reconnecting) return;
    const delay = reconnectDelayMs(this.attempt++, { baseMs: 1000, maxMs: args.backoffMaxMs });
    attempts++;
    timeline?.mark("attempts");
    setTimeout(() => void this.open(url), delay).unref();
  }
}

const agents = certs.map((c) => new Agent(c.cn, c.cert));
let reconnecting = false;
let attempts = 0;
let resume = true;
let handshakes = 0;
let resumed = 0;
let droppedAfterHandshake = 0;
let onUp = () => {};

/**
 * What happened in each second of a storm (attempts started, handshakes the client finished,
 * those dropped before the Session was up, Sessions up), and this process's own CPU and event
 * loop delay: whether the time went to the server, to the back-off, or to this load generator.
 */
class Timeline {
  private readonly t0 = Date.now();
  private readonly cpu0 = process.cpuUsage();
  private readonly delay = monitorEventLoopDelay({ resolution: 20 });
  readonly seconds: Array<Record<string, number>> = [];
  constructor() {
    this.delay.enable();
  }
  mark(what: string): void {
    const s = Math.floor((Date.now() - this.t0) / 1000);
    this.seconds[s] ??= {};
    const row = this.seconds[s];
    row[what] = (row[what] ?? 0) + 1;
  }
  summary(): Record<string, unknown> {
    this.delay.disable();
    const cpu = process.cpuUsage(this.cpu0);
    return {
      clientCpuMs: Math.round((cpu.user + cpu.system) / 1000),
      clientLoopDelayMs: {
        p99: Math.round(this.delay.percentile(99) / 1e6),
        max: Math.round(this.delay.max / 1e6),
      },
      perSecond: Array.from(this.seconds, (r) => r ?? {}),
    };
  }
}
let timeline: Timeline | undefined;
let onPush: (a: Agent, hash: string) => void = () => {};

async function connectAll(url: string): Promise<void> {
  const t0 = Date.now();
  let failed = 0;
  let next = 0;
  // 64 handshakes in flight: enough to keep the server busy without a SYN flood of our own making.
  await Promise.all(
    Array.from({ length: 64 }, async () => {
      while (next < agents.length) {
        const a = agents[next++]!;
        if (!(await a.open(url))) failed++;
      }
    }),
  );
  reconnecting = true;
  out({ event: "connected", ms: Date.now() - t0, failed, up: agents.filter((a) => a.up).length });
}

function arm(marker: string): void {
  const received: number[] = [];
  const seen = new Set<Agent>();
  // Agents whose Session is not up (a connect that failed under load) cannot receive the push;
  // waiting for them would stretch the round to its timeout and count that idle time as push CPU.
  const expected = agents.filter((a) => a.up).length;
  const finish = () => {
    clearTimeout(timer);
    onPush = () => {};
    out({ event: "round", received, missing: expected - received.length, notUp: agents.length - expected });
  };
  const timer = setTimeout(finish, args.roundTimeoutMs);
  onPush = (a, hash) => {
    if (!hash.includes(marker) || seen.has(a)) return;
    seen.add(a);
    received.push(Date.now());
    if (received.length === expected) finish();
  };
  out({ event: "armed" });
}

function storm(resumeSessions: boolean): void {
  const t0 = Date.now();
  attempts = 0;
  handshakes = 0;
  resumed = 0;
  droppedAfterHandshake = 0;
  resume = resumeSessions;
  // When each agent came back (ms from the kill): the spread shows whether the back-off keeps
  // the fleet from arriving at once.
  const back: number[] = [];
  timeline = new Timeline();
  const check = () => {
    back.push(Date.now() - t0);
    timeline?.mark("up");
    if (agents.every((a) => a.up)) {
      onUp = () => {};
      const at = (p: number) => back[Math.min(back.length - 1, Math.floor(back.length * p))];
      const arrivals = { p10: at(0.1), p50: at(0.5), p90: at(0.9), p99: at(0.99) };
      out({
        event: "storm",
        ms: Date.now() - t0,
        attempts,
        handshakes,
        resumed,
        droppedAfterHandshake,
        arrivals,
        ...timeline?.summary(),
      });
      timeline = undefined;
    }
  };
  onUp = check;
  out({ event: "storming" });
}

async function report(seconds: number, concurrency: number): Promise<void> {
  const bodies = agents.map((a) => frame(ReportRequestSchema, benchReport(a.cn)));
  let n = 0;
  let errors = 0;
  let lastError = "";
  let i = 0;
  const end = Date.now() + seconds * 1000;
  const t0 = Date.now();
  const call = (k: number) =>
    new Promise<void>((resolve) => {
      const s = agents[k]!.session;
      if (!s || s.closed) {
        errors++;
        lastError = "no session";
        return resolve();
      }
      const req = s.request({
        ":method": "POST",
        ":path": "/nixfleet.v1.AgentService/Report",
        "content-type": "application/grpc+proto",
        te: "trailers",
      });
      let status: string | undefined;
      req.on("response", (h) => {
        status = h["grpc-status"] as string | undefined;
      });
      req.on("trailers", (t) => {
        status = (t["grpc-status"] as string | undefined) ?? status;
        if (status !== "0") lastError = `grpc-status ${status}: ${String(t["grpc-message"] ?? "")}`;
      });
      req.on("data", () => {});
      req.on("end", () => {
        if (status === "0") n++;
        else errors++;
        resolve();
      });
      req.on("error", (err) => {
        errors++;
        lastError = err.message;
        resolve();
      });
      req.end(bodies[k]);
    });
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (Date.now() < end) await call(i++ % agents.length);
    }),
  );
  out({ event: "report", rps: n / ((Date.now() - t0) / 1000), requests: n, errors, lastError });
}

for await (const line of createInterface({ input: process.stdin })) {
  const [cmd, a1, a2] = line.trim().split(/\s+/);
  if (cmd === "connect") await connectAll(a1!);
  else if (cmd === "arm") arm(a1!);
  else if (cmd === "report") await report(Number(a1), Number(a2));
  else if (cmd === "storm") storm(a1 !== "0");
  else if (cmd === "quit") break;
}
reconnecting = false;
for (const a of agents) a.session?.destroy();
process.exit(0);
