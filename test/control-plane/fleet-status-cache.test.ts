/**
 * GetFleetStatus keeps each machine's encoded status between calls (fleet-status-encoder.ts):
 * after every kind of change to a machine — a report, a health report, tags, lifecycle, a desired
 * generation set and cleared, a rollout assignment, its agent's stream opening and closing — the
 * next answer, to binary and JSON clients, equals a fresh read of the store, and so does the
 * snapshot WatchFleet starts with (built from the same kept statuses). On PostgreSQL also
 * with the change made through another replica (NIXFLEET_TEST_STORE=postgres for the first suite;
 * the second needs only a PostgreSQL server).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { machineStatusToProto } from "../../src/control-plane/services/convert.js";
import type { AgentMessage } from "../../src/gen/nixfleet/v1/agent_pb.js";
import {
  type FleetSnapshotPage,
  type GetFleetStatusResponse,
  MachineStatusSchema,
  RolloutStrategy,
} from "../../src/gen/nixfleet/v1/fleet_pb.js";
import { MachineLifecycle, Outcome } from "../../src/gen/nixfleet/v1/types_pb.js";
import { createPki } from "../fixtures/pki.js";
import { postgresUnavailable } from "../fixtures/postgres.js";
import { makeTempDir, removeTempDir } from "../fixtures/tmp.js";
import { Harness, type Protocol, replicasOnPostgres } from "./harness.js";
import { Feed, storePath, waitFor } from "./helpers.js";

const IDS = ["fc-01", "fc-02", "fc-03"];

/** What a fresh read of the store gives (last seen compared apart: it moves with the clock). */
async function fresh(reader: Harness, connected: ReadonlySet<string>) {
  const machines = await reader.cp.store.listMachines({
    tags: [],
    match: "all",
    lifecycle: null,
    afterId: null,
    limit: 1000,
  });
  const live = { connected: (id: string) => connected.has(id), lastSeen: () => null };
  const statuses = machines.map((m) =>
    create(MachineStatusSchema, machineStatusToProto(m, live, Date.now(), 300_000)),
  );
  return {
    machines: statuses.map((m) => ({ ...m, lastSeen: undefined })),
    total: statuses.length,
    inSync: statuses.filter((s) => s.inSync).length,
    healthy: machines.filter((m) => m.health?.allPassed).length,
    seen: machines.map((m) => m.lastSeen !== null),
  };
}

/** The answer without last seen (checked present where the store has one). */
function comparable(answer: GetFleetStatusResponse, seen: boolean[]) {
  assert.deepEqual(
    answer.machines.map((m) => m.lastSeen !== undefined),
    seen,
  );
  return {
    machines: answer.machines.map((m) => ({ ...m, lastSeen: undefined })),
    total: answer.total,
    inSync: answer.inSync,
    healthy: answer.healthy,
  };
}

/** A WatchFleet's first snapshot, in pages of 2. */
async function snapshotPages(reader: Harness, protocol: Protocol): Promise<FleetSnapshotPage[]> {
  const abort = new AbortController();
  const pages: FleetSnapshotPage[] = [];
  try {
    for await (const m of reader
      .fleet("readonly", protocol)
      .watchFleet({ snapshotPageSize: 2 }, { signal: abort.signal })) {
      if (m.message.case !== "snapshot") continue;
      pages.push(m.message.value);
      if (m.message.value.last) break;
    }
  } finally {
    abort.abort();
  }
  return pages;
}

async function isConnected(reader: Harness, id: string): Promise<boolean> {
  const answer = await reader.fleet("readonly").getFleetStatus({});
  return answer.machines.find((m) => m.machineId === id)?.connected === true;
}

/**
 * Runs every change through `writer` and, after each, checks `reader`'s GetFleetStatus over each
 * protocol against a fresh read (the first round warms the kept statuses).
 */
async function changesAreSeen(writer: Harness, reader: Harness): Promise<void> {
  const connected = new Set<string>();
  const check = async (what: string) => {
    const want = await fresh(reader, connected);
    for (const protocol of ["grpc", "connect", "connect-json"] as Protocol[]) {
      const answer = await reader.fleet("readonly", protocol).getFleetStatus({});
      assert.deepEqual(
        comparable(answer, want.seen),
        { machines: want.machines, total: want.total, inSync: want.inSync, healthy: want.healthy },
        `after ${what}, over ${protocol}`,
      );
      // WatchFleet's snapshot (pages of 2) is built from the same kept statuses.
      const pages = await snapshotPages(reader, protocol);
      assert.deepEqual(
        pages.map((p) => [p.first, p.last]),
        [
          [true, false],
          [false, true],
        ],
      );
      assert.deepEqual(
        comparable(
          { ...answer, machines: pages.flatMap((p) => p.machines) } as GetFleetStatusResponse,
          want.seen,
        ).machines,
        want.machines,
        `WatchFleet's snapshot after ${what}, over ${protocol}`,
      );
    }
  };
  const report = (
    id: string,
    o: { n?: number; outcome?: Outcome; message?: string; tags?: string[]; agentVersion?: string } = {},
  ) =>
    writer.agent(id).report({
      machineId: id,
      currentGeneration: storePath(`sys-${id}`, o.n ?? 1),
      outcome: o.outcome ?? Outcome.UP_TO_DATE,
      message: o.message ?? "",
      tags: o.tags ?? ["fc", "web"],
      agentVersion: o.agentVersion ?? "1.0.0",
      uptimeSeconds: BigInt(Date.now()),
    });
  for (const id of IDS) await report(id);
  await check("the first reports");
  await check("nothing");

  await report("fc-01", { n: 2, outcome: Outcome.APPLY_FAILED, message: "switch failed" });
  await check("a report with a new generation, outcome and message");
  await report("fc-03", { agentVersion: "1.1.0" });
  await check("a report from a new agent version");
  await report("fc-03", { agentVersion: "1.1.0" });
  await check("a report changing only last seen and uptime");
  await report("fc-02", { tags: ["fc", "db", "eu"] });
  await check("a report replacing tags");
  await writer
    .agent("fc-03")
    .reportHealth({ machineId: "fc-03", currentGeneration: storePath("sys-fc-03", 1), allPassed: false });
  await check("a failed health report");
  await writer
    .agent("fc-03")
    .reportHealth({ machineId: "fc-03", currentGeneration: storePath("sys-fc-03", 1), allPassed: true });
  await check("a passing health report");
  await writer
    .agent("fc-03")
    .reportHealth({ machineId: "fc-03", currentGeneration: storePath("sys-fc-03", 1), allPassed: true });
  await check("another passing health report (only its time differs)");
  await writer
    .fleet("admin")
    .setMachineLifecycle({ machineId: "fc-02", lifecycle: MachineLifecycle.MAINTENANCE });
  await check("a lifecycle change");
  await writer
    .fleet("deploy")
    .setDesiredGeneration({ machineId: "fc-01", storePath: storePath("sys-fc-01", 2) });
  await check("a desired generation set (now in sync)");
  await writer.fleet("deploy").clearDesiredGeneration({ machineId: "fc-01" });
  await check("a desired generation cleared");

  const { release } = await writer.fleet("deploy").createRelease({
    entries: ["fc-01", "fc-03"].map((hostname) => ({
      hostname,
      storePath: storePath(`sys-${hostname}`, 3),
      platform: "x86_64-linux",
    })),
    cacheUrl: "https://cache.example.org",
  });
  const { rollout } = await writer.fleet("deploy").createRollout({
    releaseId: release!.id,
    target: { hosts: ["fc-01", "fc-03"] },
    strategy: RolloutStrategy.ALL_AT_ONCE,
  });
  await waitFor("the rollout's assignments", async () => {
    const m = await reader.cp.store.getMachine("fc-03");
    return m?.activeRollout && m.desired?.rolloutId === rollout!.id;
  });
  await check("a rollout assigning two machines");
  await writer.fleet("deploy").cancelRollout({ rolloutId: rollout!.id });
  await check("the rollout cancelled");

  // The agent's stream: connected while it is open (presence, not a store write).
  const feed = new Feed<Partial<AgentMessage>>();
  feed.push({
    message: {
      case: "hello",
      value: {
        machineId: "fc-02",
        currentGeneration: storePath("sys-fc-02", 1),
        tags: ["fc", "db", "eu"],
      } as never,
    },
  });
  const session = writer.agent("fc-02").session(feed as AsyncIterable<never>);
  const drained = (async () => {
    for await (const _ of session);
  })().catch(() => {});
  connected.add("fc-02");
  await waitFor("fc-02 connected on the reader", () => isConnected(reader, "fc-02"));
  await check("the agent's stream opened");
  feed.end();
  await drained;
  connected.delete("fc-02");
  await waitFor("fc-02 disconnected on the reader", async () => !(await isConnected(reader, "fc-02")));
  await check("the agent's stream closed");
}

describe("GetFleetStatus after changes equals a fresh read", () => {
  const dir = makeTempDir("nixfleet-fleet-status-cache-");
  let h: Harness;
  before(async () => {
    h = await Harness.start(createPki(join(dir, "pki")));
  });
  after(async () => {
    await h?.close();
    removeTempDir(dir);
  });

  it("report, tags, health, lifecycle, desired, rollout, stream open and closed", async () => {
    await changesAreSeen(h, h);
  });
});

describe("GetFleetStatus on one replica after changes through another", {
  skip: postgresUnavailable(),
}, () => {
  const replicas = replicasOnPostgres("fleet-status-replicas");

  it("every change made through B is in A's next answer", async () => {
    await changesAreSeen(replicas.b, replicas.a);
  });
});
