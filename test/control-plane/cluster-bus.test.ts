/**
 * The cluster bus: its wire form fits PostgreSQL's NOTIFY limit at fleet scale, and over a real
 * PostgreSQL one replica's events reach another (not itself twice), kicks coalesce, and a
 * LISTEN connection killed with pg_terminate_backend comes back and asks for a resync. Rollout
 * and desired-generation changes leave inside the transaction that writes them: on commit, never
 * on rollback.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import pg from "pg";
import { createLogger } from "../../src/common/logger.js";
import { type ClusterSink, InProcessBus } from "../../src/control-plane/cluster/bus.js";
import {
  type ClusterEvent,
  decodePayload,
  encodeEvent,
  type FleetChange,
  MAX_PAYLOAD_BYTES,
} from "../../src/control-plane/cluster/messages.js";
import { PostgresBus } from "../../src/control-plane/cluster/pg-bus.js";
import { RolloutNotifier } from "../../src/control-plane/rollouts/notifier.js";
import { PostgresFleetStore } from "../../src/control-plane/store/postgres-store.js";
import type { DesiredChange } from "../../src/control-plane/store/records.js";
import { postgresUnavailable, sharedPostgres } from "../fixtures/postgres.js";
import { storePath, waitFor } from "./helpers.js";

const quiet = createLogger({ name: "bus-test", level: "silent" });

function changes(n: number): DesiredChange[] {
  return Array.from({ length: n }, (_, i) => ({
    machineId: `machine-${String(i).padStart(5, "0")}`,
    desired:
      i % 97 === 0
        ? null
        : {
            storePath: storePath(`host-${i}`, 2),
            cacheUrl: "https://cache.example.org/ünïcode-path",
            revision: 1_000_000 + i,
            rolloutId: "r-0123456789abcdef",
            setBy: "executor",
            setAt: 1_767_000_000_000 + i,
          },
  }));
}

/** A sink that records what it was asked to do. */
class RecordingSink implements ClusterSink {
  readonly desiredSeen: { change: DesiredChange; hint: number | undefined }[] = [];
  readonly hints: { ids: readonly string[]; seconds: number }[] = [];
  readonly rollouts: string[] = [];
  readonly kicks: string[] = [];
  readonly fleet: FleetChange[] = [];
  resyncs = 0;
  desired(change: DesiredChange, hint: number | undefined): void {
    this.desiredSeen.push({ change, hint });
  }
  pollHint(ids: readonly string[], seconds: number): void {
    this.hints.push({ ids, seconds });
  }
  rolloutChanged(id: string): void {
    this.rollouts.push(id);
  }
  kick(id: string): void {
    this.kicks.push(id);
  }
  fleetChanged(changes: readonly FleetChange[]): void {
    this.fleet.push(...changes);
  }
  resync(): void {
    this.resyncs++;
  }
}

describe("cluster messages", () => {
  it("10,000 desired changes travel in payloads under the NOTIFY limit, whole and in order", () => {
    const all = changes(10_000);
    const payloads = encodeEvent("replica-a", { kind: "desired", changes: all, pollHintSeconds: 5 });
    assert.ok(payloads.length > 1, "one payload cannot hold them");
    for (const p of payloads)
      assert.ok(Buffer.byteLength(p) <= MAX_PAYLOAD_BYTES, `${Buffer.byteLength(p)} bytes`);
    const decoded = payloads.map(decodePayload);
    const back: DesiredChange[] = [];
    for (const d of decoded) {
      assert.ok(d.ok, d.ok ? "" : d.problem);
      assert.equal(d.from, "replica-a");
      assert.ok(d.event.kind === "desired");
      assert.equal(d.event.pollHintSeconds, 5);
      back.push(...d.event.changes);
    }
    assert.deepEqual(back, all);
  });

  it("poll hints, rollout wake-ups and kicks round-trip", () => {
    const events: ClusterEvent[] = [
      { kind: "poll-hint", machineIds: Array.from({ length: 3000 }, (_, i) => `m-${i}`), seconds: 0 },
      { kind: "rollout", rolloutId: "r-1" },
      { kind: "kick", rolloutIds: ["r-1", "r-2"] },
      { kind: "desired", changes: changes(2), pollHintSeconds: undefined },
    ];
    for (const event of events) {
      const payloads = encodeEvent("b", event);
      const merged = payloads.map(decodePayload).map((d) => (d.ok ? d.event : assert.fail(d.problem)));
      if (event.kind === "poll-hint") {
        assert.ok(payloads.length > 1);
        assert.deepEqual(
          merged.flatMap((e) => (e.kind === "poll-hint" ? e.machineIds : [])),
          event.machineIds,
        );
      } else {
        assert.deepEqual(merged, [event]);
      }
    }
  });

  it("fleet changes travel as id lists per kind, under the NOTIFY limit", () => {
    const changes: FleetChange[] = [
      ...Array.from({ length: 10_000 }, (_, i) => ({ machineId: `machine-${i}`, kind: "desired" as const })),
      { machineId: "m-1", kind: "report" },
      { machineId: "m-2", kind: "connected" },
    ];
    const payloads = encodeEvent("a", { kind: "fleet", changes });
    assert.ok(payloads.length < 40, `${payloads.length} payloads for 10,002 changes`);
    for (const p of payloads) assert.ok(Buffer.byteLength(p) <= MAX_PAYLOAD_BYTES);
    const back = payloads
      .map(decodePayload)
      .flatMap((d) => (d.ok && d.event.kind === "fleet" ? d.event.changes : assert.fail(JSON.stringify(d))));
    assert.deepEqual(back, changes);
    // A change kind a newer replica added is skipped with the reason; a bad id list is malformed.
    assert.deepEqual(decodePayload('{"v":1,"f":"x","k":"m","i":["m-1"],"c":"teleported"}'), {
      ok: false,
      from: "x",
      problem: 'unknown fleet change kind "teleported"',
    });
    assert.equal(decodePayload('{"v":1,"f":"x","k":"m","i":[1],"c":"report"}').ok, false);
    assert.equal(decodePayload('{"v":1,"f":"x","k":"m","i":["m-1"]}').ok, false);
  });

  it("a payload from a newer or broken replica is refused with the reason, never thrown", () => {
    const newer = decodePayload('{"v":2,"f":"x","k":"d","i":[]}');
    assert.deepEqual(newer, { ok: false, from: "x", problem: "wire version 2 (this replica speaks 1)" });
    assert.equal(decodePayload("not json").ok, false);
    assert.equal(decodePayload('{"v":1,"f":"x","k":"zz","i":[]}').ok, false);
    assert.equal(decodePayload('{"v":1,"f":"x","k":"d","i":[["m","p"]]}').ok, false);
  });

  it("in-process: an event is a direct call here, and 'others' reaches nobody", () => {
    const sink = new RecordingSink();
    const bus = new InProcessBus(sink);
    bus.publish({ kind: "rollout", rolloutId: "r-1" });
    bus.publish({ kind: "kick", rolloutIds: ["r-1"] }, "others");
    assert.deepEqual(sink.rollouts, ["r-1"]);
    assert.deepEqual(sink.kicks, []);
  });
});

describe("PostgreSQL bus", { skip: postgresUnavailable() }, () => {
  async function pair(t: { after(fn: () => Promise<void>): void }) {
    const url = await (await sharedPostgres()).database();
    const make = async (id: string) => {
      const sink = new RecordingSink();
      const bus = new PostgresBus({
        url,
        sink,
        logger: quiet,
        replicaId: id,
        reconnectMinMs: 20,
        reconnectMaxMs: 200,
      });
      await bus.start();
      t.after(() => bus.stop());
      return { sink, bus };
    };
    return { url, a: await make("a"), b: await make("b") };
  }

  it("an event published on A reaches B once, and A only by its direct call", async (t) => {
    const { a, b } = await pair(t);
    const all = changes(10_000);
    a.bus.publish({ kind: "desired", changes: all, pollHintSeconds: 5 });
    a.bus.publish({ kind: "rollout", rolloutId: "r-1" });
    a.bus.publish({ kind: "poll-hint", machineIds: ["m-1"], seconds: 0 });
    await waitFor("B to receive everything", () => b.sink.rollouts.length === 1 && b.sink.hints.length === 1);
    assert.deepEqual(
      b.sink.desiredSeen.map((d) => d.change),
      all,
      "every change, in order, before the later events",
    );
    assert.ok(b.sink.desiredSeen.every((d) => d.hint === 5));
    assert.equal(a.sink.desiredSeen.length, all.length, "A delivered to itself once, directly");
    assert.deepEqual(a.sink.rollouts, ["r-1"]);
    b.bus.publish({ kind: "rollout", rolloutId: "r-2" }, "others");
    await waitFor("A to hear B", () => a.sink.rollouts.includes("r-2"));
    assert.deepEqual(b.sink.rollouts, ["r-1"], "'others' is not delivered to the publisher");
  });

  it("kicks published in one burst leave as one notification", async (t) => {
    const { a, b } = await pair(t);
    const sentBefore = a.bus.stats.sent;
    for (let i = 0; i < 500; i++) a.bus.publish({ kind: "kick", rolloutIds: [i % 2 ? "r-odd" : "r-even"] });
    await waitFor("B to be kicked", () => b.sink.kicks.length === 2);
    assert.deepEqual([...b.sink.kicks].sort(), ["r-even", "r-odd"]);
    assert.equal(a.bus.stats.sent - sentBefore, 1);
    assert.equal(
      a.sink.kicks.length,
      500,
      "this replica's executor is kicked every time (it coalesces itself)",
    );
  });

  it("fleet changes published in one burst leave coalesced, and only to the others", async (t) => {
    const { a, b } = await pair(t);
    const sentBefore = a.bus.stats.sent;
    for (let i = 0; i < 10_000; i++)
      a.bus.publish({ kind: "fleet", changes: [{ machineId: `m-${i}`, kind: "desired" }] }, "others");
    a.bus.publish({ kind: "fleet", changes: [{ machineId: "m-1", kind: "desired" }] }, "others");
    a.bus.publish({ kind: "fleet", changes: [{ machineId: "m-1", kind: "report" }] }, "others");
    await waitFor("B to hear all", () => b.sink.fleet.length === 10_001);
    const sent = a.bus.stats.sent - sentBefore;
    t.diagnostic(`10,001 distinct fleet changes in ${sent} notifications`);
    assert.ok(sent < 40, `${sent} notifications`);
    assert.equal(new Set(b.sink.fleet.map((c) => `${c.kind}:${c.machineId}`)).size, 10_001, "each once");
    assert.deepEqual(a.sink.fleet, [], "'others' is not delivered to the publisher");
  });

  it("a LISTEN connection killed by pg_terminate_backend reconnects, resyncs, and hears again", async (t) => {
    const { url, a, b } = await pair(t);
    const admin = new pg.Client({ connectionString: url });
    await admin.connect();
    t.after(() => admin.end());
    const pid = b.bus.listenerPid;
    assert.ok(pid);
    const killed = await admin.query("SELECT pg_terminate_backend($1) AS ok", [pid]);
    assert.equal(killed.rows[0].ok, true);
    await waitFor("B to reconnect", () => b.bus.stats.reconnects === 1 && b.bus.listening);
    assert.notEqual(b.bus.listenerPid, pid, "a new server process");
    assert.equal(b.sink.resyncs, 1, "told to re-send what it may have missed");
    a.bus.publish({ kind: "rollout", rolloutId: "after-kill" });
    await waitFor("B to hear A again", () => b.sink.rollouts.includes("after-kill"));
  });
});

describe("announced in the writing transaction (PostgreSQL)", { skip: postgresUnavailable() }, () => {
  /**
   * Replica A's store announces through A's bus inside its transactions; replica B only listens.
   * Nothing here publishes after a commit, so whatever B hears came from the commit itself —
   * as it must when A dies between committing and announcing.
   */
  async function replicas(t: { after(fn: () => Promise<void>): void }) {
    const url = await (await sharedPostgres()).database();
    const { store } = await PostgresFleetStore.open({ url, poolSize: 4 });
    t.after(() => store.close());
    const buses: PostgresBus[] = [];
    const make = async (id: string) => {
      const sink = new RecordingSink();
      const bus = new PostgresBus({ url, sink, logger: quiet, replicaId: id });
      await bus.start();
      buses.push(bus);
      return { sink, bus };
    };
    const a = await make("a");
    const b = await make("b");
    t.after(async () => {
      for (const bus of buses) await bus.stop();
    });
    store.announceWith(a.bus.storeAnnouncer(7));
    for (const id of ["m-1", "m-2", "m-3"])
      await store.registerMachine({ id, tags: ["web"], lifecycle: null }, "apikey:ci", 1);
    return { url, store, a, b };
  }

  it("a committed change reaches the other replica from the commit itself, nothing sent after it", async (t) => {
    const { store, a, b } = await replicas(t);
    await store.setDesired(
      { machineId: "m-1", storePath: storePath("m-1", 1), cacheUrl: "" },
      "apikey:ci",
      2,
    );
    await store.createRelease(
      {
        id: "rel-1",
        entries: [{ hostname: "m-2", storePath: storePath("m-2", 2), platform: "x86_64-linux", tags: [] }],
        cacheUrl: "",
        flakeRef: "",
        flakeRev: "",
      },
      "apikey:ci",
      3,
    );
    const created = await store.createRollout(
      {
        id: "r-1",
        releaseId: "rel-1",
        targetTags: [],
        targetHosts: ["m-2"],
        strategy: "all_at_once",
        batchSizes: ["100%"],
        failureThreshold: "0",
        onFailure: "pause",
        healthTimeoutSeconds: 300,
        soakSeconds: 0,
        cacheUrl: "",
        batches: [[{ machineId: "m-2", targetGeneration: storePath("m-2", 2) }]],
        note: "",
      },
      "apikey:ci",
      4,
    );
    const started = await store.startBatch("r-1", 0, 5);
    assert.ok(started);
    await waitFor("B to hear the desired generations", () => b.sink.desiredSeen.length === 2, 60_000);
    assert.deepEqual(
      b.sink.desiredSeen.map((d) => [d.change.machineId, d.change.desired?.storePath, d.hint]),
      [
        ["m-1", storePath("m-1", 1), undefined],
        ["m-2", storePath("m-2", 2), 7],
      ],
      "the operator's assignment, then the batch's with the rollout's poll hint, in commit order",
    );
    await waitFor(
      "B to hear the rollout",
      () => b.sink.rollouts.length === 2 && b.sink.kicks.length === 1,
      60_000,
    );
    assert.deepEqual(b.sink.rollouts, ["r-1", "r-1"], "created, then the batch started");
    assert.deepEqual(b.sink.kicks, ["r-1"], "the leader's executor learns of the new rollout");
    assert.equal(a.bus.stats.sent, 0, "nothing left A's bus after the commits");
    assert.equal(a.sink.desiredSeen.length, 0, "A hears nothing of its own notifications");

    // The notifier on A then only delivers to A's own agents and watchers: B hears each once.
    const notifier = new RolloutNotifier({ bus: a.bus, logger: quiet, pollHintSeconds: 7 });
    notifier.applied(created);
    notifier.applied(started);
    assert.deepEqual(
      a.sink.desiredSeen.map((d) => d.change.machineId),
      ["m-2"],
      "A pushes to the streams it holds",
    );
    assert.deepEqual(a.sink.kicks, [], "the kick was for the other replicas");
    await store.pauseRollout("r-1", "looks odd", "apikey:ci", 6);
    await waitFor("B to hear the pause", () => b.sink.rollouts.length === 3, 60_000);
    assert.equal(b.sink.desiredSeen.length, 2, "B heard each desired generation once");
    assert.equal(a.bus.stats.sent, 0);
  });

  it("a write whose transaction rolls back announces nothing", async (t) => {
    const { url, store, b } = await replicas(t);
    // A deferred constraint trigger fails the commit itself, after the NOTIFY was queued.
    const admin = new pg.Client({ connectionString: url });
    await admin.connect();
    t.after(() => admin.end());
    await admin.query(`CREATE FUNCTION refuse_commit() RETURNS trigger LANGUAGE plpgsql
      AS $$ BEGIN RAISE EXCEPTION 'commit refused by the test'; END $$`);
    await admin.query(`CREATE CONSTRAINT TRIGGER refuse_commit AFTER INSERT ON audit_events
      DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_commit()`);
    await assert.rejects(
      store.setDesired({ machineId: "m-1", storePath: storePath("m-1", 1), cacheUrl: "" }, "apikey:ci", 2),
      /commit refused by the test/,
    );
    assert.equal((await store.getMachine("m-1"))?.desired ?? null, null, "nothing was stored");
    await admin.query("DROP TRIGGER refuse_commit ON audit_events");
    await store.setDesired(
      { machineId: "m-3", storePath: storePath("m-3", 1), cacheUrl: "" },
      "apikey:ci",
      3,
    );
    // Notifications arrive in commit order: had the refused write announced, B would hear it first.
    await waitFor("B to hear the committed write", () => b.sink.desiredSeen.length > 0, 60_000);
    assert.deepEqual(
      b.sink.desiredSeen.map((d) => d.change.machineId),
      ["m-3"],
    );
  });
});
