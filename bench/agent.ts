/**
 * The agent section of `npm run bench`: one real agent process (sandboxed host, real Nix, real
 * control plane, connected over its Session) measured from outside through /proc.
 *
 * - idle: RSS and CPU over a window with nothing to do (heartbeats and health checks only);
 * - one deploy cycle to a closure already in the local store: the agent's own CPU (its process
 *   only — `nix copy`, `nix-store` and the switch script are child processes, whose time /proc
 *   counts apart), and the wall time from SetDesiredGeneration to the control plane seeing the
 *   new current generation (which includes the switch and the agent's waiting).
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { FleetService } from "../src/gen/nixfleet/v1/fleet_pb.js";
import { Fleet, waitFor } from "../test/fixtures/fleet.js";
import { cpuMs, rssBytes } from "./proc-stats.js";

export interface AgentResult {
  idleSeconds: number;
  idleRssMB: number;
  idleCpuPercent: number;
  cycles: { ownCpuMs: number; wallMs: number }[];
}

export async function agentBench(dir: string, idleSeconds: number, cycles: number): Promise<AgentResult> {
  const labels = Array.from({ length: cycles }, (_, i) => ({ label: `v${i + 2}` }));
  const fleet = await Fleet.create({
    dir: join(dir, "agent-fleet"),
    hosts: [{ name: "agent-01", tags: ["bench"] }],
    systems: labels,
    agentConfig: { pollInterval: 3600 },
  });
  try {
    const agent = fleet.startAgent("agent-01");
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
    await waitFor("the agent's Session", async () => (await machine())?.connected, 120_000);
    await sleep(5000);
    const cpu0 = cpuMs(agent.pid);
    await sleep(idleSeconds * 1000);
    const idleCpuPercent = ((cpuMs(agent.pid) - cpu0) / (idleSeconds * 1000)) * 100;
    const idleRssMB = rssBytes(agent.pid) / 1024 / 1024;
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
      );
      results.push({ ownCpuMs: cpuMs(agent.pid) - c0, wallMs: Date.now() - t0 });
    }
    return { idleSeconds, idleRssMB, idleCpuPercent, cycles: results };
  } finally {
    await fleet.close();
  }
}
