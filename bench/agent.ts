/**
 * The agent section of `npm run bench`: one real agent process (sandboxed host, real Nix, real
 * control plane, connected over its Session) measured from outside through /proc.
 *
 * - idle, twice: with the agent's DEFAULT config (what a fleet runs: no metrics listener, no
 *   the default heartbeat and intervals, one command health check) and with the test fleet's busy config (heartbeat and a
 *   command health check every 2 s, a metrics listener) — RSS and CPU over a window with nothing
 *   to do;
 * - deploy cycles to a closure already in the local store (default config): the agent's own CPU
 *   (its process only: getrusage(RUSAGE_SELF) read inside it by a probe, in microseconds — `nix
 *   copy`, `nix-store` and the switch script are child processes, whose time /proc counts apart as
 *   cutime/cstime, reported beside it), the processes it spawned, and the wall time from
 *   SetDesiredGeneration to the control plane seeing the new current generation (which includes
 *   the switch and the agent's waiting).
 *
 * The default-config agent runs with bench/agent-probe-preload.mjs, which counts its spawns and
 * reports its memory breakdown (V8 heap, external, code) on SIGUSR2.
 *
 * Standalone: `node --import tsx bench/agent.ts [--idle S] [--cycles N] [--cpu-prof DIR]`
 * (`--cpu-prof` runs the agent with `node --cpu-prof`, profiles land in DIR when it stops; the
 * profiler's inspector session adds to the idle figures, so profile in a separate run).
 */
import { execFile } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { loadavg } from "node:os";
import { join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { FleetService } from "../src/gen/nixfleet/v1/fleet_pb.js";
import { Fleet, waitFor } from "../test/fixtures/fleet.js";
import { nixEnv } from "../test/fixtures/nix.js";
import { makeTempDir, removeTempDir } from "../test/fixtures/tmp.js";
import { cpuMs, rssBytes } from "./proc-stats.js";

export interface IdleResult {
  config: "default" | "busy";
  seconds: number;
  rssMB: number;
  cpuPercent: number;
  /** The idle window on CLOCK_MONOTONIC (µs), to cut it out of a CPU profile (default config). */
  window?: [number, number];
  /** The default-config agent's memory breakdown (MB), from the probe. */
  memory?: {
    heapUsed: number;
    heapTotal: number;
    /** heapUsed right after a full collection: the live heap. */
    heapLive: number;
    external: number;
    arrayBuffers: number;
    code: number;
  };
}

export interface CycleResult {
  /** The agent process's own CPU (user + system, children excluded), ms. */
  ownCpuMs: number;
  /** Of which in the kernel (fork, pipes, fsync, writes), ms. */
  ownSysMs: number;
  /** Its children's CPU (nix, the switch script, health commands), ms. */
  childCpuMs: number;
  wallMs: number;
  /** Processes the agent spawned during the cycle, and which. */
  spawns: number;
  spawned: string[];
  /** The cycle's window on CLOCK_MONOTONIC (µs), to cut it out of a CPU profile. */
  window: [number, number];
}

export interface AgentResult {
  /** The busy (test fleet) config's idle figures, as before — kept for older readers. */
  idleSeconds: number;
  idleRssMB: number;
  idleCpuPercent: number;
  idle: IdleResult[];
  cycles: CycleResult[];
  /** 1-minute load average at the start and the end of the run. */
  loadAverage: [number, number];
  /**
   * The yardstick measured in the same run: the own CPU (ms) a bare Node process spends per
   * child it spawns and reads (`true`, piped like the agent's commands) — what one of the agent's
   * spawns costs at best on this machine at this load.
   */
  spawnBaselineMs: number;
}

const SPAWN_BASELINE = `
const { spawn } = require("node:child_process");
const run = () => new Promise((r) => {
  const c = spawn("true", [], { stdio: ["ignore", "pipe", "pipe"], detached: true });
  c.stdout.on("data", () => {}); c.stderr.on("data", () => {}); c.on("close", r);
});
(async () => {
  for (let i = 0; i < 3; i++) await run();
  const t0 = process.cpuUsage();
  for (let i = 0; i < 30; i++) await run();
  const u = process.cpuUsage(t0);
  process.stdout.write(String((u.user + u.system) / 30 / 1000));
})();`;

async function spawnBaseline(): Promise<number> {
  const { stdout } = await promisify(execFile)(process.execPath, ["-e", SPAWN_BASELINE]);
  return Number(stdout);
}

interface Probe {
  spawned: string[];
  memory: NodeJS.MemoryUsage;
  resourceUsage: NodeJS.ResourceUsage;
  monoUs: number;
  /** Only when asked for (readProbe's `gc`). */
  codeKB?: number;
  afterGc?: NodeJS.MemoryUsage;
}

/** The children's CPU (cutime + cstime) of `pid`, in milliseconds (10 ms ticks). */
function childCpuMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return ((Number(fields[13]) + Number(fields[14])) * 1000) / 100;
}

/** Asks the probe inside the agent for its figures (SIGUSR2) and reads them. */
async function readProbe(pid: number, file: string, gc = false): Promise<Probe> {
  rmSync(file, { force: true });
  if (gc) writeFileSync(`${file}.gc`, "");
  else rmSync(`${file}.gc`, { force: true });
  process.kill(pid, "SIGUSR2");
  await waitFor("the agent probe's answer", async () => existsSync(file), 30_000, 10);
  // The file is written in one synchronous call; a parse failure means we caught it half written.
  for (;;) {
    try {
      return JSON.parse(readFileSync(file, "utf8")) as Probe;
    } catch {
      await sleep(10);
    }
  }
}

const ownCpuMsOf = (p: Probe) => (p.resourceUsage.userCPUTime + p.resourceUsage.systemCPUTime) / 1000;

/**
 * Config keys the test fleet sets that the agent's defaults leave out or set differently;
 * `undefined` drops a key from the written JSON, so the agent falls back to its default.
 */
const DEFAULT_CONFIG: Record<string, unknown> = {
  pollInterval: undefined,
  retryInterval: undefined,
  healthInterval: undefined,
  verifyTimeout: undefined,
  activationTimeout: undefined,
  metricsPort: undefined,
  metricsAddress: undefined,
  heartbeatInterval: undefined,
  // healthChecks stay: the sandboxed host has no systemd for the built-in `systemd-system` check
  // (every deploy would roll back); the test fleet's one command check runs at the default
  // interval here instead of every 2 s.
};

export interface AgentBenchOptions {
  /** Run the agent under `node --cpu-prof` and write its profiles here (on a clean stop). */
  cpuProfileDir?: string | null;
  log?: (line: string) => void;
}

export async function agentBench(
  dir: string,
  idleSeconds: number,
  cycles: number,
  options: AgentBenchOptions = {},
): Promise<AgentResult> {
  const log = options.log ?? (() => {});
  const load0 = loadavg()[0]!;
  const probeFile = join(dir, "agent-probe.json");
  const labels = Array.from({ length: cycles }, (_, i) => ({ label: `v${i + 2}` }));
  const fleet = await Fleet.create({
    dir: join(dir, "agent-fleet"),
    hosts: [{ name: "agent-01", tags: ["bench"] }],
    systems: labels,
    // The control plane's own defaults, not the test fleet's quick ones (a heartbeat every 2 s
    // on the agent's Session): an idle agent is measured as a fleet would run it.
    controlPlaneArgs: ["--heartbeat-interval", "15", "--poll-hint", "5"],
  });
  const savedNodeOptions = process.env.NODE_OPTIONS;
  try {
    const client = createClient(
      FleetService,
      createGrpcTransport({
        baseUrl: fleet.cp.url,
        nodeOptions: { ca: readFileSync(fleet.pki.ca) },
        interceptors: [
          (next) => (req) => {
            req.header.set("authorization", `Bearer ${fleet.adminKey}`);
            return next(req);
          },
        ],
      }),
    );
    // NOT_FOUND until the agent's Hello registered it.
    const machine = () =>
      client.getMachine({ machineId: "agent-01" }).then(
        (r) => r.machine,
        () => undefined,
      );
    const start = async (overrides: Record<string, unknown>, profile = false) => {
      // The fixture passes the bench's environment on to the agent (and only to it: the control
      // plane is already running), so NODE_OPTIONS is how the agent gets --cpu-prof and the probe.
      // The runtime settings the NixOS unit gives every agent (nix/modules/agent.nix).
      process.env.MALLOC_ARENA_MAX = "2";
      process.env.NODE_OPTIONS = `${savedNodeOptions ?? ""} --v8-pool-size=1`;
      if (profile) {
        process.env.NODE_OPTIONS += ` --import ${join(import.meta.dirname, "agent-probe-preload.mjs")}`;
        process.env.BENCH_AGENT_PROBE = probeFile;
      }
      if (options.cpuProfileDir && profile) {
        mkdirSync(options.cpuProfileDir, { recursive: true });
        // Node 20 refuses --cpu-prof in NODE_OPTIONS: a preload module runs the profiler instead.
        process.env.NODE_OPTIONS += ` --import ${join(import.meta.dirname, "cpu-prof-preload.mjs")}`;
        process.env.BENCH_CPU_PROF_DIR = resolve(options.cpuProfileDir);
      }
      const agent = fleet.startAgent("agent-01", overrides);
      delete process.env.BENCH_CPU_PROF_DIR;
      delete process.env.BENCH_AGENT_PROBE;
      delete process.env.MALLOC_ARENA_MAX;
      if (savedNodeOptions === undefined) delete process.env.NODE_OPTIONS;
      else process.env.NODE_OPTIONS = savedNodeOptions;
      try {
        await waitFor("the agent's Session", async () => (await machine())?.connected, 120_000);
      } catch (err) {
        throw new Error(`${(err as Error).message}; the agent's last lines:\n${agent.tail()}`);
      }
      return agent;
    };
    const idle = async (pid: number, config: IdleResult["config"]): Promise<IdleResult> => {
      await sleep(5000);
      const cpu0 = cpuMs(pid);
      // The default-config agent has the probe: its CPU in µs, and the window for a profile.
      const p0 = config === "default" ? await readProbe(pid, probeFile) : undefined;
      await sleep(idleSeconds * 1000);
      const p1 = p0 ? await readProbe(pid, probeFile) : undefined;
      const cpuPercent =
        p0 && p1
          ? ((ownCpuMsOf(p1) - ownCpuMsOf(p0)) / ((p1.monoUs - p0.monoUs) / 1000)) * 100
          : ((cpuMs(pid) - cpu0) / (idleSeconds * 1000)) * 100;
      const result: IdleResult = {
        config,
        seconds: idleSeconds,
        rssMB: rssBytes(pid) / 1024 / 1024,
        cpuPercent,
        ...(p0 && p1 ? { window: [p0.monoUs, p1.monoUs] as [number, number] } : {}),
      };
      if (config === "default") {
        const p = await readProbe(pid, probeFile, true);
        const mb = (n: number) => Math.round((n / 1024 / 1024) * 10) / 10;
        result.memory = {
          heapUsed: mb(p.memory.heapUsed),
          heapTotal: mb(p.memory.heapTotal),
          heapLive: mb(p.afterGc?.heapUsed ?? Number.NaN),
          external: mb(p.memory.external),
          arrayBuffers: mb(p.memory.arrayBuffers),
          code: mb((p.codeKB ?? Number.NaN) * 1024),
        };
      }
      log(
        `agent idle (${config} config): ${result.rssMB.toFixed(1)} MB, ${result.cpuPercent.toFixed(2)} %` +
          (result.memory ? ` ${JSON.stringify(result.memory)}` : ""),
      );
      return result;
    };

    // The busy config first: the default-config agent then stays for the deploy cycles.
    const busyAgent = await start({ pollInterval: 3600 });
    const busy = await idle(busyAgent.pid, "busy");
    await busyAgent.stop();
    const agent = await start({ ...DEFAULT_CONFIG, pollInterval: 3600 }, true);
    const dflt = await idle(agent.pid, "default");

    // "A closure already in the store": the fixture pushed the closures to the cache and removed
    // them locally; put them back, so a cycle measures the agent, not `nix copy`.
    // (Asynchronously: the cache is served from this process.)
    await promisify(execFile)(
      "nix",
      [
        "copy",
        "--from",
        fleet.cacheUrl,
        ...labels.map(({ label }) => fleet.host("agent-01").systems[label]!.path),
      ],
      { env: nixEnv({ trustedPublicKeys: fleet.cache.trustedPublicKeys }) },
    );
    const results: AgentResult["cycles"] = [];
    for (const { label } of labels) {
      const path = fleet.host("agent-01").systems[label]!.path;
      const p0 = await readProbe(agent.pid, probeFile);
      const k0 = childCpuMs(agent.pid);
      const t0 = Date.now();
      await client.setDesiredGeneration({ machineId: "agent-01", storePath: path, cacheUrl: fleet.cacheUrl });
      await waitFor(
        `agent-01 on ${label}`,
        async () => (await machine())?.currentGeneration === path,
        120_000,
        // Poll finely: the wall figure should be the agent's, not this loop's.
        25,
      ).catch((err: Error) => {
        throw new Error(`${err.message}; the agent's last lines:\n${agent.tail(40)}`);
      });
      const wallMs = Date.now() - t0;
      // The last report reaches the control plane before the cycle's bookkeeping ends: let it.
      await sleep(1000);
      const p1 = await readProbe(agent.pid, probeFile);
      const spawned = p1.spawned.slice(p0.spawned.length);
      const cycle: CycleResult = {
        ownCpuMs: Math.round(ownCpuMsOf(p1) - ownCpuMsOf(p0)),
        ownSysMs: Math.round((p1.resourceUsage.systemCPUTime - p0.resourceUsage.systemCPUTime) / 1000),
        childCpuMs: childCpuMs(agent.pid) - k0,
        wallMs,
        spawns: spawned.length,
        spawned,
        window: [p0.monoUs, p1.monoUs],
      };
      log(
        `agent cycle ${label}: ${cycle.ownCpuMs} ms own CPU (${cycle.ownSysMs} in the kernel), ${cycle.childCpuMs} ms children, ${cycle.wallMs} ms wall, ` +
          `${cycle.spawns} spawns (${spawned.join("; ")})`,
      );
      results.push(cycle);
    }
    const spawnBaselineMs = await spawnBaseline();
    log(`spawn baseline: ${spawnBaselineMs.toFixed(2)} ms own CPU per spawn of a bare Node process`);
    // A clean stop, so --cpu-prof writes its profile.
    await agent.stop();
    return {
      idleSeconds,
      idleRssMB: busy.rssMB,
      idleCpuPercent: busy.cpuPercent,
      idle: [dflt, busy],
      cycles: results,
      loadAverage: [load0, loadavg()[0]!],
      spawnBaselineMs,
    };
  } finally {
    await fleet.close();
  }
}

/** The agent's lines of the bench report. */
export function formatAgent(agent: AgentResult): string {
  const idle = agent.idle
    .map(
      (i) =>
        `agent idle, ${i.config} config: ${i.rssMB.toFixed(1)} MB RSS, ${i.cpuPercent.toFixed(2)} % CPU over ${i.seconds} s`,
    )
    .join("\n");
  const mem = agent.idle.find((i) => i.memory)?.memory;
  const breakdown = mem
    ? `\nagent idle memory (default config, MB): V8 heap ${mem.heapUsed} used / ${mem.heapTotal} total / ${mem.heapLive} live after a full GC, external ${mem.external} (array buffers ${mem.arrayBuffers}), code ${mem.code}`
    : "";
  const sorted = (f: (c: CycleResult) => number) => agent.cycles.map(f).sort((a, b) => a - b);
  const minMed = (f: (c: CycleResult) => number) => {
    const v = sorted(f);
    return v.length ? `${v[0]} / ${v[Math.floor((v.length - 1) / 2)]}` : "-";
  };
  const cycles = agent.cycles.map((c) => `${c.ownCpuMs.toFixed(0)} ms CPU / ${c.wallMs} ms wall`).join(", ");
  return (
    `${idle}${breakdown}\nagent deploy cycles (own CPU, children excluded / wall): ${cycles}\n` +
    `agent per cycle, min / median: own CPU ${minMed((c) => c.ownCpuMs)} ms (kernel ${minMed((c) => c.ownSysMs)} ms), children ${minMed((c) => c.childCpuMs)} ms, ` +
    `wall ${minMed((c) => c.wallMs)} ms, spawns ${minMed((c) => c.spawns)} ` +
    `(load average ${agent.loadAverage.map((l) => l.toFixed(1)).join(" → ")}); ` +
    `a bare Node process spends ${agent.spawnBaselineMs.toFixed(1)} ms own CPU per spawn in the same run\n`
  );
}

if (import.meta.filename === process.argv[1]) {
  const argv = process.argv.slice(2);
  const flag = (name: string) => {
    const i = argv.indexOf(name);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const dir = makeTempDir("nixfleet-bench-agent-");
  try {
    const result = await agentBench(dir, Number(flag("--idle") ?? 60), Number(flag("--cycles") ?? 3), {
      cpuProfileDir: flag("--cpu-prof") ?? null,
      log: (line) => process.stderr.write(`bench: ${line}\n`),
    });
    process.stdout.write(formatAgent(result));
    process.stdout.write(`${JSON.stringify(result)}\n`);
  } finally {
    removeTempDir(dir);
  }
}
