/**
 * `npm run bench`: how the control plane holds up, as ratios against baselines measured in the
 * same run (machines here are shared and noisy; absolute numbers drift, ratios much less).
 *
 * 1. Unary GetDesiredGeneration throughput over mTLS, per protocol (gRPC, Connect binary, Connect
 *    JSON, Connect GET, the v0.1 REST route), against plain node:http2 answering a fixed body.
 * 2. GetFleetStatus latency with N machines, against GetMachine (one row).
 * 3. Push fan-out: time from CreateRollout to DesiredGenerationChanged on every one of S open
 *    Session streams, against the same for a single stream.
 *
 * Prints a table and writes bench/results/latest.json (plus a timestamped copy).
 * Flags: --quick (tiny sizes, seconds — a smoke run), --machines N, --streams S, --seconds T.
 */
import { execFileSync, spawn } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { cpus } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { FleetService, RolloutStrategy } from "../src/gen/nixfleet/v1/fleet_pb.js";
import { MachineLifecycle } from "../src/gen/nixfleet/v1/types_pb.js";
import { ControlPlaneProcess, Fleet } from "../test/fixtures/fleet.js";
import { programArgs } from "../test/fixtures/programs.js";
import { makeTempDir, removeTempDir } from "../test/fixtures/tmp.js";

const ROOT = join(import.meta.dirname, "..");
const argv = process.argv.slice(2);
const flag = (name: string, fallback: number) => {
  const i = argv.indexOf(name);
  return i >= 0 ? Number(argv[i + 1]) : fallback;
};
const QUICK = argv.includes("--quick");
const MACHINES = flag("--machines", QUICK ? 50 : 2000);
const STREAMS = flag("--streams", QUICK ? 20 : 1000);
const SECONDS = flag("--seconds", QUICK ? 1 : 5);
const CONCURRENCY = 16;

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

/** Runs a child (tsx) and resolves with the lines it printed. */
function child(script: string, args: string[]) {
  const proc = spawn(process.execPath, ["--import", "tsx", join(ROOT, "bench", script), ...args], {
    cwd: ROOT,
    stdio: ["ignore", "pipe", "inherit"],
  });
  const lines: string[] = [];
  let buf = "";
  const waiters: { pred: (l: string) => boolean; resolve: (l: string) => void }[] = [];
  proc.stdout!.on("data", (c: Buffer) => {
    buf += c.toString();
    for (let nl = buf.indexOf("\n"); nl >= 0; nl = buf.indexOf("\n")) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      lines.push(line);
      for (const w of waiters.splice(0)) w.pred(line) ? w.resolve(line) : waiters.push(w);
    }
  });
  const exited = new Promise<number>((resolve) => proc.on("exit", (code) => resolve(code ?? 1)));
  return {
    proc,
    lines,
    exited,
    waitLine: (pred: (l: string) => boolean) =>
      new Promise<string>((resolve, reject) => {
        const hit = lines.find(pred);
        if (hit) return resolve(hit);
        waiters.push({ pred, resolve });
        void exited.then((code) =>
          reject(new Error(`${script} exited ${code} before printing the expected line`)),
        );
      }),
  };
}

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

async function fanout(dir: string): Promise<Row> {
  // Plain HTTP so one client process may speak for many machines (no per-machine certificate).
  const cp = new ControlPlaneProcess(
    ["--allow-insecure", "--db-path", join(dir, "fanout.db"), "--heartbeat-interval", "30"],
    process.env,
  );
  await cp.start("127.0.0.1:0");
  try {
    const key = execFileSync(
      process.execPath,
      [
        ...programArgs("control-plane"),
        "keys",
        "create",
        "--init",
        "--db-path",
        join(dir, "fanout.db"),
        "--name",
        "bench",
        "--role",
        "admin",
      ],
      { cwd: ROOT },
    )
      .toString()
      .trim();
    const client = createClient(
      FleetService,
      createGrpcTransport({
        baseUrl: cp.url,
        interceptors: [withKey(key)],
      }),
    );
    const measure = async (prefix: string, count: number) => {
      const streams = child("fanout.ts", [cp.url, prefix, String(count)]);
      await streams.waitLine((l) => l === "ready");
      const entries = Array.from({ length: count }, (_, i) => ({
        hostname: `${prefix}-${String(i).padStart(5, "0")}`,
        storePath: storePath(i + 1),
      }));
      const { release } = await client.createRelease({ entries });
      const t0 = Date.now();
      await client.createRollout({
        releaseId: release!.id,
        target: { tags: [prefix] },
        strategy: RolloutStrategy.ALL_AT_ONCE,
      });
      const line = await streams.waitLine((l) => l.startsWith("{"));
      const latencies = (JSON.parse(line) as { received: number[] }).received
        .map((t) => t - t0)
        .sort((a, b) => a - b);
      await streams.exited;
      return {
        p50: latencies[Math.floor(latencies.length / 2)]!,
        p99: latencies[Math.floor(latencies.length * 0.99)] ?? latencies.at(-1)!,
      };
    };
    // The fan-out streams register their machines with their tag (prefix) on Hello.
    const single = await measure("one", 1);
    const many = await measure("many", STREAMS);
    return {
      name: `push fan-out to ${STREAMS} Session streams (p99)`,
      value: many.p99,
      unit: "ms",
      baseline: "push to one stream",
      baselineValue: Math.max(single.p99, 1),
      ratio: many.p99 / Math.max(single.p99, 1),
      detail: { p50Ms: many.p50, singleP50Ms: single.p50, perStreamMs: many.p99 / STREAMS },
    };
  } finally {
    await cp.stop();
  }
}

async function main(): Promise<void> {
  const dir = makeTempDir("nixfleet-bench-");
  const started = Date.now();
  const fleet = await Fleet.create({ dir, hosts: [] });
  const raw = child("raw-server.ts", [fleet.pki.server.cert, fleet.pki.server.key, fleet.pki.ca]);
  const rows: Row[] = [];
  try {
    const rawUrl = (JSON.parse(await raw.waitLine((l) => l.startsWith("{"))) as { url: string }).url;
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
    process.stderr.write(`bench: push fan-out to ${STREAMS} streams…\n`);
    rows.push(await fanout(dir));
  } finally {
    raw.proc.kill("SIGTERM");
    await fleet.close();
    removeTempDir(dir);
  }

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
    },
    durationSeconds: Math.round((Date.now() - started) / 1000),
    results: rows,
  };
  const out = join(ROOT, "bench", "results");
  mkdirSync(out, { recursive: true });
  const json = `${JSON.stringify(result, null, 2)}\n`;
  writeFileSync(join(out, "latest.json"), json);
  writeFileSync(join(out, `${result.date.replace(/[:.]/g, "-")}.json`), json);
  process.stdout.write(`\nwrote bench/results/latest.json (${result.durationSeconds}s)\n`);
}

await main();
