/**
 * Two control planes (in-process, real sockets, real clients) on one PostgreSQL database: what
 * one replica commits reaches the agents whose Session the other holds; presence is shared, so
 * either replica shows a machine connected to the other as connected and fresh (a poll answered
 * elsewhere does not move its session); a dead replica's
 * sessions stop counting; a LISTEN connection killed mid-way loses nothing.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import pg from "pg";
import type { PostgresBus } from "../../src/control-plane/cluster/pg-bus.js";
import type { AgentMessage, ControlMessage } from "../../src/gen/nixfleet/v1/agent_pb.js";
import { RolloutStatus, RolloutStrategy } from "../../src/gen/nixfleet/v1/fleet_pb.js";
import { Outcome } from "../../src/gen/nixfleet/v1/types_pb.js";
import { postgresUnavailable } from "../fixtures/postgres.js";
import { type Harness, replicasOnPostgres } from "./harness.js";
import { Feed, Inbox, storePath, waitFor } from "./helpers.js";

const desiredHash = (m: ControlMessage) =>
  m.message.case === "desiredGenerationChanged" ? (m.message.value.generation?.hash ?? "") : undefined;

describe("replicas on one PostgreSQL database", { skip: postgresUnavailable() }, () => {
  const replicas = replicasOnPostgres("replicas");
  let admin: pg.Client;
  before(async () => {
    admin = new pg.Client({ connectionString: replicas.url });
    await admin.connect();
  });
  after(async () => {
    await admin?.end();
  });

  function session(h: Harness, machineId: string, current = storePath(`sys-${machineId}`, 1)) {
    const feed = new Feed<Partial<AgentMessage>>();
    feed.push({
      message: {
        case: "hello",
        value: { machineId, currentGeneration: current, tags: ["replicas"], agentVersion: "test" } as never,
      },
    });
    const inbox = new Inbox<ControlMessage>(h.agent(machineId).session(feed as AsyncIterable<never>));
    return { feed, inbox };
  }

  it("an assignment committed on A reaches the Session B holds", async (t) => {
    const { a, b } = replicas;
    const { feed, inbox } = session(b, "rp-01");
    await inbox.next("the initial state", (m) => desiredHash(m) !== undefined);
    const target = storePath("sys-rp-01", 2);
    const count = inbox.messages.length;
    const started = Date.now();
    await a.fleet("admin").setDesiredGeneration({ machineId: "rp-01", storePath: target });
    await inbox.next("the push from A", (m) => desiredHash(m) === target, count);
    t.diagnostic(`committed on A → pushed by B in ${Date.now() - started} ms`);
    feed.end();
    await inbox.finished;
  });

  it("shared presence: A shows a machine connected to B as connected and fresh, then gone", async () => {
    const { a, b } = replicas;
    const { feed, inbox } = session(b, "rp-02");
    await inbox.next("the initial state", (m) => desiredHash(m) !== undefined);
    const onA = async () => (await a.fleet("readonly").getMachine({ machineId: "rp-02" })).machine!;
    const seen = await waitFor("A to see rp-02 connected", async () => {
      const m = await onA();
      return m.connected ? m : undefined;
    });
    assert.ok(seen.lastSeen, "last seen is known");
    const status = await a.fleet("readonly").getFleetStatus({ tags: ["replicas"] });
    const row = status.machines.find((m) => m.machineId === "rp-02");
    assert.equal(row?.connected, true, "fleet status on A agrees");
    // A poll of the same machine answered by A moves its last contact, never its session to A.
    await a.agent("rp-02").getDesiredGeneration({ machineId: "rp-02" });
    await a.cp.cluster.refreshPresence();
    await b.cp.cluster.refreshPresence();
    const [held] = (
      await admin.query("SELECT replica_id, connected FROM cluster_presence WHERE machine_id = 'rp-02'")
    ).rows;
    assert.deepEqual(held, { replica_id: b.cp.cluster.bus.replicaId, connected: true });
    assert.equal((await onA()).connected, true);
    feed.end();
    await inbox.finished;
    await waitFor("A to see rp-02 gone", async () => !(await onA()).connected);
  });

  it("a machine held by a replica that stopped writing (killed) no longer counts as connected", async () => {
    const { a } = replicas;
    const now = Number(
      (await admin.query("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS t")).rows[0].t,
    );
    await admin.query(
      "INSERT INTO cluster_replicas (id, url, started_at, seen_at) VALUES ('ghost', '', $1, $2)",
      [now - 120_000, now - 60_000],
    );
    await admin.query(
      "INSERT INTO cluster_presence (machine_id, replica_id, connected, last_heard) VALUES ('rp-ghost', 'ghost', true, $1)",
      [now - 60_000],
    );
    await a.cp.store.recordHello(
      { machineId: "rp-ghost", currentGeneration: "", tags: [], agentVersion: "test" },
      now - 60_000,
    );
    const onA = async () => (await a.fleet("readonly").getMachine({ machineId: "rp-ghost" })).machine!;
    await a.cp.cluster.refreshPresence();
    assert.equal((await onA()).connected, false, "its replica was last seen 60 s ago");
    await admin.query(
      "UPDATE cluster_replicas SET seen_at = (extract(epoch FROM clock_timestamp()) * 1000)::bigint WHERE id = 'ghost'",
    );
    await waitFor("A to count it connected while its replica is alive", async () => (await onA()).connected);
  });

  it("a rollout created on A completes for an agent on B: B's push, B's reports kick the executor", async () => {
    const { a, b } = replicas;
    const id = "rp-03";
    const { feed, inbox } = session(b, id);
    await inbox.next("the initial state", (m) => desiredHash(m) !== undefined);
    const target = storePath(`sys-${id}`, 2);
    const { release } = await a
      .fleet("deploy")
      .createRelease({ entries: [{ hostname: id, storePath: target }] });
    const count = inbox.messages.length;
    const { rollout } = await a.fleet("deploy").createRollout({
      releaseId: release!.id,
      target: { hosts: [id] },
      strategy: RolloutStrategy.ALL_AT_ONCE,
      healthTimeoutSeconds: 600,
    });
    const pushed = await inbox.next("the batch's push", (m) => desiredHash(m) === target, count);
    assert.ok(pushed.message.case === "desiredGenerationChanged");
    assert.equal(pushed.message.value.generation?.rolloutId, rollout!.id);
    const revision = pushed.message.value.generation!.revision;
    const report = (outcome: Outcome) => ({
      message: {
        case: "report",
        value: {
          machineId: id,
          currentGeneration: target,
          desiredGeneration: target,
          desiredRevision: revision,
          outcome,
          success: true,
          deploymentId: `d-${id}`,
        } as never,
      },
    });
    feed.push(report(Outcome.DEPLOYED) as never);
    feed.push({
      message: {
        case: "health",
        value: {
          machineId: id,
          currentGeneration: target,
          allPassed: true,
          postApply: true,
          results: [],
        } as never,
      },
    });
    await waitFor("the rollout to complete", async () => {
      const r = await a.fleet("readonly").getRollout({ rolloutId: rollout!.id });
      return r.rollout?.status === RolloutStatus.COMPLETED;
    });
    feed.end();
    await inbox.finished;
  });

  it("B's LISTEN connection killed: an assignment made meanwhile on A still reaches B's agent", async () => {
    const { a, b } = replicas;
    const { feed, inbox } = session(b, "rp-04");
    await inbox.next("the initial state", (m) => desiredHash(m) !== undefined);
    const bus = b.cp.cluster.bus as PostgresBus;
    const reconnects = bus.stats.reconnects;
    await admin.query("SELECT pg_terminate_backend($1)", [bus.listenerPid]);
    const target = storePath("sys-rp-04", 2);
    const count = inbox.messages.length;
    await a.fleet("admin").setDesiredGeneration({ machineId: "rp-04", storePath: target });
    await inbox.next(
      "the assignment (notified, or re-sent after the reconnect)",
      (m) => desiredHash(m) === target,
      count,
    );
    await waitFor("B to listen again", () => bus.stats.reconnects > reconnects && bus.listening);
    feed.end();
    await inbox.finished;
  });
});
