/**
 * The executor lease and fencing in the store, against both backends: claims follow the
 * decisions of leader/lease.ts on the database's row; an executor write carrying a superseded
 * epoch is refused and writes nothing; operator writes are not fenced.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { KyselyFleetStore } from "../../src/control-plane/store/kysely-store.js";
import { claimLease, StaleEpochError } from "../../src/control-plane/store/lease.js";
import { Outcome } from "../../src/gen/nixfleet/v1/types_pb.js";
import { storePath } from "./helpers.js";
import { BACKENDS, count } from "./store-backends.js";

/** Takes the lease away from its holder, as a replica that acquired it after a pause would. */
async function stealLease(store: KyselyFleetStore, holder: string) {
  await store.kysely
    .withTables<{ executor_lease: { id: number; holder: string; epoch: number; expires_at: number } }>()
    .updateTable("executor_lease")
    .set((eb) => ({ holder, epoch: eb("epoch", "+", 1), expires_at: Date.now() + 60_000 }))
    .where("id", "=", 1)
    .execute();
}

async function oneMachineRollout(store: KyselyFleetStore, id: string) {
  await store.recordReport(
    {
      machineId: id,
      currentGeneration: storePath(id, 0),
      desiredGeneration: "",
      desiredRevision: 0,
      outcome: Outcome.UP_TO_DATE,
      success: true,
      message: "",
      deploymentId: "",
      tags: ["web"],
      agentVersion: "1.0",
      uptimeSeconds: 5,
      agentTime: null,
    },
    1,
  );
  await store.createRelease(
    {
      id: `rel-${id}`,
      entries: [{ hostname: id, storePath: storePath(id, 2), platform: "x86_64-linux", tags: [] }],
      cacheUrl: "",
      flakeRef: "",
      flakeRev: "",
    },
    "apikey:ci",
    2,
  );
  await store.createRollout(
    {
      id: `r-${id}`,
      releaseId: `rel-${id}`,
      targetTags: [],
      targetHosts: [id],
      strategy: "all_at_once",
      batchSizes: ["100%"],
      failureThreshold: "0",
      onFailure: "pause",
      healthTimeoutSeconds: 300,
      soakSeconds: 0,
      cacheUrl: "",
      batches: [[{ machineId: id, targetGeneration: storePath(id, 2) }]],
      note: "",
    },
    "apikey:ci",
    3,
  );
  return `r-${id}`;
}

/** Why a PostgreSQL-only case is skipped on SQLite (printed by the runner); false elsewhere. */
function postgresOnly(backend: string): string | false {
  return (
    backend === "sqlite" &&
    "PostgreSQL only: a SQLite database has one control-plane process, nothing to race"
  );
}

for (const backend of BACKENDS) {
  const fresh = async (t: { after(fn: () => void | Promise<void>): void }) =>
    backend.open(t, await backend.location(t));

  describe(`executor lease (${backend.name})`, { skip: backend.skip }, () => {
    it("the first claim acquires epoch 1; renewing keeps it; another replica follows until it expires", async (t) => {
      const store = await fresh(t);
      assert.deepEqual(await store.executorLease(), { holder: "", epoch: 0, expiresAt: 0 });
      const a = await store.claimExecutorLease("a", 60_000, Date.now());
      assert.equal(a.kind, "acquire");
      assert.equal(a.row.epoch, 1);
      assert.equal((await store.claimExecutorLease("a", 60_000, Date.now())).kind, "renew");
      const b = await store.claimExecutorLease("b", 60_000, Date.now());
      assert.deepEqual([b.kind, b.row.holder, b.row.epoch], ["follow", "a", 1]);
      assert.equal((await store.executorLease()).holder, "a", "following writes nothing");
      // A lease of 1 ms has expired by the next claim: b takes over with the next epoch.
      await store.claimExecutorLease("a", 1, Date.now());
      await new Promise((r) => setTimeout(r, 5));
      const taken = await store.claimExecutorLease("b", 60_000, Date.now());
      assert.deepEqual([taken.kind, taken.row.holder, taken.row.epoch], ["acquire", "b", 2]);
    });

    it("a lease given back is taken at once; giving back a lease no longer ours changes nothing", async (t) => {
      const store = await fresh(t);
      await store.claimExecutorLease("a", 60_000, Date.now());
      assert.equal(await store.releaseExecutorLease("a", 1, Date.now()), true);
      const b = await store.claimExecutorLease("b", 60_000, Date.now());
      assert.deepEqual([b.kind, b.row.epoch], ["acquire", 2]);
      assert.equal(await store.releaseExecutorLease("a", 1, Date.now()), false);
      assert.equal((await store.claimExecutorLease("c", 60_000, Date.now())).kind, "follow");
    });

    // Several replicas exist only on PostgreSQL (a SQLite file belongs to one process).
    it("replicas claiming at once: exactly one acquires", { skip: postgresOnly(backend.name) }, async (t) => {
      const location = await backend.location(t);
      const stores = [
        await backend.open(t, location),
        await backend.open(t, location),
        await backend.open(t, location),
      ];
      const claims = await Promise.all(
        stores.flatMap((s, i) => [0, 1].map(() => s.claimExecutorLease(`replica-${i}`, 60_000, Date.now()))),
      );
      const acquired = claims.filter((c) => c.kind === "acquire");
      assert.equal(acquired.length, 1, JSON.stringify(claims));
      assert.equal((await stores[0]!.executorLease()).epoch, 1);
    });

    it("a replica frozen inside a lease transaction is cut off by the server, so the takeover is not blocked until it wakes", {
      skip: postgresOnly(backend.name),
    }, async (t) => {
      const location = await backend.location(t);
      const [frozen, other] = [await backend.open(t, location), await backend.open(t, location)];
      let frozenEnded = false;
      let thaw = () => {};
      // A claim of a 100 ms lease whose process then stops, its transaction open, holding the row.
      const stuck = frozen.kysely
        .transaction()
        .execute(async (trx) => {
          await claimLease({ q: trx, kind: "postgres" }, "frozen", 100, Date.now());
          await new Promise<void>((resolve) => {
            thaw = resolve;
            setTimeout(resolve, 60_000).unref();
          });
          await trx.selectFrom("machines").select("id").execute();
        })
        .then(
          () => "committed",
          (err: Error) => err.message,
        )
        .finally(() => {
          frozenEnded = true;
        });
      await new Promise((r) => setTimeout(r, 200));
      const taken = await other.claimExecutorLease("other", 60_000, Date.now());
      assert.equal(frozenEnded, false, "the frozen process has not woken up");
      assert.deepEqual([taken.kind, taken.row.holder], ["acquire", "other"]);
      thaw();
      assert.match(await stuck, /terminat|connection/i, "its transaction was ended, not committed");
    });

    it("a deposed leader's startBatch is refused and writes nothing", async (t) => {
      const store = await fresh(t);
      const rollout = await oneMachineRollout(store, "m1");
      const { row } = await store.claimExecutorLease("a", 60_000, Date.now());
      const before = {
        desired: await count(store, "desired_generations"),
        events: await count(store, "rollout_events"),
        audit: await count(store, "audit_events"),
      };
      await stealLease(store, "b");
      await assert.rejects(
        store.startBatch(rollout, 0, 10, row.epoch),
        (e: Error) =>
          e instanceof StaleEpochError &&
          e.epoch === 1 &&
          e.current.epoch === 2 &&
          /no longer the leader/.test(e.message),
      );
      assert.deepEqual(
        {
          desired: await count(store, "desired_generations"),
          events: await count(store, "rollout_events"),
          audit: await count(store, "audit_events"),
        },
        before,
      );
      const r = (await store.getRollout(rollout))!;
      assert.equal(r.batches[0]!.status, "pending");
      assert.equal(r.batches[0]!.startedSeq, null);
      // The leader of the current epoch may.
      assert.ok(await store.startBatch(rollout, 0, 11, 2));
    });

    it("a deposed leader's recordGate and finishBatch are refused and write nothing", async (t) => {
      const store = await fresh(t);
      const rollout = await oneMachineRollout(store, "m1");
      const { row } = await store.claimExecutorLease("a", 60_000, Date.now());
      const started = (await store.startBatch(rollout, 0, 10, row.epoch))!;
      const seq = started.rollout.batches[0]!.startedSeq!;
      const events = await count(store, "rollout_events");
      await stealLease(store, "b");
      await assert.rejects(
        store.recordGate(
          rollout,
          0,
          seq,
          [{ machineId: "m1", state: "healthy", reason: "ok" }],
          11,
          row.epoch,
        ),
        StaleEpochError,
      );
      await assert.rejects(
        store.finishBatch(rollout, 0, seq, { passed: true, message: "ok" }, 12, row.epoch),
        StaleEpochError,
      );
      const r = (await store.getRollout(rollout))!;
      assert.equal(r.status, "running");
      assert.equal(r.batches[0]!.status, "deploying");
      assert.equal(r.batches[0]!.machines[0]!.gateState, "pending");
      assert.equal(await count(store, "rollout_events"), events);
    });

    it("operator writes (pause, resume, cancel) are not fenced; unfenced executor writes (sole SQLite process) pass", async (t) => {
      const store = await fresh(t);
      const rollout = await oneMachineRollout(store, "m1");
      await store.claimExecutorLease("a", 60_000, Date.now());
      await stealLease(store, "b");
      await store.pauseRollout(rollout, "ops", "apikey:ops", 10);
      await store.resumeRollout(rollout, "apikey:ops", 11);
      assert.ok(await store.startBatch(rollout, 0, 12, null));
      await store.endRollout(
        rollout,
        {
          status: "cancelled",
          revert: false,
          reason: "ops",
          actor: "apikey:ops",
          from: ["running", "paused"],
        },
        13,
      );
      assert.equal((await store.getRollout(rollout))!.status, "cancelled");
    });
  });
}
