/**
 * End-to-end, issue 9's acceptance: three real control-plane processes on one PostgreSQL, real
 * agents (real Nix) spread over them, each given all three URLs. A canary rollout created on one
 * replica completes with pushes crossing replicas; SIGKILL of the executor leader mid-batch lets
 * another replica finish the rollout, no machine assigned twice, audit intact; a replica restarted
 * sends its agents to the next URL and nothing is lost. Agents poll once an hour: only a push (or a reconnect's hello)
 * can deliver an assignment within these tests.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import {
  type GetRolloutResponse,
  RolloutEventType,
  RolloutStatus,
  RolloutStrategy,
} from "../../src/gen/nixfleet/v1/fleet_pb.js";
import { waitFor } from "../fixtures/fleet.js";
import { postgresUnavailable } from "../fixtures/postgres.js";
import { makeTempDir, removeTempDir } from "../fixtures/tmp.js";
import { ReplicaFleet } from "./replica-fleet.js";

const HOSTS = ["rep-1", "rep-2", "rep-3", "rep-4"].map((name) => ({ name, tags: ["rep"] }));
const hostOf = (url: string | undefined) => (url ? new URL(url).host : "");

describe("e2e: three replicas on one PostgreSQL", { skip: postgresUnavailable() }, () => {
  const dir = makeTempDir("nixfleet-e2e-replicas-");
  let fleet: ReplicaFleet;

  before(async () => {
    fleet = await ReplicaFleet.create({
      dir,
      replicas: 3,
      hosts: HOSTS,
      // v3's switch waits for a gate the test opens: a batch held open while its leader is killed.
      systems: [{ label: "v2" }, { label: "v3", gate: true }, { label: "v4" }],
    });
    for (const h of HOSTS) fleet.startAgent(h.name);
  });

  after(async () => {
    await fleet?.close();
    removeTempDir(dir);
  });

  /** Which replica holds `name`'s stream now (by its agent's log). */
  const holder = (name: string) =>
    fleet.replicas.findIndex((r) => r.running && hostOf(r.url) === hostOf(fleet.streamUrl(name)));

  async function release(label: string, via = 0): Promise<string> {
    const { release } = await fleet.fleet(via).createRelease({
      entries: HOSTS.map((h) => ({ hostname: h.name, storePath: fleet.host(h.name).systems[label]!.path })),
      cacheUrl: fleet.cacheServer.url,
    });
    return release!.id;
  }

  async function rolloutOn(
    replica: number,
    id: string,
    what: string,
    pred: (r: GetRolloutResponse) => boolean,
  ) {
    return waitFor(
      `rollout ${id} ${what} (read on replica ${replica})`,
      async () => {
        const r = await fleet.fleet(replica).getRollout({ rolloutId: id });
        return pred(r) ? r : undefined;
      },
      180_000,
    );
  }

  /** One BATCH_STARTED per batch and one terminal event: the rollout's history, intact. */
  function assertIntactHistory(r: GetRolloutResponse, batches: number): void {
    const types = r.events.map((e) => e.type);
    assert.equal(types.filter((t) => t === RolloutEventType.CREATED).length, 1);
    for (let i = 0; i < batches; i++) {
      const started = r.events.filter((e) => e.type === RolloutEventType.BATCH_STARTED && e.batchIndex === i);
      const passed = r.events.filter(
        (e) => e.type === RolloutEventType.BATCH_SUCCEEDED && e.batchIndex === i,
      );
      assert.equal(started.length, 1, `batch ${i} started once`);
      assert.equal(passed.length, 1, `batch ${i} succeeded once`);
    }
    assert.equal(types.filter((t) => t === RolloutEventType.COMPLETED).length, 1);
    const ids = r.events.map((e) => e.id);
    assert.deepEqual(
      ids,
      [...ids].sort((x, y) => Number(x - y)),
      "events in order",
    );
  }

  it(
    "agents spread over the three replicas; every replica shows all four connected",
    { timeout: 240_000 },
    () =>
      fleet.explain(async () => {
        await waitFor(
          "every agent on its first URL",
          () => HOSTS.every((h) => holder(h.name) === fleet.host(h.name).home),
          120_000,
        );
        for (let i = 0; i < 3; i++) {
          await waitFor(
            `replica ${i} to show four connected machines`,
            async () => {
              const s = await fleet.fleet(i).getFleetStatus({ tags: ["rep"] });
              return s.machines.length === 4 && s.machines.every((m) => m.connected && m.lastSeen);
            },
            60_000,
          );
        }
      }),
  );

  it(
    "a canary rollout created on replica 0 completes; agents held by replicas 1 and 2 got its push",
    { timeout: 300_000 },
    () =>
      fleet.explain(async () => {
        const connectsBefore = new Map(
          HOSTS.map((h) => [h.name, fleet.host(h.name).agent!.find({ event: "stream_connected" }).length]),
        );
        const { rollout } = await fleet.fleet(0).createRollout({
          releaseId: await release("v2"),
          target: { tags: ["rep"] },
          strategy: RolloutStrategy.CANARY,
          healthTimeoutSeconds: 120,
        });
        const done = await rolloutOn(
          0,
          rollout!.id,
          "to complete",
          (r) => r.rollout?.status === RolloutStatus.COMPLETED,
        );
        assertIntactHistory(done, done.rollout!.batches.length);
        for (const h of HOSTS) {
          const v2 = fleet.host(h.name).systems["v2"]!.path;
          assert.equal(fleet.host(h.name).host.current(), v2, `${h.name} runs v2`);
          assert.equal(
            fleet.host(h.name).agent!.find({ event: "stream_connected" }).length,
            connectsBefore.get(h.name),
            `${h.name} kept its stream: the assignment came as a push, not with a reconnect's hello`,
          );
          assert.ok(fleet.pushes(h.name, v2).length >= 1, `${h.name} got v2 pushed`);
        }
        const crossed = HOSTS.filter((h) => holder(h.name) !== 0);
        assert.ok(
          crossed.length >= 2,
          "agents held by replicas other than the one the rollout was created on",
        );
        // The same rollout seen from every replica.
        for (const i of [1, 2]) {
          const r = await fleet.fleet(i).getRollout({ rolloutId: rollout!.id });
          assert.equal(r.rollout?.status, RolloutStatus.COMPLETED);
          assert.equal(r.events.length, done.events.length);
        }
      }),
  );

  it(
    "SIGKILL of the executor leader mid-batch: another replica takes over and finishes; no machine assigned twice, audit intact",
    { timeout: 400_000 },
    () =>
      fleet.explain(async () => {
        const before = await waitFor("a leader", async () => {
          const l = await fleet.leader();
          return l.index >= 0 ? l : undefined;
        });
        // Created through a follower: the leader hears of it over the bus.
        const via = (before.index + 1) % 3;
        const { rollout } = await fleet.fleet(via).createRollout({
          releaseId: await release("v3", via),
          target: { tags: ["rep"] },
          strategy: RolloutStrategy.CANARY,
          healthTimeoutSeconds: 300,
        });
        const id = rollout!.id;
        const canary = rollout!.batches[0]!.machines[0]!.machineId;
        await waitFor(
          `${canary}'s switch to v3 to start`,
          () =>
            fleet
              .host(canary)
              .host.switchLog()
              .some((e) => e.event === "start" && e.path.includes("-v3")),
          120_000,
        );
        fleet.host(canary).host.releaseGate("v3");
        const rest = HOSTS.map((h) => h.name).filter((n) => n !== canary);
        await waitFor(
          "batch 2's switches to start (and wait at their gate)",
          () =>
            rest.every((n) =>
              fleet
                .host(n)
                .host.switchLog()
                .some((e) => e.event === "start" && e.path.includes("-v3")),
            ),
          180_000,
        );
        // Mid-batch: batch 2 is deploying, its switches are held. Kill the leader.
        const { index: killed } = await fleet.leader();
        assert.ok(killed >= 0, "someone leads");
        const listen = fleet.replicas[killed]!.listenAddress;
        await fleet.replicas[killed]!.stop("SIGKILL");
        const after = await waitFor(
          "another replica to take the executor lease",
          async () => {
            const l = await fleet.leader();
            return l.index >= 0 && l.index !== killed ? l : undefined;
          },
          60_000,
        );
        assert.ok(after.epoch > before.epoch, `epoch ${before.epoch} → ${after.epoch}`);
        for (const n of rest) fleet.host(n).host.releaseGate("v3");
        const done = await rolloutOn(
          after.index,
          id,
          "to complete under the new leader",
          (r) => r.rollout?.status === RolloutStatus.COMPLETED,
        );
        assertIntactHistory(done, 2);
        // Each machine got v3 with one revision: nobody re-assigned a batch across the takeover.
        for (const h of HOSTS) {
          const v3 = fleet.host(h.name).systems["v3"]!.path;
          const revisions = new Set(fleet.pushes(h.name, v3).map((l) => l["revision"]));
          assert.equal(revisions.size, 1, `${h.name} was assigned v3 once: ${[...revisions].join(", ")}`);
          assert.equal(fleet.host(h.name).host.current(), v3);
        }
        const audit = await fleet.sql<{ action: string; n: string }>(
          "SELECT action, count(*) AS n FROM audit_events WHERE target = $1 GROUP BY action",
          [id],
        );
        const count = (action: string) => Number(audit.find((a) => a.action === action)?.n ?? 0);
        assert.equal(count("rollout.create"), 1, JSON.stringify(audit));
        assert.equal(count("rollout.batch_start"), 2, JSON.stringify(audit));
        // Back to three replicas for what follows.
        await fleet.replicas[killed]!.start(listen, 120_000);
      }),
  );

  it(
    "a replica restarted: its agents reconnect to the next URL, a rollout made meanwhile reaches them, nothing is lost",
    { timeout: 300_000 },
    () =>
      fleet.explain(async () => {
        // The replica holding the most agents (after the leader kill, agents may have moved).
        const held = [0, 1, 2].map((i) => HOSTS.filter((h) => holder(h.name) === i).map((h) => h.name));
        const target = held.reduce((best, names, i) => (names.length > held[best]!.length ? i : best), 0);
        const moved = held[target]!;
        assert.ok(moved.length >= 1, "some replica holds agents");
        const other = (target + 1) % 3;
        const replica = fleet.replicas[target]!;
        const listen = replica.listenAddress;
        await replica.stop("SIGTERM");
        await waitFor(
          `replica ${target}'s agents to reconnect elsewhere`,
          () => moved.every((name) => holder(name) >= 0 && holder(name) !== target),
          60_000,
        );
        // Created on another replica while this one is down; it pushes to agents held anywhere.
        const { rollout } = await fleet.fleet(other).createRollout({
          releaseId: await release("v4", other),
          target: { tags: ["rep"] },
          strategy: RolloutStrategy.ALL_AT_ONCE,
          healthTimeoutSeconds: 120,
        });
        await rolloutOn(
          other,
          rollout!.id,
          "to complete",
          (r) => r.rollout?.status === RolloutStatus.COMPLETED,
        );
        await replica.start(listen, 120_000);
        const after = await rolloutOn(
          target,
          rollout!.id,
          "to show completed on the restarted replica",
          (r) => r.rollout?.status === RolloutStatus.COMPLETED,
        );
        assertIntactHistory(after, 1);
        const status = await waitFor(
          "the restarted replica to show every machine connected and in sync",
          async () => {
            const s = await fleet.fleet(target).getFleetStatus({ tags: ["rep"] });
            return s.machines.length === 4 && s.machines.every((m) => m.connected && m.inSync)
              ? s
              : undefined;
          },
          60_000,
        );
        for (const m of status.machines) {
          const v4 = fleet.host(m.machineId).systems["v4"]!.path;
          assert.equal(m.currentGeneration, v4);
          assert.equal(fleet.host(m.machineId).host.current(), v4);
        }
        const rollouts = await fleet.fleet(target).listRollouts({});
        assert.equal(rollouts.rollouts.length, 3, "every rollout, on every replica");
        assert.ok(rollouts.rollouts.every((r) => r.status === RolloutStatus.COMPLETED));
      }),
  );
});
