/**
 * The push fan-out path in one process, without 10,000 real streams: a real control plane
 * (SQLite, plain h2c) with N registered machines, each holding a recording stream in the push
 * hub, and one CreateRollout of all of them (ALL_AT_ONCE) over Connect. Times, from the call:
 *
 * - first / p50 / p99 / last push handed to a stream (the frame encoded, as the raw gRPC path
 *   writes it), and when each was flushable: the next turn of the event loop after the write,
 *   which is when node:http2 sends what a stream was given (it schedules its socket writes with
 *   setImmediate) — work that runs on before yielding delays every push queued so far;
 * - the CreateRollout response, and this process's CPU over the whole call.
 *
 *   node --import tsx bench/push-fanout.ts [--machines 10000] [--rounds 5] [--profile]
 *
 * Prints one JSON line per round and one with the medians. `--profile` writes a CPU profile of
 * the rounds (after the warm-up) to the temp dir and prints its top self-time entries.
 */
import { randomUUID } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { Session } from "node:inspector/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { createLogger } from "../src/common/logger.js";
import { generateSecret, hashSecret, newKeyId } from "../src/control-plane/auth/api-keys.js";
import { ControlPlane } from "../src/control-plane/control-plane.js";
import { AgentConnection } from "../src/control-plane/push/connection.js";
import type { OutgoingMessage } from "../src/control-plane/push/outgoing.js";
import { FleetService, RolloutStrategy } from "../src/gen/nixfleet/v1/fleet_pb.js";

const { values } = parseArgs({
  options: {
    machines: { type: "string", default: "10000" },
    rounds: { type: "string", default: "5" },
    profile: { type: "boolean", default: false },
  },
});
const N = Number(values.machines);
const rounds = Number(values.rounds);

/** Per round: when each desired push was written and when the event loop next turned after it. */
let writes: number[] = [];
let flushed: number[] = [];
let pendingFlush = 0;
/** This process's CPU (ms) from the call to the first push written, and to the last flushed. */
let cpuAtFirst = 0;
let cpuAtFlush = 0;
let cpuStart = process.cpuUsage();
const cpuSince = () => {
  const c = process.cpuUsage(cpuStart);
  return (c.user + c.system) / 1000;
};

/** A stream that takes every message at once, encoding it as the raw gRPC Session path does. */
class RecordingConnection extends AgentConnection {
  protected writable(): boolean {
    return true;
  }
  protected write(message: OutgoingMessage): void {
    message.frame();
    if (message.kind !== "desiredGenerationChanged") return;
    if (writes.length === 0) cpuAtFirst = cpuSince();
    writes.push(performance.now());
    if (pendingFlush++ === 0)
      setImmediate(() => {
        cpuAtFlush = cpuSince();
        const at = performance.now();
        for (let i = 0; i < pendingFlush; i++) flushed.push(at);
        pendingFlush = 0;
      });
  }
  protected wake(): void {}
  protected end(): void {}
}

const dir = mkdtempSync(join(tmpdir(), "nixfleet-push-fanout-"));
const cp = new ControlPlane({
  listen: { host: "127.0.0.1", port: 0 },
  dbPath: join(dir, "state.db"),
  tls: null,
  allowInsecure: true,
  metricsListen: null,
  metricsRequireKey: false,
  staleAfterSeconds: 300,
  pollHintSeconds: 5,
  executorTickMs: 3_600_000,
  heartbeatIntervalSeconds: 3600,
  reportRetentionHours: 168,
  logger: createLogger({ name: "bench", level: "warn" }),
});
const gen = (i: number, r: number) =>
  `/nix/store/${String(i * 100 + r).padStart(32, "0")}-nixos-system-bench`;
const ids = Array.from({ length: N }, (_, i) => `m${String(i).padStart(6, "0")}`);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.ceil((xs.length * p) / 100) - 1]!;
const round1 = (x: number) => Math.round(x * 10) / 10;

async function main(): Promise<void> {
  await cp.start();
  const store = cp.store;
  const now = Date.now();
  // The fleet: machines registered by their first report, tagged.
  for (const id of ids)
    await store.recordReport(
      {
        machineId: id,
        currentGeneration: gen(0, 0),
        desiredGeneration: "",
        desiredRevision: 0,
        outcome: 0,
        success: true,
        message: "",
        deploymentId: "",
        tags: ["bench"],
        agentVersion: "bench",
        uptimeSeconds: 1,
        agentTime: now,
      },
      now,
    );
  for (const id of ids) cp.hub.register(new RecordingConnection(id, "session", now));
  const secret = generateSecret();
  await store.createApiKey(
    { id: newKeyId(), name: "bench", role: "admin", hash: hashSecret(secret) },
    "local:bench",
    now,
  );
  const headers = { authorization: `Bearer ${secret}` };
  const client = createClient(
    FleetService,
    createConnectTransport({ baseUrl: cp.url, httpVersion: "2", useBinaryFormat: true }),
  );

  const results: Record<string, number>[] = [];
  let session: Session | null = null;
  for (let r = -1; r < rounds; r++) {
    // Round -1 warms up (JIT, statement caches); the profile starts after it.
    if (r === 0 && values.profile) {
      session = new Session();
      session.connect();
      await session.post("Profiler.enable");
      await session.post("Profiler.start");
    }
    const releaseId = `rel-${randomUUID()}`;
    await store.createRelease(
      {
        id: releaseId,
        entries: ids.map((id, i) => ({
          hostname: id,
          storePath: gen(i, r + 1),
          platform: "x86_64-linux",
          tags: [],
        })),
        cacheUrl: "",
        flakeRef: "bench",
        flakeRev: "",
      },
      "bench",
      Date.now(),
    );
    writes = [];
    flushed = [];
    const cpu0 = process.cpuUsage();
    cpuStart = cpu0;
    const t0 = performance.now();
    const res = await client.createRollout(
      {
        releaseId,
        target: { tags: ["bench"] },
        strategy: RolloutStrategy.ALL_AT_ONCE,
        failureThreshold: "100%",
        healthTimeoutSeconds: 3600,
      },
      { headers },
    );
    const responseMs = performance.now() - t0;
    const cpu = process.cpuUsage(cpu0);
    // The last flush marker runs after the response when the pushes went out last.
    await new Promise((resolve) => setImmediate(resolve));
    if (writes.length !== N) throw new Error(`${writes.length} pushes, expected ${N}`);
    const rel = (xs: number[]) => xs.map((x) => x - t0);
    const w = rel(writes);
    const f = rel(flushed);
    const row = {
      round: r,
      firstWriteMs: round1(Math.min(...w)),
      lastWriteMs: round1(Math.max(...w)),
      firstFlushMs: round1(Math.min(...f)),
      p50FlushMs: round1(pct(f, 50)),
      p99FlushMs: round1(pct(f, 99)),
      lastFlushMs: round1(Math.max(...f)),
      responseMs: round1(responseMs),
      cpuToFirstPushMs: round1(cpuAtFirst),
      cpuToLastFlushMs: round1(cpuAtFlush),
      cpuMs: round1((cpu.user + cpu.system) / 1000),
    };
    if (r >= 0) results.push(row);
    process.stdout.write(`${JSON.stringify({ machines: N, ...row })}\n`);
    // Finish it so the machines are free for the next round's rollout.
    await client.cancelRollout({ rolloutId: res.rollout!.id, reason: "bench" }, { headers });
  }
  if (session) {
    const { profile } = await session.post("Profiler.stop");
    const file = join(tmpdir(), `push-fanout-${process.pid}.cpuprofile`);
    writeFileSync(file, JSON.stringify(profile));
    process.stderr.write(`profile: ${file}\n`);
    printTop(profile);
  }
  const keys = Object.keys(results[0]!).filter((k) => k !== "round");
  process.stdout.write(
    `${JSON.stringify({ machines: N, median: Object.fromEntries(keys.map((k) => [k, median(results.map((x) => x[k]!))])) })}\n`,
  );
}

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
}

function printTop(profile: { nodes: ProfileNode[]; samples?: number[] }): void {
  const total = profile.nodes.reduce((s, n) => s + (n.hitCount ?? 0), 0);
  const self = new Map<string, number>();
  for (const n of profile.nodes) {
    const { functionName, url, lineNumber } = n.callFrame;
    const key = `${functionName || "(anonymous)"} ${url.split("/").slice(-2).join("/")}:${lineNumber + 1}`;
    self.set(key, (self.get(key) ?? 0) + (n.hitCount ?? 0));
  }
  const top = [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, 25);
  for (const [key, hits] of top) process.stderr.write(`${((100 * hits) / total).toFixed(1)}%  ${key}\n`);
}

try {
  await main();
} finally {
  await cp.stop();
  rmSync(dir, { recursive: true, force: true });
}
