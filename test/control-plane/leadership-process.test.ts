/**
 * Three real `nixfleet-control-plane serve` processes on one PostgreSQL database: the executor
 * leader is SIGKILLed while a batch is deploying; another replica takes over once the lease runs
 * out and finishes the rollout, each batch started exactly once. Then the new leader is frozen
 * (SIGSTOP) past its lease: the last replica takes over, and the woken one steps down.
 *
 * The lease is 5 s, not 1 s: on a loaded machine a 1 s lease's renewal can come back late, and a
 * leader stepping down and renewing again (same epoch) — or another replica taking over — would
 * be correct behaviour the assertions below would mistake for a failure. Epochs are compared as
 * sets for the same reason: a term may be re-entered at its own epoch, never at another.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { generateSecret, hashSecret, newKeyId } from "../../src/control-plane/auth/api-keys.js";
import { PostgresFleetStore } from "../../src/control-plane/store/postgres-store.js";
import {
  BatchStatus,
  RolloutEventType,
  RolloutStatus,
  RolloutStrategy,
} from "../../src/gen/nixfleet/v1/fleet_pb.js";
import { createPki } from "../fixtures/pki.js";
import { postgresUnavailable, sharedPostgres } from "../fixtures/postgres.js";
import { makeTempDir, removeTempDir } from "../fixtures/tmp.js";
import { Clients, type Harness } from "./harness.js";
import { storePath, waitFor } from "./helpers.js";
import { type CpProcess, startCp, tlsArgs } from "./process.js";
import { SimAgent } from "./sim-agent.js";

const LEASE_S = 5;

describe("executor leadership across processes (PostgreSQL)", { skip: postgresUnavailable() }, () => {
  const dir = makeTempDir();
  const procs: CpProcess[] = [];
  const clients: Clients[] = [];
  after(async () => {
    for (const c of clients) await c.close();
    for (const p of procs) await p.stop("SIGKILL");
    removeTempDir(dir);
  });

  /** The epochs this process led with, each once, in order. */
  const becameLeader = (p: CpProcess) => [
    ...new Set(
      p
        .logs()
        .map((l) => /^became executor leader \(epoch (\d+)\)$/.exec(String(l["msg"]))?.[1])
        .filter((e) => e !== undefined)
        .map(Number),
    ),
  ];

  it("SIGKILL of the leader mid-batch: another replica takes over and finishes, no batch started twice", async () => {
    const pki = createPki(join(dir, "pki"));
    const url = await (await sharedPostgres()).database();
    const args = [
      "--listen",
      "127.0.0.1:0",
      "--database-url",
      url,
      ...tlsArgs(pki),
      "--executor-tick",
      "0.2",
      "--executor-lease",
      String(LEASE_S),
    ];
    // One after another: the first finds the lease free and leads by the time it says "listening".
    for (let i = 0; i < 3; i++) procs.push(await startCp(args, { timeoutMs: 120_000 }));
    const [a, b, c] = procs as [CpProcess, CpProcess, CpProcess];
    assert.deepEqual(becameLeader(a), [1]);
    assert.deepEqual([becameLeader(b), becameLeader(c)], [[], []]);

    const { store } = await PostgresFleetStore.open({ url, poolSize: 1 });
    const secret = generateSecret();
    await store.createApiKey(
      { id: newKeyId(), name: "t", role: "admin", hash: hashSecret(secret) },
      "local:test",
      Date.now(),
    );
    await store.close();
    const [cb, cc] = [new Clients(b.url, pki), new Clients(c.url, pki)];
    clients.push(cb, cc);
    // Agents talk to b, the operator to c: neither leads.
    const agents: SimAgent[] = [];
    for (let i = 0; i < 3; i++) {
      const agent = new SimAgent(
        `kill-m${i}`,
        storePath(`kill-m${i}`, 1),
        ["kill"],
        cb as unknown as Harness,
      );
      await agent.register();
      agents.push(agent);
    }
    const fleet = cc.fleet(secret);
    const { release } = await fleet.createRelease({
      entries: agents.map((x) => ({ hostname: x.id, storePath: storePath(x.id, 2) })),
    });
    const { rollout } = await fleet.createRollout({
      releaseId: release!.id,
      target: { tags: ["kill"] },
      strategy: RolloutStrategy.CANARY,
      healthTimeoutSeconds: 300,
    });
    const rolloutId = rollout!.id;
    const get = async () => await fleet.getRollout({ rolloutId });
    await waitFor(
      "the leader to start batch 0",
      async () => (await get()).rollout!.batches[0]!.status === BatchStatus.DEPLOYING,
      60_000,
    );

    // The leader dies mid-batch, its lease still held.
    const killedAt = Date.now();
    await a.stop("SIGKILL");
    const successor = await waitFor(
      "another replica to lead",
      () => [b, c].find((p) => becameLeader(p).length > 0),
      120_000,
    );
    const takeoverMs = Date.now() - killedAt;
    assert.deepEqual(becameLeader(successor), [2]);
    assert.deepEqual(becameLeader(successor === b ? c : b), [], "exactly one successor");
    console.log(`takeover after SIGKILL: ${takeoverMs} ms (lease ${LEASE_S} s)`);

    const first = rollout!.batches[0]!.machines[0]!.machineId;
    const byId = new Map(agents.map((x) => [x.id, x]));
    await byId.get(first)!.deploy();
    await waitFor(
      "batch 1 deploying",
      async () => (await get()).rollout!.batches[1]!.status === BatchStatus.DEPLOYING,
      60_000,
    );
    for (const x of agents.filter((x) => x.id !== first)) await x.deploy();
    const done = await waitFor(
      "the rollout completed",
      async () => {
        const r = await get();
        return r.rollout!.status === RolloutStatus.COMPLETED ? r : null;
      },
      60_000,
    );
    assert.deepEqual(
      done.events.filter((e) => e.type === RolloutEventType.BATCH_STARTED).map((e) => e.batchIndex),
      [0, 1],
      "each batch started once: the successor continued batch 0, it did not start it again",
    );
    const audit = await fleet.listAuditEvents({ action: "rollout.batch_start", target: rolloutId });
    assert.equal(audit.events.length, 2);

    // The new leader freezes (SIGSTOP: a GC pause, a suspended VM) past its lease: the last
    // replica takes over; the frozen one, woken, steps down instead of carrying on.
    const last = successor === b ? c : b;
    successor.proc.kill("SIGSTOP");
    try {
      await waitFor("the last replica to lead", () => becameLeader(last).length > 0, 120_000);
    } finally {
      successor.proc.kill("SIGCONT");
    }
    assert.deepEqual(becameLeader(last), [3]);
    // Its last word on leadership is that it lost it (it may have said so before the freeze too).
    await waitFor(
      "the woken replica to step down",
      () =>
        successor
          .logs()
          .map((l) => String(l["msg"]))
          .filter((m) => /^(became|lost) executor leader/.test(m))
          .at(-1)
          ?.startsWith("lost executor leadership"),
      60_000,
    );
    assert.deepEqual(becameLeader(successor), [2], "it did not lead again");
  });
});
