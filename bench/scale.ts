/**
 * The scale section of `npm run bench`: S agents' mTLS Session streams (bench/agents.ts, its own
 * process) held by three servers in turn, measured from outside through /proc:
 *
 * - nixfleet's control plane (a real `serve` process on SQLite),
 * - a naive connect-node server: the same Session RPC with a trivial handler,
 * - raw node:http2 writing pre-encoded frames — what the runtime can do at best.
 *
 * Figures: push fan-out (first arrival, p50, p99 from CreateRollout — for the baselines from the
 * trigger), server CPU per pushed stream, RSS per connected agent, idle CPU with every stream
 * connected (heartbeats only); for nixfleet also GetFleetStatus at S machines, Report throughput
 * against the bare store call, and a reconnect storm after SIGKILL + restart.
 */
import { readFileSync, writeFileSync } from "node:fs";
import https from "node:https";
import { loadavg } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";
import { createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { FleetService, RolloutStrategy } from "../src/gen/nixfleet/v1/fleet_pb.js";
import type { Pki } from "../test/fixtures/pki.js";
import { programArgs } from "../test/fixtures/programs.js";
import { mintClientCerts } from "./certs.js";
import { type Child, child, createAdminKey, lineChild } from "./child.js";
import { cpuMs, openFileLimit, rssBytes } from "./proc-stats.js";

export interface ScaleOptions {
  dir: string;
  pki: Pki;
  streams: number;
  rounds: number;
  idleSeconds: number;
  reportSeconds: number;
  /** The servers' heartbeat to every stream (nixfleet's --heartbeat-interval). */
  heartbeatSeconds: number;
  /** Each simulated agent's heartbeat (the agent's own default is 30 s). */
  agentHeartbeatSeconds: number;
  storm: boolean;
  /** Only connect and storm (no idle, fan-out, status or Report figures). */
  stormOnly?: boolean;
  /** The storms to run, in this order, `stormRepeats` times over (interleaved: same load). */
  stormVariants?: StormVariant[];
  stormRepeats?: number;
  /** Which servers: "nixfleet", "naive", "raw". */
  targets: string[];
  /** Run the control plane with --cpu-prof into this directory (null: no profile). */
  cpuProfileDir: string | null;
  log: (line: string) => void;
}

export interface StormVariant {
  /** Whether the agents offer their last TLS session on reconnect (as the real agent does). */
  resume: boolean;
  /** The control plane's --listen-backlog (undefined: its default). */
  backlog?: number | undefined;
  /** The control plane's --max-handshakes (undefined: its default; 0: no limit). */
  maxHandshakes?: number | undefined;
}

export interface StormRun {
  variant: string;
  seconds: number;
  reconnectAttempts: number;
  /** Handshakes during the storm and how many of them resumed a session. */
  handshakes: number;
  resumed: number;
  /** Connections whose handshake the client finished but that closed before the Session was up. */
  droppedAfterHandshake: number;
  /** When agents were back, ms from the kill (p10, p50, p90, p99). */
  arrivalsMs: Record<string, number>;
  cpuMsPerReconnect: number;
  loadAverage: number;
  /** The load generator's own CPU and event-loop delay during the storm. */
  clientCpuMs?: number | undefined;
  clientLoopDelayMs?: Record<string, number> | undefined;
  /** Per second from the kill: attempts, handshakes, dropped, up. */
  perSecond?: Array<Record<string, number>> | undefined;
}

/**
 * "resume/4096", "full/511", "resume/4096/0": resumption on or off, optionally the backlog, and
 * optionally the cap on handshakes in progress (0: none).
 */
export function parseStormVariant(text: string): StormVariant {
  const [mode, backlog, maxHandshakes] = text.split("/");
  if (mode !== "resume" && mode !== "full")
    throw new Error(
      `--storm-variants: ${JSON.stringify(text)}: expected resume or full, optionally /BACKLOG and /MAX_HANDSHAKES`,
    );
  const whole = (value: string | undefined, what: string, min: number) => {
    const n = value === undefined ? undefined : Number(value);
    if (n !== undefined && !(Number.isInteger(n) && n >= min))
      throw new Error(`--storm-variants: ${JSON.stringify(text)}: ${what} must be a whole number ≥ ${min}`);
    return n;
  };
  return {
    resume: mode === "resume",
    backlog: whole(backlog, "the backlog", 1),
    maxHandshakes: whole(maxHandshakes, "the handshake cap", 0),
  };
}

const variantName = (v: StormVariant) =>
  [v.resume ? "resume" : "full", v.backlog, v.maxHandshakes].filter((x) => x !== undefined).join("/");

export interface Fanout {
  firstMs: number;
  p50Ms: number;
  p99Ms: number;
  missing: number;
  cpuPerStreamUs: number;
}

export interface TargetResult {
  target: string;
  connectSeconds: number;
  failedConnects: number;
  rssPerAgentKB: number;
  idleCpuPercent: number;
  rounds: Fanout[];
  /** nixfleet only. */
  fleetStatusMs?: number;
  fleetStatusBytes?: number;
  reportRps?: number;
  reportErrors?: number;
  storeLoopRps?: number;
  storm?: { seconds: number; reconnectAttempts: number; cpuMsPerReconnect: number };
  /** Every storm run (the first is `storm`). */
  storms?: StormRun[];
}

interface Server {
  url: string;
  pid: number;
  /** Sends a DesiredGenerationChanged whose hash contains `marker` to every stream; resolves when sent off. */
  trigger(marker: string): Promise<void>;
  after?(): Promise<void>;
  stop(): Promise<void>;
}

const pct = (xs: number[], p: number) => xs[Math.min(xs.length - 1, Math.floor(xs.length * p))] ?? Number.NaN;

function withKey(key: string): Interceptor {
  return (next) => (req) => {
    req.header.set("authorization", `Bearer ${key}`);
    return next(req);
  };
}

/** Starts `serve`; resolves once it logged "listening". */
async function startControlPlane(
  o: ScaleOptions,
  db: string,
  listen: string,
  v: Partial<StormVariant> = {},
): Promise<Child> {
  const args = [
    ...(o.cpuProfileDir ? ["--cpu-prof", "--cpu-prof-dir", o.cpuProfileDir] : []),
    ...programArgs("control-plane"),
    "serve",
    "--listen",
    listen,
    "--db-path",
    db,
    "--tls-cert",
    o.pki.server.cert,
    "--tls-key",
    o.pki.server.key,
    "--client-ca",
    o.pki.ca,
    "--heartbeat-interval",
    String(o.heartbeatSeconds),
    ...(v.backlog ? ["--listen-backlog", String(v.backlog)] : []),
    ...(v.maxHandshakes !== undefined ? ["--max-handshakes", String(v.maxHandshakes)] : []),
  ];
  // The NixOS unit's runtime setting (nix/modules/control-plane.nix): the control plane as shipped.
  const cp = lineChild(process.execPath, args, { ...process.env, MALLOC_MMAP_THRESHOLD_: "65536" });
  await cp.waitLine((l) => l.includes('"msg":"listening"'));
  return cp;
}

type FleetClient = ReturnType<typeof createClient<typeof FleetService>>;

interface NixfleetServer extends Server {
  db: string;
  client: FleetClient;
  cp(): Child;
  /** Creates the next round's release (before the clock starts: the figure is the rollout's). */
  prepare(marker: string): Promise<void>;
  /** Starts a new process on the same port and database (and TLS ticket-key file). */
  restart(v: StormVariant): Promise<void>;
}

async function nixfleet(o: ScaleOptions, names: string[]): Promise<NixfleetServer> {
  const db = join(o.dir, "scale.db");
  const key = createAdminKey(["--db-path", db]);
  let cp = await startControlPlane(o, db, "127.0.0.1:0");
  const url = JSON.parse(cp.lines.find((l) => l.includes('"msg":"listening"'))!).url as string;
  const client = createClient(
    FleetService,
    createGrpcTransport({
      baseUrl: url,
      nodeOptions: { ca: readFileSync(o.pki.ca) },
      interceptors: [withKey(key)],
    }),
  );
  let rolloutId = "";
  let pending: string | null = null;
  const server: NixfleetServer = {
    url,
    get pid() {
      return cp.proc.pid!;
    },
    db,
    cp: () => cp,
    client,
    async prepare(marker: string) {
      const { release } = await client.createRelease({
        entries: names.map((hostname, i) => ({
          hostname,
          storePath: `/nix/store/${String(i)
            .padStart(32, "0")
            .replace(/[eotu]/g, "0")}-nixos-system-${marker}`,
        })),
      });
      pending = release!.id;
    },
    async trigger() {
      const { rollout } = await client.createRollout({
        releaseId: pending!,
        target: { tags: ["bench"] },
        strategy: RolloutStrategy.ALL_AT_ONCE,
        healthTimeoutSeconds: 3600,
      });
      rolloutId = rollout!.id;
    },
    async after() {
      await client.cancelRollout({ rolloutId });
    },
    async restart(v) {
      cp = await startControlPlane(o, db, new URL(url).host, v);
    },
    async stop() {
      if (cp.proc.exitCode !== null || cp.proc.signalCode !== null) return;
      cp.proc.kill("SIGTERM");
      await cp.exited;
    },
  };
  return server;
}

async function baseline(o: ScaleOptions, script: string): Promise<Server> {
  const c = child(script, [
    JSON.stringify({
      cert: o.pki.server.cert,
      key: o.pki.server.key,
      ca: o.pki.ca,
      heartbeatMs: o.heartbeatSeconds * 1000,
    }),
  ]);
  const { url, pid } = JSON.parse(await c.waitLine((l) => l.startsWith("{"))) as { url: string; pid: number };
  const ca = readFileSync(o.pki.ca);
  return {
    url,
    pid,
    trigger: (marker) =>
      new Promise((resolve, reject) => {
        const req = https.request(`${url}/bench/trigger`, { method: "POST", ca }, (res) => {
          res.resume();
          res.on("end", () => resolve());
        });
        req.on("error", reject);
        req.end(marker);
      }),
    async stop() {
      c.proc.kill("SIGTERM");
      await c.exited;
    },
  };
}

async function measureTarget(
  o: ScaleOptions,
  name: string,
  server: Server & { prepare?(marker: string): Promise<void> },
  certsFile: string,
): Promise<{ result: TargetResult; agents: Child }> {
  const argsFile = join(o.dir, "agents.json");
  writeFileSync(
    argsFile,
    JSON.stringify({
      certsFile,
      ca: o.pki.ca,
      heartbeatMs: o.agentHeartbeatSeconds * 1000,
      backoffMaxMs: 30_000,
      roundTimeoutMs: 120_000,
    }),
  );
  await sleep(1000);
  const rss0 = rssBytes(server.pid);
  const agents = child("agents.ts", [argsFile]);
  o.log(`${name}: connecting ${o.streams} mTLS Session streams…`);
  const connected = await agents.command(`connect ${server.url}`);
  await sleep(3000);
  const rss1 = rssBytes(server.pid);
  o.log(`${name}: idle for ${o.idleSeconds}s…`);
  const idle0 = cpuMs(server.pid);
  await sleep(o.idleSeconds * 1000);
  const idleCpu = ((cpuMs(server.pid) - idle0) / (o.idleSeconds * 1000)) * 100;
  const rounds: Fanout[] = [];
  for (let r = 1; r <= o.rounds; r++) {
    const marker = `bench-${name.replace(/\W/g, "")}-r${r}x`;
    await server.prepare?.(marker);
    await agents.command(`arm ${marker}`);
    const cpu0 = cpuMs(server.pid);
    const t0 = Date.now();
    const done = agents.waitLine((l) => l.includes('"event":"round"'), agents.lines.length);
    await server.trigger(marker);
    const round = JSON.parse(await done) as { received: number[]; missing: number };
    const cpu = cpuMs(server.pid) - cpu0;
    const lat = round.received.map((t) => t - t0).sort((a, b) => a - b);
    rounds.push({
      firstMs: lat[0] ?? Number.NaN,
      p50Ms: pct(lat, 0.5),
      p99Ms: pct(lat, 0.99),
      missing: round.missing,
      cpuPerStreamUs: (cpu * 1000) / o.streams,
    });
    o.log(`${name}: round ${r}: p99 ${pct(lat, 0.99)} ms, ${round.missing} missing`);
    await server.after?.();
    await sleep(1000);
  }
  return {
    agents,
    result: {
      target: name,
      connectSeconds: Number(connected["ms"]) / 1000,
      failedConnects: Number(connected["failed"]),
      rssPerAgentKB: (rss1 - rss0) / 1024 / o.streams,
      idleCpuPercent: idleCpu,
      rounds,
    },
  };
}

/** The same store call Report makes, in a bare loop on the same database (the control plane stopped). */
async function storeLoop(db: string, names: string[], seconds: number): Promise<number> {
  const c = child("store-loop.ts", [db, String(seconds), ...names.slice(0, 1000)]);
  return Number((JSON.parse(await c.waitLine((l) => l.startsWith("{"))) as { rps: number }).rps);
}

export async function scale(o: ScaleOptions): Promise<TargetResult[]> {
  const limit = openFileLimit("self");
  if (limit < o.streams + 512)
    throw new Error(
      `the open-file limit (${limit}) is below ${o.streams} streams + 512: raise it (ulimit -n) or lower --streams`,
    );
  const t = performance.now();
  const minted = mintClientCerts(o.pki, "agent-", o.streams);
  const certsFile = join(o.dir, "agent-certs.json");
  writeFileSync(certsFile, JSON.stringify(minted));
  const names = minted.certs.map((c) => c.cn);
  o.log(`scale: ${o.streams} client certificates in ${Math.round(performance.now() - t)} ms`);
  const results: TargetResult[] = [];

  if (o.targets.includes("nixfleet")) results.push(await measureNixfleet(o, names, certsFile));
  for (const [name, script] of [
    ["naive connect-node", "naive-push-server.ts"],
    ["raw node:http2", "raw-push-server.ts"],
  ] as const) {
    if (!o.targets.includes(name.split(" ")[0]!)) continue;
    const server = await baseline(o, script);
    try {
      const { result, agents } = await measureTarget(o, name, server, certsFile);
      agents.proc.stdin!.end("quit\n");
      await agents.exited;
      results.push(result);
    } finally {
      await server.stop();
    }
  }
  return results;
}

async function measureNixfleet(o: ScaleOptions, names: string[], certsFile: string): Promise<TargetResult> {
  const nf = await nixfleet(o, names);
  try {
    const { result, agents } = await measureTarget(o, "nixfleet", nf, certsFile);
    if (!o.stormOnly) {
      const client = nf.client;
      const times: number[] = [];
      let bytes = 0;
      for (let i = 0; i < 5; i++) {
        const t0 = performance.now();
        const status = await client.getFleetStatus({});
        times.push(performance.now() - t0);
        bytes = status.machines.length;
      }
      result.fleetStatusMs = times.sort((a, b) => a - b)[2]!;
      result.fleetStatusBytes = bytes;
      o.log("nixfleet: Report throughput…");
      const report = await agents.command(`report ${o.reportSeconds} 16`);
      result.reportRps = Number(report["rps"]);
      result.reportErrors = Number(report["errors"]);
      if (result.reportErrors > 0) o.log(`nixfleet: Report errors: ${String(report["lastError"])}`);
    }
    if (o.storm || o.stormOnly) {
      result.storms = [];
      const variants = o.stormVariants ?? [{ resume: true }];
      for (let r = 0; r < (o.stormRepeats ?? 1); r++) {
        for (const v of variants) {
          const run = await stormOnce(o, nf, agents, v);
          result.storms.push(run);
          o.log(`nixfleet: storm ${JSON.stringify(run)}`);
        }
      }
      const first = result.storms[0]!;
      result.storm = {
        seconds: first.seconds,
        reconnectAttempts: first.reconnectAttempts,
        cpuMsPerReconnect: first.cpuMsPerReconnect,
      };
    }
    agents.proc.stdin!.end("quit\n");
    await agents.exited;
    await nf.stop();
    if (!o.stormOnly) result.storeLoopRps = await storeLoop(nf.db, names, o.reportSeconds);
    return result;
  } finally {
    await nf.stop().catch(() => {});
  }
}

/**
 * SIGKILL, then a new process on the same port, database and ticket-key file: the time until every
 * agent's Session is back (from the kill), and the new process's CPU per reconnect.
 */
async function stormOnce(
  o: ScaleOptions,
  nf: NixfleetServer,
  agents: Child,
  v: StormVariant,
): Promise<StormRun> {
  o.log(`nixfleet: reconnect storm (SIGKILL + restart), ${variantName(v)}…`);
  await agents.command(`storm ${v.resume ? 1 : 0}`);
  nf.cp().proc.kill("SIGKILL");
  await nf.cp().exited;
  const stormDone = agents.waitLine((l) => l.includes('"event":"storm"'), agents.lines.length);
  await nf.restart(v);
  const cpu0 = cpuMs(nf.pid);
  const storm = JSON.parse(await stormDone) as {
    ms: number;
    attempts: number;
    handshakes: number;
    resumed: number;
    droppedAfterHandshake?: number;
    arrivals?: Record<string, number>;
    clientCpuMs?: number;
    clientLoopDelayMs?: Record<string, number>;
    perSecond?: Array<Record<string, number>>;
  };
  const cpu = cpuMs(nf.pid) - cpu0;
  // Let the tickets of the last connections arrive and the server settle before the next kill.
  await sleep(5000);
  return {
    variant: variantName(v),
    seconds: storm.ms / 1000,
    reconnectAttempts: storm.attempts,
    handshakes: storm.handshakes,
    resumed: storm.resumed,
    droppedAfterHandshake: storm.droppedAfterHandshake ?? 0,
    arrivalsMs: storm.arrivals ?? {},
    cpuMsPerReconnect: cpu / o.streams,
    clientCpuMs: storm.clientCpuMs,
    clientLoopDelayMs: storm.clientLoopDelayMs,
    perSecond: storm.perSecond,
    loadAverage: loadavg()[0]!,
  };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? Number.NaN;
const min = (xs: number[]) => Math.min(...xs);

/** The side-by-side table: one row per figure, one column per target (min / median over rounds). */
export function scaleTable(results: TargetResult[], streams: number): string {
  const fmt = (n: number | undefined, digits = 0) =>
    n === undefined || Number.isNaN(n) ? "—" : n.toFixed(digits);
  const mm = (xs: number[], digits = 0) =>
    xs.length > 1 ? `${fmt(min(xs), digits)} / ${fmt(median(xs), digits)}` : fmt(xs[0], digits);
  const rows: [string, (r: TargetResult) => string][] = [
    [`fan-out to ${streams}: first arrival (ms, min / median)`, (r) => mm(r.rounds.map((x) => x.firstMs))],
    ["fan-out p50 (ms)", (r) => mm(r.rounds.map((x) => x.p50Ms))],
    ["fan-out p99 (ms)", (r) => mm(r.rounds.map((x) => x.p99Ms))],
    ["streams that missed a push", (r) => String(Math.max(...r.rounds.map((x) => x.missing)))],
    ["server CPU per pushed stream (µs)", (r) => mm(r.rounds.map((x) => x.cpuPerStreamUs))],
    ["RSS per connected agent (KB)", (r) => fmt(r.rssPerAgentKB)],
    ["idle CPU, all connected (% of a core)", (r) => fmt(r.idleCpuPercent, 1)],
    [
      `connect ${streams} streams (s)`,
      (r) => `${fmt(r.connectSeconds, 1)}${r.failedConnects ? ` (${r.failedConnects} failed)` : ""}`,
    ],
    [`GetFleetStatus at ${streams} machines (ms)`, (r) => fmt(r.fleetStatusMs, 1)],
    [
      "Report RPC/s vs bare store call/s",
      (r) =>
        r.reportRps === undefined
          ? "—"
          : `${fmt(r.reportRps)} vs ${fmt(r.storeLoopRps)} (${fmt((r.reportRps ?? 0) / (r.storeLoopRps ?? 1), 2)})`,
    ],
    [
      "reconnect storm after SIGKILL: all back (s)",
      (r) =>
        r.storm ? `${fmt(r.storm.seconds, 1)} (${fmt(r.storm.cpuMsPerReconnect, 1)} ms CPU each)` : "—",
    ],
  ];
  const header = ["figure", ...results.map((r) => r.target)];
  const body = rows.map(([label, f]) => [label, ...results.map(f)]);
  const widths = header.map((_, i) => Math.max(...[header, ...body].map((row) => row[i]!.length)) + 2);
  return [header, ...body].map((row) => row.map((c, i) => c.padEnd(widths[i]!)).join("")).join("\n");
}
