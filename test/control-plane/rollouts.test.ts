/**
 * Rollout scenarios end to end through the real server: operators drive rollouts with
 * FleetService, simulated agents answer with Report / ReportHealth over mTLS, the executor
 * gates batches. Every wait is a poll with a deadline on observable state.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import {
  BatchStatus,
  MachineGateState,
  OnFailure,
  type Rollout,
  RolloutEventType,
  RolloutStatus,
  RolloutStrategy,
} from "../../src/gen/nixfleet/v1/fleet_pb.js";
import { Outcome } from "../../src/gen/nixfleet/v1/types_pb.js";
import { createPki, type Pki } from "../fixtures/pki.js";
import { makeTempDir, removeTempDir } from "../fixtures/tmp.js";
import { Harness } from "./harness.js";
import { storePath, waitFor } from "./helpers.js";
import { SimAgent } from "./sim-agent.js";

describe("rollouts driven by simulated agents", () => {
  const dir = makeTempDir();
  let pki: Pki;
  let h: Harness;
  let fleetNo = 0;
  /** How far the control plane's clock runs ahead of the wall clock (a test moves it on). */
  let ahead = 0;
  before(async () => {
    pki = createPki(join(dir, "pki"));
    h = await Harness.start(pki, { executorTickMs: 50, clock: { now: () => Date.now() + ahead } });
  });
  after(async () => {
    await h.close();
    removeTempDir(dir);
  });

  /** n registered machines with a fresh tag, and a release for them. */
  async function fleet(n: number) {
    const tag = `f${++fleetNo}`;
    const agents: SimAgent[] = [];
    for (let i = 0; i < n; i++) {
      const id = `${tag}-m${String(i).padStart(2, "0")}`;
      const a = new SimAgent(id, storePath(`sys-${id}`, 1), [tag, "web"], h);
      await a.register();
      agents.push(a);
    }
    const { release } = await h.fleet("deploy").createRelease({
      entries: agents.map((a) => ({ hostname: a.id, storePath: storePath(`sys-${a.id}`, 2) })),
      cacheUrl: "https://cache.example.org",
    });
    return { tag, agents, release: release!, target: (a: SimAgent) => storePath(`sys-${a.id}`, 2) };
  }

  const get = async (id: string) => (await h.fleet("readonly").getRollout({ rolloutId: id })).rollout!;
  const until = (id: string, what: string, pred: (r: Rollout) => boolean) =>
    waitFor(what, async () => {
      const r = await get(id);
      return pred(r) ? r : null;
    });
  const status = (id: string, s: RolloutStatus) =>
    until(id, `rollout ${RolloutStatus[s]}`, (r) => r.status === s);
  const batchStatus = (id: string, i: number, s: BatchStatus) =>
    until(id, `batch ${i} ${BatchStatus[s]}`, (r) => r.batches[i]?.status === s);

  it("staged batches complete in order; later batches get nothing until earlier ones pass", async () => {
    const f = await fleet(5);
    const { rollout } = await h.fleet("deploy").createRollout({
      releaseId: f.release.id,
      target: { tags: [f.tag] },
      strategy: RolloutStrategy.STAGED,
      batchSizes: ["1", "2", "100%"],
      healthTimeoutSeconds: 120,
    });
    const r = rollout!;
    assert.deepEqual(
      r.batches.map((b) => b.machines.length),
      [1, 2, 2],
    );
    assert.equal(
      r.batches[0]!.status,
      BatchStatus.DEPLOYING,
      "the first batch starts before CreateRollout answers",
    );
    const order: string[][] = r.batches.map((b) => b.machines.map((m) => m.machineId));
    const byId = new Map(f.agents.map((a) => [a.id, a]));
    for (const [i, ids] of order.entries()) {
      // Machines of later batches have nothing assigned yet, but already poll faster.
      for (const later of order.slice(i + 1).flat()) {
        const d = await byId.get(later)!.desired();
        assert.equal(d.generation, undefined, `${later} must wait for batch ${i}`);
        assert.equal(d.pollHintSeconds, 5);
      }
      await batchStatus(r.id, i, BatchStatus.DEPLOYING);
      for (const id of ids) {
        const a = byId.get(id)!;
        assert.equal(await a.desiredPath(), f.target(a));
        await a.deploy();
      }
      await batchStatus(r.id, i, BatchStatus.SUCCEEDED);
    }
    const done = await status(r.id, RolloutStatus.COMPLETED);
    assert.ok(
      done.batches.every(
        (b) =>
          b.healthy === b.machines.length && b.machines.every((m) => m.state === MachineGateState.HEALTHY),
      ),
    );
    const fleetStatus = await h.fleet("readonly").getFleetStatus({ tags: [f.tag] });
    assert.equal(fleetStatus.inSync, 5);
    // The rollout is over: no more poll hint.
    assert.equal((await f.agents[0]!.desired()).pollHintSeconds, undefined);
    const events = (await h.fleet("readonly").getRollout({ rolloutId: r.id })).events.map(
      (e) => RolloutEventType[e.type],
    );
    assert.deepEqual(
      events.filter((e) => e !== "MACHINE_HEALTHY"),
      [
        "CREATED",
        "BATCH_STARTED",
        "BATCH_SUCCEEDED",
        "BATCH_STARTED",
        "BATCH_SUCCEEDED",
        "BATCH_STARTED",
        "BATCH_SUCCEEDED",
        "COMPLETED",
      ],
    );
  });

  it("canary: one machine first, then all the rest", async () => {
    const f = await fleet(4);
    const { rollout } = await h.fleet("deploy").createRollout({
      releaseId: f.release.id,
      target: { tags: [f.tag] },
      strategy: RolloutStrategy.CANARY,
    });
    const r = rollout!;
    assert.deepEqual(
      r.batches.map((b) => b.machines.length),
      [1, 3],
    );
    const canary = f.agents.find((a) => a.id === r.batches[0]!.machines[0]!.machineId)!;
    assert.equal(canary.id, f.agents[0]!.id, "tag targets are ordered by id");
    await canary.deploy();
    await batchStatus(r.id, 1, BatchStatus.DEPLOYING);
    for (const a of f.agents.slice(1)) await a.deploy();
    await status(r.id, RolloutStatus.COMPLETED);
  });

  it("staged percentages are taken of the machines not yet in a batch", async () => {
    const f = await fleet(10);
    const { rollout } = await h.fleet("deploy").createRollout({
      releaseId: f.release.id,
      target: { tags: [f.tag] },
      strategy: RolloutStrategy.STAGED,
      batchSizes: ["10%", "50%", "100%"],
    });
    assert.deepEqual(
      rollout!.batches.map((b) => b.machines.length),
      [1, 5, 4],
    );
    await h.fleet("deploy").cancelRollout({ rolloutId: rollout!.id });
  });

  it("threshold 30%: a batch of 10 passes with 3 unhealthy and pauses at 4", async () => {
    for (const unhealthy of [3, 4]) {
      const f = await fleet(10);
      const { rollout } = await h.fleet("deploy").createRollout({
        releaseId: f.release.id,
        target: { tags: [f.tag] },
        strategy: RolloutStrategy.ALL_AT_ONCE,
        failureThreshold: "30%",
      });
      const r = rollout!;
      for (const a of f.agents.slice(0, 10 - unhealthy)) await a.deploy();
      for (const a of f.agents.slice(10 - unhealthy)) await a.rollBack();
      if (unhealthy === 3) {
        await status(r.id, RolloutStatus.COMPLETED);
      } else {
        const paused = await status(r.id, RolloutStatus.PAUSED);
        assert.equal(paused.batches[0]!.status, BatchStatus.FAILED);
        assert.equal(paused.batches[0]!.unhealthy, 4);
        assert.match(paused.statusReason, /6 healthy, 4 unhealthy, threshold allows 3: .*ROLLED_BACK/);
        await h.fleet("deploy").cancelRollout({ rolloutId: r.id });
      }
    }
  });

  it("health_timeout fails a machine that never reports", async () => {
    const f = await fleet(2);
    const { rollout } = await h.fleet("deploy").createRollout({
      releaseId: f.release.id,
      target: { tags: [f.tag] },
      strategy: RolloutStrategy.ALL_AT_ONCE,
      healthTimeoutSeconds: 300,
    });
    await f.agents[0]!.deploy();
    // The timeout passes by the control plane's clock once the healthy machine is counted, so a
    // slow machine cannot time out the one that did report.
    await waitFor(
      "the reporting machine healthy",
      async () => {
        const r = (await h.fleet("readonly").getRollout({ rolloutId: rollout!.id })).rollout!;
        return (
          r.batches[0]!.machines.find((m) => m.machineId === f.agents[0]!.id)?.state ===
          MachineGateState.HEALTHY
        );
      },
      60_000,
    );
    ahead += 301_000;
    const paused = await status(rollout!.id, RolloutStatus.PAUSED);
    const silent = paused.batches[0]!.machines.find((m) => m.machineId === f.agents[1]!.id)!;
    assert.equal(silent.state, MachineGateState.UNHEALTHY);
    assert.match(
      silent.reason,
      /no passing health report on the target generation within the 300s health timeout/,
    );
    const good = paused.batches[0]!.machines.find((m) => m.machineId === f.agents[0]!.id)!;
    assert.equal(good.state, MachineGateState.HEALTHY);
    await h.fleet("deploy").cancelRollout({ rolloutId: rollout!.id });
  });

  it("a health report from the old generation never passes a batch", async () => {
    const f = await fleet(1);
    const [a] = f.agents as [SimAgent];
    const { rollout } = await h.fleet("deploy").createRollout({
      releaseId: f.release.id,
      target: { tags: [f.tag] },
      strategy: RolloutStrategy.ALL_AT_ONCE,
      healthTimeoutSeconds: 2,
    });
    // Still on the old generation: a passing periodic health report for it…
    await a.health(true);
    // …and even a (lying) report claiming the target with health bound to the old one.
    await a.client.report({
      machineId: a.id,
      currentGeneration: f.target(a),
      outcome: 3,
      desiredGeneration: f.target(a),
    });
    await a.health(true, { generation: storePath(`sys-${a.id}`, 1) });
    const paused = await status(rollout!.id, RolloutStatus.PAUSED);
    assert.match(paused.batches[0]!.machines[0]!.reason, /health timeout/);
    const events = (await h.fleet("readonly").getRollout({ rolloutId: rollout!.id })).events;
    assert.ok(!events.some((e) => e.type === RolloutEventType.MACHINE_HEALTHY), "never healthy");
    await h.fleet("deploy").cancelRollout({ rolloutId: rollout!.id });
  });

  it("pause on failure, resume: the batch is deployed again with a new revision and stale reports don't re-fail it", async () => {
    const f = await fleet(2);
    const [a, b] = f.agents as [SimAgent, SimAgent];
    const { rollout } = await h.fleet("deploy").createRollout({
      releaseId: f.release.id,
      target: { hosts: [a.id, b.id] },
      strategy: RolloutStrategy.ALL_AT_ONCE,
      onFailure: OnFailure.PAUSE,
    });
    const firstRevision = (await b.desired()).generation!.revision;
    await a.deploy();
    await b.rollBack("nginx did not start");
    const paused = await status(rollout!.id, RolloutStatus.PAUSED);
    assert.match(paused.statusReason, /batch 1 failed its health gate: .*nginx did not start/);
    // Paused machines still get the poll hint (the rollout is active) and keep their assignment.
    assert.equal((await b.desired()).pollHintSeconds, 5);

    const resumed = await h.fleet("deploy").resumeRollout({ rolloutId: rollout!.id });
    // The resume already evaluated the batch once: the stale ROLLED_BACK did not fail it.
    assert.equal(resumed.rollout?.status, RolloutStatus.RUNNING);
    assert.equal(resumed.rollout!.batches[0]!.status, BatchStatus.DEPLOYING);
    const secondRevision = (await b.desired()).generation!.revision;
    assert.ok(
      secondRevision > firstRevision,
      "the agent may retry a quarantined path only on a newer revision",
    );
    // A report the agent decided about the old assignment, arriving after the resume (e.g.
    // QUARANTINED from a check that raced the resume), is about a stale revision: no verdict.
    await b.client.report({
      machineId: b.id,
      currentGeneration: b.current,
      desiredGeneration: f.release.entries.find((e) => e.hostname === b.id)!.storePath,
      desiredRevision: firstRevision,
      outcome: Outcome.QUARANTINED,
      success: false,
      message: "failed here before",
    });
    // Another report from an unrelated machine in the batch triggers evaluation again: still running.
    await a.health(true);
    await waitFor(
      "a re-evaluated",
      async () =>
        (await get(rollout!.id)).batches[0]!.machines.find((m) => m.machineId === a.id)?.state ===
        MachineGateState.HEALTHY,
    );
    assert.equal((await get(rollout!.id)).status, RolloutStatus.RUNNING);
    await b.deploy();
    await status(rollout!.id, RolloutStatus.COMPLETED);
  });

  it("REVERT restores every touched machine, the failed batch included, and clears those that had nothing", async () => {
    const f = await fleet(3);
    const [a, b, c] = f.agents as [SimAgent, SimAgent, SimAgent];
    const g1 = storePath(`sys-${a.id}`, 1);
    await h
      .fleet("deploy")
      .setDesiredGeneration({ machineId: a.id, storePath: g1, cacheUrl: "https://old-cache.example.org" });
    const before = (await a.desired()).generation!;
    const { rollout } = await h.fleet("deploy").createRollout({
      releaseId: f.release.id,
      target: { hosts: [a.id, b.id, c.id] },
      strategy: RolloutStrategy.STAGED,
      batchSizes: ["1", "1", "1"],
      onFailure: OnFailure.REVERT,
    });
    await a.deploy();
    await batchStatus(rollout!.id, 1, BatchStatus.DEPLOYING);
    assert.equal(await b.desiredPath(), f.target(b));
    await b.rollBack();
    const failed = await status(rollout!.id, RolloutStatus.FAILED);
    assert.deepEqual(
      failed.batches.map((x) => BatchStatus[x.status]),
      ["SUCCEEDED", "FAILED", "CANCELLED"],
    );
    // a: back to what it had before, with its cache URL, under a new revision.
    const back = (await a.desired()).generation!;
    assert.equal(back.hash, g1);
    assert.equal(back.cacheUrl, "https://old-cache.example.org");
    assert.ok(back.revision > before.revision);
    // b (the failed batch): had nothing before, so its assignment is cleared.
    assert.equal((await b.desired()).generation, undefined);
    // c never started.
    assert.equal((await c.desired()).generation, undefined);
    const events = (await h.fleet("readonly").getRollout({ rolloutId: rollout!.id })).events;
    const reverted = events.find((e) => e.type === RolloutEventType.REVERTED);
    assert.match(
      reverted!.message,
      /restored the previous desired generation of 1 machine, cleared 1 that had none/,
    );
    assert.equal(events.at(-1)!.type, RolloutEventType.FAILED);
  });

  it("cancel keeps assignments; cancel with revert restores them", async () => {
    const f = await fleet(2);
    const [a, b] = f.agents as [SimAgent, SimAgent];
    const one = await h.fleet("deploy").createRollout({
      releaseId: f.release.id,
      target: { hosts: [a.id] },
      strategy: RolloutStrategy.ALL_AT_ONCE,
    });
    const cancelled = await h.fleet("deploy").cancelRollout({ rolloutId: one.rollout!.id });
    assert.equal(cancelled.rollout?.status, RolloutStatus.CANCELLED);
    assert.equal(cancelled.rollout!.batches[0]!.status, BatchStatus.CANCELLED);
    assert.equal(await a.desiredPath(), f.target(a), "a plain cancel leaves the assignment");
    const two = await h.fleet("deploy").createRollout({
      releaseId: f.release.id,
      target: { hosts: [b.id] },
      strategy: RolloutStrategy.ALL_AT_ONCE,
    });
    await h.fleet("deploy").cancelRollout({ rolloutId: two.rollout!.id, revert: true });
    assert.equal(await b.desiredPath(), undefined, "revert clears what the rollout set");
    const got = await h.fleet("readonly").getRollout({ rolloutId: two.rollout!.id });
    assert.deepEqual(
      got.events.slice(-2).map((e) => RolloutEventType[e.type]),
      ["REVERTED", "CANCELLED"],
    );
  });

  it("soak: healthy only after passing for the whole soak period", async () => {
    const f = await fleet(1);
    const [a] = f.agents as [SimAgent];
    const { rollout } = await h.fleet("deploy").createRollout({
      releaseId: f.release.id,
      target: { tags: [f.tag] },
      strategy: RolloutStrategy.ALL_AT_ONCE,
      soakSeconds: 1,
    });
    await a.deploy();
    const soaking = await until(
      rollout!.id,
      "soaking",
      (r) => /soaking/.test(r.batches[0]!.machines[0]!.reason) || r.status === RolloutStatus.COMPLETED,
    );
    if (soaking.status !== RolloutStatus.COMPLETED)
      assert.equal(soaking.batches[0]!.machines[0]!.state, MachineGateState.PENDING);
    await status(rollout!.id, RolloutStatus.COMPLETED);
  });

  it("WatchRollout streams a snapshot, then each event, and ends with the rollout", async () => {
    const f = await fleet(2);
    const { rollout } = await h.fleet("deploy").createRollout({
      releaseId: f.release.id,
      target: { tags: [f.tag] },
      strategy: RolloutStrategy.CANARY,
    });
    const seen: string[] = [];
    let snapshot: Rollout | undefined;
    let last: Rollout | undefined;
    const watching = (async () => {
      for await (const msg of h.fleet("readonly").watchRollout({ rolloutId: rollout!.id })) {
        if (!msg.event) snapshot = msg.rollout;
        else seen.push(RolloutEventType[msg.event.type]);
        last = msg.rollout;
      }
    })();
    await waitFor("snapshot", () => snapshot);
    for (const a of f.agents) {
      await waitFor(`${a.id} assigned`, async () => (await a.desiredPath()) === f.target(a));
      await a.deploy();
    }
    await watching;
    assert.equal(last?.status, RolloutStatus.COMPLETED);
    assert.deepEqual(
      seen.filter((e) => e !== "MACHINE_HEALTHY"),
      ["BATCH_SUCCEEDED", "BATCH_STARTED", "BATCH_SUCCEEDED", "COMPLETED"],
    );
  });
});
