/**
 * The store operations behind a push and behind agent reports, at N machines on SQLite, in one
 * process without the RPC layer (`npx tsx bench/store-ops.ts [--machines N] [--seconds T]`):
 *
 * - listing the machines a tag selector picks (listMachines, the full records; CreateRollout now
 *   reads only targetCandidates), reading the release and the rollout (CPU only),
 * - createRollout of all of them in one ALL_AT_ONCE batch, and startBatch of that batch,
 * - recordReport in a bare loop (one call at a time: ms per call),
 * - the report path as the control plane runs it — AgentIntake with a live executor, every
 *   machine in the running rollout, 16 reports in flight — against the bare loop's rate (in
 *   steady state: the gate changes the bare loop's reports made are evaluated before the clock
 *   starts).
 *
 * Prints one JSON line. Median of `--rounds` (3) for the list/create/start figures.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { parseArgs } from "node:util";
import { createLogger } from "../src/common/logger.js";
import { InProcessBus } from "../src/control-plane/cluster/bus.js";
import { PushHub } from "../src/control-plane/push/hub.js";
import { RolloutExecutor } from "../src/control-plane/rollouts/executor.js";
import { RolloutNotifier } from "../src/control-plane/rollouts/notifier.js";
import { RolloutChanges } from "../src/control-plane/rollouts/rollout-events.js";
import { AgentIntake } from "../src/control-plane/services/agent-intake.js";
import { Presence } from "../src/control-plane/services/presence.js";
import type { ReportInput } from "../src/control-plane/store/records.js";
import { SqliteFleetStore } from "../src/control-plane/store/sqlite-store.js";

const { values } = parseArgs({
  options: {
    machines: { type: "string", default: "10000" },
    seconds: { type: "string", default: "3" },
    rounds: { type: "string", default: "3" },
  },
});
const N = Number(values.machines);
const seconds = Number(values.seconds);
const rounds = Number(values.rounds);
const path = (i: number) => `/nix/store/${String(i).padStart(32, "0")}-nixos-system-bench`;
const ids = Array.from({ length: N }, (_, i) => `m${String(i).padStart(6, "0")}`);
const logger = createLogger({ name: "store-ops", level: "error" });
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
/** This process's CPU time in ms: on a shared machine it moves far less than wall time. */
const cpuMs = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};
const time = async (fn: () => Promise<unknown>) => {
  const t0 = performance.now();
  const c0 = cpuMs();
  await fn();
  cpu.push(cpuMs() - c0);
  return performance.now() - t0;
};
const cpu: number[] = [];

const dir = mkdtempSync(join(tmpdir(), "nixfleet-store-ops-"));
const { store } = await SqliteFleetStore.open({
  path: join(dir, "state.db"),
  lockWaitMs: 10_000,
  onLockWait: () => {},
  now: () => Date.now(),
});

// The fleet, written directly: registering 10k machines one call at a time is not what we measure.
const insertMachine = store.db.prepare(
  "INSERT INTO machines (id, lifecycle, registered_at) VALUES (?, 'active', ?)",
);
const insertTag = store.db.prepare("INSERT INTO machine_tags (machine_id, tag) VALUES (?, 'bench')");
store.db.transaction(() => {
  for (const id of ids) {
    insertMachine.run(id, Date.now());
    insertTag.run(id);
  }
})();
await store.createRelease(
  {
    id: "rel-bench",
    entries: ids.map((id, i) => ({ hostname: id, storePath: path(i), platform: "x86_64-linux", tags: [] })),
    cacheUrl: "",
    flakeRef: "bench",
    flakeRev: "",
  },
  "bench",
  Date.now(),
);

const newRollout = (id: string, machines: string[]) => ({
  id,
  releaseId: "rel-bench",
  targetTags: ["bench"],
  targetHosts: [],
  strategy: "all_at_once" as const,
  batchSizes: ["100%"],
  failureThreshold: "0",
  onFailure: "pause" as const,
  healthTimeoutSeconds: 3600,
  soakSeconds: 0,
  cacheUrl: "",
  batches: [machines.map((machineId, i) => ({ machineId, targetGeneration: path(i) }))],
  note: "",
});

const list: number[] = [];
const create: number[] = [];
const start: number[] = [];
// CPU ms of the other reads before a push: the release, the light candidate list, the rollout.
const extra: Record<string, number[]> = { getRelease: [], targetCandidates: [], getRollout: [] };
const cpuOf = async (name: string, fn: () => Promise<unknown>) => {
  const c0 = cpuMs();
  await fn();
  extra[name]!.push(cpuMs() - c0);
};
for (let r = 0; r < rounds; r++) {
  await cpuOf("getRelease", () => store.getRelease("rel-bench"));
  await cpuOf("targetCandidates", () => store.targetCandidates({ tags: ["bench"] }));
  let listed: string[] = [];
  list.push(
    await time(async () => {
      const machines = await store.listMachines({
        tags: ["bench"],
        match: "all",
        lifecycle: null,
        afterId: null,
        limit: 1_000_000,
      });
      listed = machines.map((m) => m.id);
    }),
  );
  if (listed.length !== N) throw new Error(`listed ${listed.length} machines, expected ${N}`);
  const id = `r-${r}`;
  create.push(await time(() => store.createRollout(newRollout(id, listed), "bench", Date.now())));
  await cpuOf("getRollout", () => store.getRollout(id));
  start.push(await time(() => store.startBatch(id, 0, Date.now())));
  if (r < rounds - 1)
    await store.endRollout(
      id,
      { status: "cancelled", revert: false, reason: "bench", actor: "bench", from: ["running"] },
      Date.now(),
    );
}

const report = (i: number): ReportInput => ({
  machineId: ids[i % N]!,
  currentGeneration: path(i % N),
  desiredGeneration: path(i % N),
  desiredRevision: 0,
  outcome: 2,
  success: true,
  message: "bench",
  deploymentId: "",
  tags: ["bench"],
  agentVersion: "bench",
  uptimeSeconds: 1,
  agentTime: null,
});

// Bare loop: one call at a time.
let n = 0;
let t0 = performance.now();
let c0 = cpuMs();
while (performance.now() - t0 < seconds * 1000) await store.recordReport(report(n++), Date.now());
const bareMs = (performance.now() - t0) / n;
const bareCpuMs = (cpuMs() - c0) / n;

// The report path: intake + executor, the last rollout running with every machine in it.
const hub = new PushHub({
  clock: { now: () => Date.now() },
  logger,
  heartbeatIntervalMs: 60_000,
  observePushLatency: () => {},
});
const changes = new RolloutChanges();
let executor: RolloutExecutor | null = null;
// One process on SQLite: the in-process bus, exactly what the control plane wires.
const bus = new InProcessBus({
  desired: (change, hint) => hub.pushDesired(change, hint),
  pollHint: (ids, seconds) => hub.pushPollHint(ids, seconds),
  rolloutChanged: (id) => changes.publish(id),
  kick: (id) => void executor?.kick(id),
  fleetChanged: () => {},
  resync: () => {},
});
const notifier = new RolloutNotifier({
  bus,
  logger,
  pollHintSeconds: 5,
  onStatus: () => {},
});
executor = new RolloutExecutor({
  store,
  clock: { now: () => Date.now() },
  notifier,
  logger,
  tickMs: 1000,
});
executor.lead(null);
executor.start();
const running = executor;
const intake = new AgentIntake({
  store: () => store,
  clock: { now: () => Date.now() },
  kick: (id) => running.kick(id),
  presence: new Presence(),
  logger,
  pollHintSeconds: 5,
});
// Steady state: the gate transitions the bare loop's reports caused are evaluated first.
await running.kick(`r-${rounds - 1}`);
n = 0;
t0 = performance.now();
c0 = cpuMs();
const end = t0 + seconds * 1000;
await Promise.all(
  Array.from({ length: 16 }, async () => {
    while (performance.now() < end) await intake.report(report(n++));
  }),
);
const pathRps = n / ((performance.now() - t0) / 1000);
const pathCpuMs = (cpuMs() - c0) / n;
await running.stop();
await store.close();
rmSync(dir, { recursive: true, force: true });
process.stdout.write(
  `${JSON.stringify({
    machines: N,
    listMs: Math.round(median(list) * 10) / 10,
    createRolloutMs: Math.round(median(create) * 10) / 10,
    startBatchMs: Math.round(median(start) * 10) / 10,
    // CPU ms per list / create / start (same order), each the median round's
    cpuMs: [0, 1, 2].map((k) => Math.round(median(cpu.filter((_, i) => i % 3 === k)) * 10) / 10),
    otherCpuMs: Object.fromEntries(
      Object.entries(extra).map(([k, v]) => [k, Math.round(median(v) * 10) / 10]),
    ),
    recordReportMs: Math.round(bareMs * 1000) / 1000,
    recordReportCpuMs: Math.round(bareCpuMs * 1000) / 1000,
    reportPathCpuMs: Math.round(pathCpuMs * 1000) / 1000,
    bareRps: Math.round(1000 / bareMs),
    reportPathRps: Math.round(pathRps),
    ratio: Math.round((pathRps * bareMs) / 10) / 100,
  })}\n`,
);
