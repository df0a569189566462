/**
 * The agent section of `npm run bench`: one real agent process (sandboxed host, real Nix, real
 * control plane, connected over its Session) measured from outside through /proc.
 *
 * - idle, twice: with the agent's DEFAULT config (what a fleet runs: no metrics listener, no
 *   the default heartbeat and intervals, one command health check) and with the test fleet's busy config (heartbeat and a
 *   command health check every 2 s, a metrics listener) — RSS and CPU over a window with nothing
 *   to do;
 * - deploy cycles to a closure already in the local store (default config): the agent's own CPU
 *   (its process only — `nix copy`, `nix-store` and the switch script are child processes, whose
 *   time /proc counts apart), and the wall time from SetDesiredGeneration to the control plane
 *   seeing the new current generation (which includes the switch and the agent's waiting).
 *
 * Standalone: `node --import tsx bench/agent.ts [--idle S] [--cycles N] [--cpu-prof DIR]`
 * (`--cpu-prof` runs the agent with `node --cpu-prof`, profiles land in DIR when it stops).
 */
import { mkdirSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { FleetService } from "../src/gen/nixfleet/v1/fleet_pb.js";
import { Fleet, waitFor } from "../test/fixtures/fleet.js";
import { makeTempDir, removeTempDir } from "../test/fixtures/tmp.js";
import { cpuMs, rssBytes } from "./proc-stats.js";

export interface IdleResult {
  config: "default" | "busy";
  seconds: number;
  rssMB: number;
  cpuPercent: number;
}

export interface AgentResult {
  /** The busy (test fleet) config's idle figures, as before — kept for older readers. */
  idleSeconds: number;
  idleRssMB: number;
  idleCpuPercent: number;
  idle: IdleResult[];
  cycles: { ownCpuMs: number; wallMs: number }[];
}

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
  const labels = Array.from({ length: cycles }, (_, i) => ({ label: `v${i + 2}` }));
  const fleet = await Fleet.create({
    dir: join(dir, "agent-fleet"),
    hosts: [{ name: "agent-01", tags: ["bench"] }],
    systems: labels,
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
      // plane is already running), so NODE_OPTIONS is how the agent gets --cpu-prof.
      if (options.cpuProfileDir && profile) {
        mkdirSync(options.cpuProfileDir, { recursive: true });
        // Node 20 refuses --cpu-prof in NODE_OPTIONS: a preload module runs the profiler instead.
        process.env.NODE_OPTIONS = `${savedNodeOptions ?? ""} --import ${join(import.meta.dirname, "cpu-prof-preload.mjs")}`;
        process.env.BENCH_CPU_PROF_DIR = resolve(options.cpuProfileDir);
      }
      const agent = fleet.startAgent("agent-01", overrides);
      delete process.env.BENCH_CPU_PROF_DIR;
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
      await sleep(idleSeconds * 1000);
      const cpuPercent = ((cpuMs(pid) - cpu0) / (idleSeconds * 1000)) * 100;
      const result = { config, seconds: idleSeconds, rssMB: rssBytes(pid) / 1024 / 1024, cpuPercent };
      log(`agent idle (${config} config): ${result.rssMB.toFixed(1)} MB, ${result.cpuPercent.toFixed(2)} %`);
      return result;
    };

    // The busy config first: the default-config agent then stays for the deploy cycles.
    const busyAgent = await start({ pollInterval: 3600 });
    const busy = await idle(busyAgent.pid, "busy");
    await busyAgent.stop();
    const agent = await start({ ...DEFAULT_CONFIG, pollInterval: 3600 }, true);
    const dflt = await idle(agent.pid, "default");

    const results: AgentResult["cycles"] = [];
    for (const { label } of labels) {
      const path = fleet.host("agent-01").systems[label]!.path;
      const c0 = cpuMs(agent.pid);
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
      const cycle = { ownCpuMs: cpuMs(agent.pid) - c0, wallMs: Date.now() - t0 };
      log(`agent cycle ${label}: ${cycle.ownCpuMs} ms CPU, ${cycle.wallMs} ms wall`);
      results.push(cycle);
    }
    // A clean stop, so --cpu-prof writes its profile.
    await agent.stop();
    return {
      idleSeconds,
      idleRssMB: busy.rssMB,
      idleCpuPercent: busy.cpuPercent,
      idle: [dflt, busy],
      cycles: results,
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
  const cycles = agent.cycles.map((c) => `${c.ownCpuMs.toFixed(0)} ms CPU / ${c.wallMs} ms wall`).join(", ");
  return `${idle}\nagent deploy cycles (own CPU, children excluded / wall): ${cycles}\n`;
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
