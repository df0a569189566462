/**
 * What only the PostgreSQL backend has to show: several replicas migrating one database at once,
 * connection errors that name the flag and hide the password, and an evidence sequence that
 * follows commit order across connections (the gate's "received after the batch started").
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import pg from "pg";
import { DatabaseStartupError } from "../../src/control-plane/store/database.js";
import { PG_LATEST_SCHEMA_VERSION, PG_MIGRATIONS } from "../../src/control-plane/store/pg-schema.js";
import { PostgresFleetStore } from "../../src/control-plane/store/postgres-store.js";
import { Outcome } from "../../src/gen/nixfleet/v1/types_pb.js";
import { postgresUnavailable } from "../fixtures/postgres.js";
import { storePath } from "./helpers.js";
import { testPostgres } from "./store-backends.js";

describe("PostgreSQL store", { skip: postgresUnavailable() }, () => {
  it("three replicas starting at once migrate the database exactly once", async (t) => {
    const url = await (await testPostgres()).database();
    const opened = await Promise.all([1, 2, 3].map(() => PostgresFleetStore.open({ url, poolSize: 2 })));
    t.after(() => Promise.all(opened.map((o) => o.store.close())));
    assert.deepEqual(opened.map((o) => o.migration.applied.length).sort(), [0, 0, PG_MIGRATIONS.length]);
    for (const o of opened) assert.equal(o.migration.to, PG_LATEST_SCHEMA_VERSION);
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    t.after(() => client.end());
    const rows = (await client.query("SELECT version FROM schema_version ORDER BY version")).rows;
    assert.deepEqual(
      rows.map((r) => r.version),
      PG_MIGRATIONS.map((m) => m.version),
    );
  });

  it("refuses a database from a newer control plane", async (t) => {
    const url = await (await testPostgres()).database();
    const { store } = await PostgresFleetStore.open({ url });
    await store.close();
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    t.after(() => client.end());
    await client.query("INSERT INTO schema_version VALUES ($1, 'future', 0)", [PG_LATEST_SCHEMA_VERSION + 1]);
    await assert.rejects(
      PostgresFleetStore.open({ url }),
      (e: Error) =>
        e instanceof DatabaseStartupError && /newer than this control plane knows/.test(e.message),
    );
  });

  it("an unreachable server: the error names --database-url and never shows the password", async () => {
    const server = await testPostgres();
    const url = `postgres://cp:hunter2@127.0.0.1:${server.port}/no_such_database`;
    await assert.rejects(PostgresFleetStore.open({ url }), (e: Error) => {
      assert.ok(e instanceof DatabaseStartupError);
      assert.match(e.message, /cannot connect to the database postgres:\/\/cp:\*\*\*@127\.0\.0\.1/);
      assert.match(e.message, /--database-url/);
      assert.doesNotMatch(e.message, /hunter2/);
      return true;
    });
  });

  it("a batch start waits for a report transaction holding an earlier position: positions follow commit order", async (t) => {
    const url = await (await testPostgres()).database();
    const { store } = await PostgresFleetStore.open({ url });
    t.after(() => store.close());
    await store.recordReport(
      {
        machineId: "a",
        currentGeneration: storePath("a", 1),
        desiredGeneration: "",
        desiredRevision: 0,
        outcome: 0,
        success: true,
        message: "",
        deploymentId: "",
        tags: [],
        agentVersion: "1",
        uptimeSeconds: 1,
        agentTime: null,
      },
      1,
    );
    const target = storePath("a", 2);
    await store.createRelease(
      {
        id: "rel",
        entries: [{ hostname: "a", storePath: target, platform: "", tags: [] }],
        cacheUrl: "",
        flakeRef: "",
        flakeRev: "",
      },
      "x",
      2,
    );
    await store.createRollout(
      {
        id: "r",
        releaseId: "rel",
        targetTags: [],
        targetHosts: ["a"],
        strategy: "all_at_once",
        batchSizes: ["100%"],
        failureThreshold: "0",
        onFailure: "pause",
        healthTimeoutSeconds: 300,
        soakSeconds: 0,
        cacheUrl: "",
        batches: [[{ machineId: "a", targetGeneration: target }]],
        note: "",
      },
      "x",
      3,
    );
    // Another replica's report transaction takes its position and has not committed yet.
    const other = new pg.Client({ connectionString: url });
    await other.connect();
    t.after(() => other.end());
    await other.query("BEGIN");
    const seq = Number(
      (await other.query("UPDATE evidence_sequence SET value = value + 1 WHERE id = 1 RETURNING value"))
        .rows[0].value,
    );
    let started = false;
    const starting = store.startBatch("r", 0, 4).then((c) => {
      started = true;
      return c;
    });
    // The start is blocked on the sequence row until that transaction ends (or, were it not,
    // finishes first and the assertion below fails).
    const watcher = new pg.Client({ connectionString: url });
    await watcher.connect();
    t.after(() => watcher.end());
    while (!started) {
      const waiting = await watcher.query(
        "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
      );
      if (waiting.rows[0].n > 0) break;
      await new Promise((r) => setImmediate(r));
    }
    assert.equal(started, false, "the batch start cannot commit before the earlier position does");
    await other.query(
      `INSERT INTO reports (machine_id, received_at, seq, current_generation, desired_generation, desired_revision, outcome, success, message, deployment_id)
       VALUES ('a', 5, $1, '', $2, 0, $3, 0, 'from before the start', '')`,
      [seq, target, Outcome.ROLLED_BACK],
    );
    await other.query("COMMIT");
    const change = (await starting)!;
    assert.ok(change.rollout.batches[0]!.startedSeq! > seq);
    const [evidence] = await store.gateEvidence("r", 0);
    assert.equal(evidence!.latestOutcome, null, "a report committed before the start never counts for it");
  });
});
