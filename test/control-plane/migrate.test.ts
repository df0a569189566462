/**
 * `nixfleet-control-plane migrate --from sqlite:… --to postgres://…`: everything is copied, a
 * control plane on the copy continues where the SQLite one stopped (a running rollout, revisions,
 * the evidence sequence, ids), and a non-empty target is refused.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { describe, it } from "node:test";
import { PostgresFleetStore } from "../../src/control-plane/store/postgres-store.js";
import { SqliteFleetStore } from "../../src/control-plane/store/sqlite-store.js";
import { Outcome } from "../../src/gen/nixfleet/v1/types_pb.js";
import { postgresUnavailable, sharedPostgres } from "../fixtures/postgres.js";
import { tempDir } from "../fixtures/tmp.js";
import { storePath } from "./helpers.js";
import { runCli } from "./process.js";

const report = (machineId: string, at: number, outcome = Outcome.UP_TO_DATE) => ({
  machineId,
  currentGeneration: storePath(machineId, 1),
  desiredGeneration: "",
  desiredRevision: 0,
  outcome,
  success: true,
  message: "",
  deploymentId: "",
  tags: ["web"],
  agentVersion: "1.0",
  uptimeSeconds: at,
  agentTime: null,
});

async function sqliteFleet(path: string) {
  const { store } = await SqliteFleetStore.open({ path });
  for (const [i, id] of ["a", "b"].entries()) await store.recordReport(report(id, 10 + i), 10 + i);
  await store.createRelease(
    {
      id: "rel-1",
      entries: ["a", "b"].map((h) => ({
        hostname: h,
        storePath: storePath(h, 2),
        platform: "x86_64-linux",
        tags: ["web"],
      })),
      cacheUrl: "https://cache.example.org",
      flakeRef: "github:o/r",
      flakeRev: "abc",
    },
    "apikey:ci",
    20,
  );
  await store.createRollout(
    {
      id: "r-1",
      releaseId: "rel-1",
      targetTags: ["web"],
      targetHosts: [],
      strategy: "canary",
      batchSizes: ["1", "100%"],
      failureThreshold: "0",
      onFailure: "revert",
      healthTimeoutSeconds: 300,
      soakSeconds: 0,
      cacheUrl: "https://cache.example.org",
      batches: [
        [{ machineId: "a", targetGeneration: storePath("a", 2) }],
        [{ machineId: "b", targetGeneration: storePath("b", 2) }],
      ],
      note: "",
    },
    "apikey:ci",
    30,
  );
  const started = (await store.startBatch("r-1", 0, 40))!;
  await store.createApiKey({ id: "key-1", name: "ops", role: "admin", hash: "h1" }, "local:root", 50);
  return { store, started };
}

describe("migrate SQLite → PostgreSQL", { skip: postgresUnavailable() }, () => {
  it("copies everything; the copy continues the rollout, revisions, sequence and ids", async (t) => {
    const file = join(tempDir(t), "state.db");
    const { store: old, started } = await sqliteFleet(file);
    const before = {
      machines: await old.getMachines(["a", "b"]),
      rollout: await old.getRollout("r-1"),
      events: await old.rolloutEvents("r-1", 0, 100),
      audit: await old.listAudit({
        actor: null,
        action: null,
        target: null,
        since: null,
        beforeId: null,
        limit: 1000,
      }),
      keys: await old.listApiKeys(true),
      release: await old.getRelease("rel-1"),
      reports: await old.machineReports("a", 10),
    };
    await old.close();
    const url = await (await sharedPostgres()).database();
    const r = await runCli(["migrate", "--from", `sqlite:${file}`, "--to", url]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^copied \d+ rows from .*state\.db to postgres:\/\//);
    assert.match(r.stderr, /rollout_events: 2 rows/);

    const { store } = await PostgresFleetStore.open({ url });
    t.after(() => store.close());
    assert.deepEqual(await store.getMachines(["a", "b"]), before.machines);
    assert.deepEqual(await store.getRollout("r-1"), before.rollout);
    assert.deepEqual(await store.rolloutEvents("r-1", 0, 100), before.events);
    assert.deepEqual(
      await store.listAudit({
        actor: null,
        action: null,
        target: null,
        since: null,
        beforeId: null,
        limit: 1000,
      }),
      before.audit,
    );
    assert.deepEqual(await store.listApiKeys(true), before.keys);
    assert.equal((await store.authenticateApiKey("h1", 60))?.name, "ops");
    assert.deepEqual(await store.getRelease("rel-1"), before.release);
    assert.deepEqual(await store.machineReports("a", 10), before.reports);

    // The rollout continues: a report after the copy counts for the batch started before it,
    // new ids follow the copied ones, and the next assignment's revision is newer.
    await store.recordReport(
      { ...report("a", 70, Outcome.ROLLED_BACK), desiredGeneration: storePath("a", 2) },
      70,
    );
    const [evidence] = await store.gateEvidence("r-1", 0);
    assert.equal(evidence?.latestOutcome?.outcome, Outcome.ROLLED_BACK);
    assert.ok(evidence!.latestOutcome!.seq > started.rollout.batches[0]!.startedSeq!);
    const failed = (await store.finishBatch(
      "r-1",
      0,
      started.rollout.batches[0]!.startedSeq!,
      { passed: false, message: "a failed" },
      80,
    ))!;
    assert.equal(failed.rollout.status, "failed");
    assert.ok(failed.events[0]!.id > before.events.at(-1)!.id);
    const reverted = failed.changes.find((c) => c.machineId === "a");
    assert.equal(reverted?.desired, null, "a had nothing assigned before the rollout");
    const assigned = (
      await store.setDesired({ machineId: "b", storePath: storePath("b", 3), cacheUrl: "" }, "x", 90)
    ).change;
    assert.ok(assigned.desired!.revision > started.changes[0]!.desired!.revision);
  });

  it("refuses a target that is not empty, and a source that does not exist", async (t) => {
    const file = join(tempDir(t), "state.db");
    (await sqliteFleet(file)).store.close();
    const url = await (await sharedPostgres()).database();
    assert.equal((await runCli(["migrate", "--from", `sqlite:${file}`, "--to", url])).code, 0);
    const again = await runCli(["migrate", "--from", `sqlite:${file}`, "--to", url]);
    assert.equal(again.code, 1);
    assert.match(again.stderr, /target database is not empty \(machines has 2 rows\)/);
    const missing = await runCli(["migrate", "--from", `sqlite:${join(tempDir(t), "nope.db")}`, "--to", url]);
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /--from: no database file at/);
    const noScheme = await runCli(["migrate", "--from", file, "--to", url]);
    assert.match(noScheme.stderr, /--from: expected sqlite:PATH/);
  });
});
