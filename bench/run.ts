import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { cpus } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { FleetService } from "../src/gen/nixfleet/v1/fleet_pb.js";
import { MachineLifecycle } from "../src/gen/nixfleet/v1/types_pb.js";
import { Fleet } from "../test/fixtures/fleet.js";
import { makeTempDir, removeTempDir } from "../test/fixtures/tmp.js";
import { type AgentResult, agentBench, formatAgent } from "./agent.js";
import { type BackendFigures, backendRows, backendsFromArgs, measureBackend } from "./backends.js";
import { child, ROOT } from "./child.js";
import { openFileLimit } from "./proc-stats.js";
import { type Fanout, parseStormVariant, scale, scaleTable, type TargetResult } from "./scale.js";

const argv = process.argv.slice(2);
const flag = (name: string, fallback: number) => {
  const i = argv.indexOf(name);
  return i >= 0 ? Number(argv[i + 1]) : fallback;
};
const QUICK = argv.includes("--quick");
const MACHINES = flag("--machines", QUICK ? 50 : 2000);
const STREAMS = flag("--streams", QUICK ? 200 : 10_000);
const SECONDS = flag("--seconds", QUICK ? 1 : 5);
const CONCURRENCY = 16;
/** Skip the unary and small-fleet sections (for comparing scale figures quickly). */
const SCALE_ONLY = argv.includes("--scale-only");
/**
 * Only the reconnect storm, nixfleet only: `--storm-variants resume/511,full/511,resume/4096,…`
 * (TLS resumption on or off, the control plane's --listen-backlog) run in turn `--storm-repeats`
 * times, so variants are compared under the same load.
 */
const STORM_ONLY = argv.includes("--storm-only");
const TARGETS = (
  argv.includes("--targets") ? argv[argv.indexOf("--targets") + 1]! : "nixfleet,naive,raw"
).split(",");
/** The store backends compared (`--backend sqlite,postgres`; default both when PostgreSQL is here). */
const BACKENDS = backendsFromArgs(argv);
const BACKEND_STREAMS = flag("--backend-streams", QUICK ? 100 : 1000);
/**
 * Heartbeat intervals in the scale section: `--heartbeat S` for the servers and the agents alike,
 * `--heartbeat S/A` apart (the shipped defaults are 15/30: the control plane's
 * --heartbeat-interval and the agent's heartbeatInterval).
 */
const HEARTBEAT = parseHeartbeat(
  argv.includes("--heartbeat") ? argv[argv.indexOf("--heartbeat") + 1]! : "10",
);
/** Run the control plane with --cpu-prof (profiles land in bench/results/). */
const CPU_PROF = argv.includes("--cpu-prof");

interface Row {
  name: string;
  value: number;
  unit: string;
  baseline: string;
  baselineValue: number;
  /** value / baselineValue (for throughput: how much of the baseline we keep). */
  ratio: number;
  detail?: Record<string, unknown>;
}

const storePath = (i: number) =>
  `/nix/store/${String(i)
    .padStart(32, "0")
    .replace(/[eotu]/g, "0")}-nixos-system-bench-${i}`;

async function unary(fleet: Fleet, rawUrl: string): Promise<Row[]> {
  const cert = fleet.pki.client("bench-01");
  const run = async (target: string, url: string) => {
    const c = child("load.ts", [
      JSON.stringify({
        url,
        target,
        machineId: "bench-01",
        ca: fleet.pki.ca,
        cert: cert.cert,
        key: cert.key,
        concurrency: CONCURRENCY,
        seconds: SECONDS,
      }),
    ]);
    const code = await c.exited;
    if (code !== 0) throw new Error(`load generator for ${target} exited ${code}`);
    return JSON.parse(c.lines.at(-1)!) as {
      requests: number;
      errors: number;
      lastError: string;
      rps: number;
      p50Ms: number;
      p99Ms: number;
    };
  };
  const raw = await run("raw", rawUrl);
  const rows: Row[] = [];
  for (const target of ["grpc", "connect", "connect-json", "connect-get", "rest"]) {
    const r = await run(target, fleet.cp.url);
    if (r.errors > 0) throw new Error(`${target}: ${r.errors} errors (last: ${r.lastError})`);
    rows.push({
      name: `GetDesiredGeneration ${target} (c=${CONCURRENCY})`,
      value: r.rps,
      unit: "req/s",
      baseline: "raw node:http2, fixed body",
      baselineValue: raw.rps,
      ratio: r.rps / raw.rps,
      detail: { p50Ms: r.p50Ms, p99Ms: r.p99Ms, requests: r.requests, baselineP99Ms: raw.p99Ms },
    });
  }
  return rows;
}

function withKey(key: string): Interceptor {
  return (next) => (req) => {
    req.header.set("authorization", `Bearer ${key}`);
    return next(req);
  };
}

function fleetClient(fleet: Fleet) {
  return createClient(
    FleetService,
    createGrpcTransport({
      baseUrl: fleet.cp.url,
      nodeOptions: { ca: readFileSync(fleet.pki.ca) },
      interceptors: [withKey(fleet.adminKey)],
    }),
  );
}

async function status(fleet: Fleet): Promise<Row> {
  const client = fleetClient(fleet);
  const median = async (fn: () => Promise<unknown>, n: number) => {
    const times: number[] = [];
    for (let i = 0; i < n; i++) {
      const t = performance.now();
      await fn();
      times.push(performance.now() - t);
    }
    return times.sort((a, b) => a - b)[Math.floor(n / 2)]!;
  };
  const one = await median(() => client.getMachine({ machineId: "bench-01" }), 30);
  const all = await median(() => client.getFleetStatus({}), QUICK ? 5 : 15);
  return {
    name: `GetFleetStatus, ${MACHINES} machines (median)`,
    value: all,
    unit: "ms",
    baseline: "GetMachine, one machine (median)",
    baselineValue: one,
    ratio: all / one,
  };
}

/** Scale rows as ratios against raw node:http2 (the runtime's limit), measured in the same run. */
function scaleRows(results: TargetResult[]): Row[] {
  const nf = results.find((r) => r.target === "nixfleet");
  const raw = results.find((r) => r.target === "raw node:http2");
  if (!nf || !raw) return [];
  const med = (r: TargetResult, f: (x: Fanout) => number) =>
    r.rounds.map(f).sort((x, y) => x - y)[Math.floor(r.rounds.length / 2)]!;
  const row = (name: string, unit: string, a: number, b: number, detail?: Record<string, unknown>): Row => ({
    name,
    value: a,
    unit,
    baseline: "raw node:http2, same run",
    baselineValue: b,
    ratio: a / b,
    detail,
  });
  return [
    row(
      `push fan-out to ${STREAMS} mTLS Session streams (p99)`,
      "ms",
      med(nf, (x) => x.p99Ms),
      med(raw, (x) => x.p99Ms),
      {
        firstMs: med(nf, (x) => x.firstMs),
        p50Ms: med(nf, (x) => x.p50Ms),
      },
    ),
    row(
      "server CPU per pushed stream",
      "µs",
      med(nf, (x) => x.cpuPerStreamUs),
      med(raw, (x) => x.cpuPerStreamUs),
    ),
    row(`RSS per connected agent at ${STREAMS}`, "KB", nf.rssPerAgentKB, raw.rssPerAgentKB),
    row(
      `idle CPU with ${STREAMS} streams (% of a core)`,
      "%",
      Math.max(nf.idleCpuPercent, 0.01),
      Math.max(raw.idleCpuPercent, 0.01),
    ),
  ];
}

async function main(): Promise<void> {
  const dir = makeTempDir("nixfleet-bench-");
  const started = Date.now();
  const fleet = await Fleet.create({ dir, hosts: [] });
  const raw = child("raw-server.ts", [fleet.pki.server.cert, fleet.pki.server.key, fleet.pki.ca]);
  const rows: Row[] = [];
  let scaleResults: TargetResult[] = [];
  let agent: AgentResult | null = null;
  const backends: BackendFigures[] = [];
  try {
    const rawUrl = (JSON.parse(await raw.waitLine((l) => l.startsWith("{"))) as { url: string }).url;
    if (!SCALE_ONLY) rows.push(...(await small(fleet, rawUrl)));
    if (!SCALE_ONLY) {
      for (const backend of BACKENDS) {
        const options = {
          dir,
          pki: fleet.pki,
          streams: BACKEND_STREAMS,
          seconds: SECONDS,
          rounds: QUICK ? 1 : 3,
          concurrency: CONCURRENCY,
          log: (line: string) => process.stderr.write(`bench: ${line}\n`),
        };
        backends.push(await measureBackend(options, backend));
      }
      rows.push(...backendRows(backends, BACKEND_STREAMS, CONCURRENCY));
    }
    process.stderr.write(`bench: ${STREAMS} agents' Session streams…\n`);
    scaleResults = await scale({
      dir,
      pki: fleet.pki,
      streams: STREAMS,
      rounds: STORM_ONLY ? 0 : QUICK ? 1 : 3,
      idleSeconds: STORM_ONLY ? 0 : QUICK ? 2 : 30,
      reportSeconds: QUICK ? 1 : 5,
      heartbeatSeconds: HEARTBEAT.server,
      agentHeartbeatSeconds: HEARTBEAT.agent,
      storm: !argv.includes("--no-storm"),
      stormOnly: STORM_ONLY,
      stormVariants: argv.includes("--storm-variants")
        ? argv[argv.indexOf("--storm-variants") + 1]!.split(",").map(parseStormVariant)
        : undefined,
      stormRepeats: flag("--storm-repeats", 1),
      targets: TARGETS,
      cpuProfileDir: CPU_PROF ? join(ROOT, "bench", "results") : null,
      log: (line) => process.stderr.write(`bench: ${line}\n`),
    });
    rows.push(...scaleRows(scaleResults));
    if (!argv.includes("--no-agent")) {
      process.stderr.write("bench: one real agent, idle and deploy cycles…\n");
      agent = await agentBench(dir, QUICK ? 3 : 60, QUICK ? 1 : 3);
    }
  } finally {
    raw.proc.kill("SIGTERM");
    await fleet.close();
    removeTempDir(dir);
  }
  report(rows, scaleResults, agent, backends, started);
}

/** The unary and GetFleetStatus sections (a small fleet registered through the API). */
async function small(fleet: Fleet, rawUrl: string): Promise<Row[]> {
  const rows: Row[] = [];
  const client = fleetClient(fleet);
  process.stderr.write(`bench: registering ${MACHINES} machines…\n`);
  for (let i = 0; i < MACHINES; i += 50) {
    await Promise.all(
      Array.from({ length: Math.min(50, MACHINES - i) }, (_, j) =>
        client.registerMachine({
          machineId: i + j === 0 ? "bench-01" : `bench-m${i + j}`,
          tags: ["bench", `shard-${(i + j) % 10}`],
          lifecycle: MachineLifecycle.ACTIVE,
        }),
      ),
    );
  }
  await client.setDesiredGeneration({
    machineId: "bench-01",
    storePath: storePath(1),
    cacheUrl: "https://cache.example.org",
  });
  process.stderr.write("bench: unary throughput…\n");
  rows.push(...(await unary(fleet, rawUrl)));
  process.stderr.write("bench: fleet status…\n");
  rows.push(await status(fleet));
  return rows;
}

function report(
  rows: Row[],
  scaleResults: TargetResult[],
  agent: AgentResult | null,
  backends: BackendFigures[],
  started: number,
): void {
  const w = (s: string, n: number) => s.padEnd(n);
  const fmt = (n: number) => (n >= 100 ? n.toFixed(0) : n >= 10 ? n.toFixed(1) : n.toFixed(2));
  process.stdout.write(
    `\n${w("benchmark", 52)}${w("value", 14)}${w("baseline", 34)}${w("baseline value", 18)}ratio\n`,
  );
  for (const r of rows) {
    process.stdout.write(
      `${w(r.name, 52)}${w(`${fmt(r.value)} ${r.unit}`, 14)}${w(r.baseline, 34)}${w(`${fmt(r.baselineValue)} ${r.unit}`, 18)}${fmt(r.ratio)}\n`,
    );
  }
  process.stdout.write(`\n${scaleTable(scaleResults, STREAMS)}\n`);
  if (agent) process.stdout.write(`\n${formatAgent(agent)}`);
  const result = {
    date: new Date().toISOString(),
    node: process.version,
    cpus: cpus().length,
    parameters: {
      machines: MACHINES,
      streams: STREAMS,
      seconds: SECONDS,
      concurrency: CONCURRENCY,
      quick: QUICK,
      backends: BACKENDS,
      backendStreams: BACKEND_STREAMS,
      heartbeatSeconds: HEARTBEAT,
    },
    durationSeconds: Math.round((Date.now() - started) / 1000),
    openFileLimit: openFileLimit("self"),
    results: rows,
    scale: scaleResults,
    backends,
    agent,
  };
  const out = join(ROOT, "bench", "results");
  mkdirSync(out, { recursive: true });
  const json = `${JSON.stringify(result, null, 2)}\n`;
  writeFileSync(join(out, "latest.json"), json);
  writeFileSync(join(out, `${result.date.replace(/[:.]/g, "-")}.json`), json);
  process.stdout.write(`\nwrote bench/results/latest.json (${result.durationSeconds}s)\n`);
}

await main();

function parseHeartbeat(text: string): { server: number; agent: number } {
  const [server = Number.NaN, agent = server] = text.split("/").map(Number);
  if (!(server >= 1 && agent >= 1)) {
    process.stderr.write(
      `bench: --heartbeat wants seconds S or S/A (server/agent), got ${JSON.stringify(text)}\n`,
    );
    process.exit(2);
  }
  return { server, agent };
}
