import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import Database from "better-sqlite3";
import {
  applyMigrations,
  DatabaseStartupError,
  openDatabase,
  schemaVersion,
} from "../../src/control-plane/store/database.js";
import { AlreadyExistsError, ConflictError, NotFoundError } from "../../src/control-plane/store/errors.js";
import type { KyselyFleetStore } from "../../src/control-plane/store/kysely-store.js";
import type { ReportInput } from "../../src/control-plane/store/records.js";
import type { NewRollout } from "../../src/control-plane/store/repository.js";
import { LATEST_SCHEMA_VERSION, MIGRATIONS } from "../../src/control-plane/store/schema.js";
import { SqliteFleetStore } from "../../src/control-plane/store/sqlite-store.js";
import { Outcome } from "../../src/gen/nixfleet/v1/types_pb.js";
import { tempDir } from "../fixtures/tmp.js";
import { storePath } from "./helpers.js";
import { BACKENDS, count } from "./store-backends.js";

async function open(t: { after(fn: () => void): void }, path?: string) {
  const file = path ?? join(tempDir(t), "state.db");
  const { store, migration } = await SqliteFleetStore.open({ path: file });
  t.after(() => void store.close());
  return { store, migration, file };
}

function report(machineId: string, over: Partial<ReportInput> = {}): ReportInput {
  return {
    machineId,
    currentGeneration: storePath(machineId, 0),
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
    ...over,
  };
}

function rollout(
  id: string,
  releaseId: string,
  batches: [string, string][][],
  over: Partial<NewRollout> = {},
): NewRollout {
  return {
    id,
    releaseId,
    targetTags: [],
    targetHosts: batches.flat().map(([m]) => m),
    strategy: "staged",
    batchSizes: batches.map((b) => String(b.length)),
    failureThreshold: "0",
    onFailure: "pause",
    healthTimeoutSeconds: 300,
    soakSeconds: 0,
    cacheUrl: "https://cache.example.org",
    batches: batches.map((b) => b.map(([machineId, targetGeneration]) => ({ machineId, targetGeneration }))),
    note: "",
    ...over,
  };
}

describe("database file and migrations", () => {
  it("creates a fresh database with WAL, foreign keys and every migration recorded", async (t) => {
    const { store, migration } = await open(t);
    assert.deepEqual([migration.from, migration.to], [0, LATEST_SCHEMA_VERSION]);
    assert.equal(store.db.pragma("journal_mode", { simple: true }), "wal");
    assert.equal(store.db.pragma("foreign_keys", { simple: true }), 1);
    const rows = store.db.prepare("SELECT version, name FROM schema_version ORDER BY version").all();
    assert.deepEqual(
      rows,
      MIGRATIONS.map((m) => ({ version: m.version, name: m.name })),
    );
    for (const table of [
      "machines",
      "desired_generations",
      "reports",
      "health_reports",
      "releases",
      "rollouts",
      "rollout_batches",
      "rollout_machines",
      "rollout_events",
      "api_keys",
      "audit_events",
    ]) {
      store.db.prepare(`SELECT count(*) FROM ${table}`).get();
    }
  });

  it("re-opening an up-to-date database applies nothing and keeps the data", async (t) => {
    const dir = tempDir(t);
    const file = join(dir, "state.db");
    const first = await SqliteFleetStore.open({ path: file });
    await first.store.recordReport(report("web-01"), 1000);
    await first.store.close();
    const { store, migration } = await open(t, file);
    assert.deepEqual(
      [migration.from, migration.to, migration.applied.length],
      [LATEST_SCHEMA_VERSION, LATEST_SCHEMA_VERSION, 0],
    );
    assert.equal((await store.getMachine("web-01"))?.lifecycle, "active");
  });

  it("refuses a database from a newer control plane, saying what to do", async (t) => {
    const file = join(tempDir(t), "state.db");
    const db = new Database(file);
    applyMigrations(db);
    db.prepare("INSERT INTO schema_version (version, name, applied_at) VALUES (?, 'future', 0)").run(
      LATEST_SCHEMA_VERSION + 1,
    );
    db.close();
    await assert.rejects(
      openDatabase({ path: file }),
      (e: Error) =>
        e instanceof DatabaseStartupError &&
        /newer than this control plane knows.*restore a backup/.test(e.message),
    );
  });

  it("upgrading from schema 1: the old strictly increasing times seed the evidence sequence", async (t) => {
    const file = join(tempDir(t), "state.db");
    const target = storePath("a", 2);
    const v1 = new Database(file);
    applyMigrations(v1, MIGRATIONS.slice(0, 1));
    v1.exec(`
      INSERT INTO machines (id, lifecycle, registered_at) VALUES ('a', 'active', 1);
      INSERT INTO releases VALUES ('rel-1', '', '', '', 1, 1, 'x');
      INSERT INTO rollouts (id, release_id, status, target_tags, target_hosts, strategy, batch_sizes,
        failure_threshold, on_failure, health_timeout_seconds, soak_seconds, cache_url, created_at, updated_at, created_by)
        VALUES ('r-1', 'rel-1', 'running', '[]', '["a"]', 'all_at_once', '["100%"]', '0', 'pause', 300, 0, '', 1, 1, 'x');
      INSERT INTO rollout_batches VALUES ('r-1', 0, 'deploying', 550, NULL);
      INSERT INTO rollout_machines (rollout_id, machine_id, batch_index, position, target_generation, active)
        VALUES ('r-1', 'a', 0, 0, '${target}', 1);
      INSERT INTO reports (machine_id, received_at, current_generation, desired_generation, desired_revision,
        outcome, success, message, deployment_id) VALUES ('a', 500, '', '${target}', 0, ${Outcome.ROLLED_BACK}, 0, 'before', '');
      INSERT INTO health_reports (machine_id, received_at, generation, all_passed, results, post_apply, deployment_id)
        VALUES ('a', 600, '${target}', 1, '[]', 1, '');
    `);
    v1.close();
    const { store } = await open(t, file);
    const [before] = await store.gateEvidence("r-1", 0);
    assert.equal(before!.latestOutcome, null, "the report from before the start still does not count");
    assert.deepEqual(before!.latestHealth, { allPassed: true, receivedAt: 600, seq: 600, failing: [] });
    // New evidence is ordered after everything old, whatever its time (here: a clock stepped back).
    await store.recordReport(report("a", { desiredGeneration: target, outcome: Outcome.ROLLED_BACK }), 100);
    const [later] = await store.gateEvidence("r-1", 0);
    assert.equal(later!.latestOutcome?.outcome, Outcome.ROLLED_BACK);
    assert.equal(later!.latestOutcome?.receivedAt, 100);
    assert.ok(later!.latestOutcome!.seq > 600);
  });

  it("a failing migration is rolled back and the database stays at the last good version", async (t) => {
    const file = join(tempDir(t), "state.db");
    const broken = [
      ...MIGRATIONS,
      { version: MIGRATIONS.length + 1, name: "broken", sql: "CREATE TABLE ok_so_far (x); THIS IS NOT SQL;" },
    ];
    await assert.rejects(openDatabase({ path: file, migrations: broken }), (e: Error) =>
      new RegExp(
        `migration ${broken.length} \\(broken\\) failed: .*left at schema version ${MIGRATIONS.length}`,
      ).test(e.message),
    );
    const db = new Database(file);
    assert.equal(schemaVersion(db), MIGRATIONS.length);
    assert.equal(
      db.prepare("SELECT name FROM sqlite_master WHERE name = 'ok_so_far'").get(),
      undefined,
      "partial migration rolled back",
    );
    db.close();
  });

  it("waits for a lock held by another process without blocking, then migrates", async (t) => {
    const file = join(tempDir(t), "state.db");
    const holder = new Database(file);
    holder.exec("BEGIN EXCLUSIVE");
    const waits: string[] = [];
    const opening = openDatabase({ path: file, onLockWait: (m) => waits.push(m) });
    // The event loop stays free while it waits: this timer fires and releases the lock.
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(waits.length, 1);
    assert.match(waits[0]!, /locked by another process; waiting/);
    holder.exec("COMMIT");
    holder.close();
    const { db } = await opening;
    assert.equal(schemaVersion(db), LATEST_SCHEMA_VERSION);
    db.close();
  });

  it("gives up on a lock that is never released, naming the likely cause", async (t) => {
    const file = join(tempDir(t), "state.db");
    const holder = new Database(file);
    holder.exec("BEGIN EXCLUSIVE");
    t.after(() => holder.close());
    await assert.rejects(
      openDatabase({ path: file, lockWaitMs: 300 }),
      /stayed locked by another process; check that no other control plane uses the same --db-path/,
    );
  });

  it("refuses a file that is not a database, and a path it cannot create", async (t) => {
    const dir = tempDir(t);
    const junk = join(dir, "junk.db");
    writeFileSync(junk, "this is not sqlite, just some text that is long enough to be a header ".repeat(10));
    await assert.rejects(
      openDatabase({ path: junk }),
      (e: Error) => e instanceof DatabaseStartupError && /junk\.db/.test(e.message),
    );
    await assert.rejects(
      openDatabase({ path: join(junk, "sub", "state.db") }),
      (e: Error) => e instanceof DatabaseStartupError && /--db-path/.test(e.message),
    );
  });

  it("revisions never fall below the clock, so a database restored from an old backup cannot repeat one", async (t) => {
    const dir = tempDir(t);
    const file = join(dir, "state.db");
    const a = await SqliteFleetStore.open({ path: file });
    await a.store.recordReport(report("web-01"), 1000);
    const early = (
      await a.store.setDesired({ machineId: "web-01", storePath: storePath("sys"), cacheUrl: "" }, "x", 1_000)
    ).change.desired!.revision;
    const backup = join(dir, "backup.db");
    a.store.db.exec(`VACUUM INTO '${backup}'`);
    const seen = (
      await a.store.setDesired(
        { machineId: "web-01", storePath: storePath("sys"), cacheUrl: "" },
        "x",
        50_000,
      )
    ).change.desired!.revision;
    await a.store.close();
    // Restore the backup (taken before `seen` was handed out) and assign again, later.
    const { store } = await open(t, backup);
    const after = (
      await store.setDesired({ machineId: "web-01", storePath: storePath("sys"), cacheUrl: "" }, "x", 60_000)
    ).change.desired!.revision;
    assert.ok(early < seen && seen < after, `${early} < ${seen} < ${after}`);
  });
});

for (const backend of BACKENDS) {
  const fresh = async (t: { after(fn: () => void | Promise<void>): void }) =>
    backend.open(t, await backend.location(t));
  const suite = (name: string, fn: () => void) =>
    describe(`${name} (${backend.name})`, { skip: backend.skip }, fn);

  suite("machines and desired generations", () => {
    it("auto-registers on first report, syncs tags, activates a pre-registered machine, and audits it", async (t) => {
      const store = await fresh(t);
      const first = await store.recordReport(report("web-01", { tags: ["web", "eu", "web"] }), 1000);
      assert.equal(first.registered, true);
      assert.deepEqual((await store.getMachine("web-01"))?.tags, ["eu", "web"]);
      assert.equal((await store.getMachine("web-01"))?.lifecycle, "active");
      const again = await store.recordReport(report("web-01", { tags: ["db"] }), 2000);
      assert.equal(again.registered, false);
      assert.deepEqual((await store.getMachine("web-01"))?.tags, ["db"]);
      await store.registerMachine({ id: "web-02", tags: ["web"], lifecycle: null }, "apikey:ops", 3000);
      assert.equal((await store.getMachine("web-02"))?.lifecycle, "pending");
      assert.equal((await store.recordReport(report("web-02"), 4000)).registered, false);
      assert.equal((await store.getMachine("web-02"))?.lifecycle, "active");
      const actions = (
        await store.listAudit({
          actor: null,
          action: null,
          target: null,
          since: null,
          beforeId: null,
          limit: 100,
        })
      ).map((a) => `${a.actor} ${a.action} ${a.target}`);
      assert.ok(actions.includes("machine:web-01 machine.register web-01"));
      assert.ok(actions.includes("machine:web-01 machine.tags web-01"));
      assert.ok(actions.includes("machine:web-02 machine.lifecycle web-02"));
    });

    it("a report without an outcome keeps the last outcome; health is summarised per machine", async (t) => {
      const store = await fresh(t);
      await store.recordReport(report("web-01", { outcome: Outcome.DEPLOYED, message: "deployed" }), 1000);
      await store.recordReport(
        report("web-01", { outcome: Outcome.UNSPECIFIED, message: "health-check" }),
        2000,
      );
      const g = storePath("web-01", 0);
      await store.recordHealth(
        {
          machineId: "web-01",
          generation: g,
          allPassed: true,
          results: [{ name: "nginx", kind: 1, passed: false, durationMs: 1, message: "" }],
          postApply: false,
          deploymentId: "",
          agentTime: null,
        },
        3000,
      );
      const m = (await store.getMachine("web-01"))!;
      assert.equal(m.lastOutcome, Outcome.DEPLOYED);
      assert.equal(m.lastMessage, "deployed");
      // all_passed=true with a failing result is not trusted.
      assert.deepEqual(m.health, { generation: g, allPassed: false, at: 3000, failing: ["nginx"] });
    });

    it("revisions increase on every assignment, even to the same path, and across re-opening", async (t) => {
      const file = await backend.location(t);
      const a = { store: await backend.open(t, file) };
      await a.store.recordReport(report("web-01"), 1000);
      const p = storePath("sys", 1);
      const r1 = (
        await a.store.setDesired({ machineId: "web-01", storePath: p, cacheUrl: "" }, "apikey:x", 2000)
      ).change.desired!.revision;
      const r2 = (
        await a.store.setDesired(
          { machineId: "web-01", storePath: p, cacheUrl: "https://c.example" },
          "apikey:x",
          3000,
        )
      ).change.desired!.revision;
      await a.store.close();
      const store = await backend.open(t, file);
      const r3 = (
        await store.setDesired({ machineId: "web-01", storePath: p, cacheUrl: "" }, "apikey:x", 4000)
      ).change.desired!.revision;
      assert.ok(r1 < r2 && r2 < r3, `${r1} < ${r2} < ${r3}`);
      assert.equal((await store.desiredFor("web-01")).desired?.cacheUrl, "");
    });

    it("persists cache_url with the desired generation", async (t) => {
      const file = await backend.location(t);
      const a = { store: await backend.open(t, file) };
      await a.store.recordReport(report("web-01"), 1000);
      await a.store.setDesired(
        { machineId: "web-01", storePath: storePath("sys"), cacheUrl: "https://cache.example.org" },
        "apikey:x",
        2000,
      );
      await a.store.close();
      const store = await backend.open(t, file);
      assert.equal((await store.desiredFor("web-01")).desired?.cacheUrl, "https://cache.example.org");
    });

    it("refuses to assign to an unknown machine and writes nothing", async (t) => {
      const store = await fresh(t);
      const before = await count(store, "audit_events");
      await assert.rejects(
        store.setDesired({ machineId: "ghost", storePath: storePath("x"), cacheUrl: "" }, "apikey:x", 1),
        NotFoundError,
      );
      assert.equal(await count(store, "audit_events"), before);
      assert.equal((await store.desiredFor("ghost")).desired, null);
    });

    it("enforces lifecycle transitions inside the transaction", async (t) => {
      const store = await fresh(t);
      await store.recordReport(report("web-01"), 1000);
      await store.setLifecycle("web-01", "decommissioned", "apikey:x", 2000);
      await assert.rejects(
        store.setLifecycle("web-01", "active", "apikey:x", 3000),
        (e: Error) => e instanceof ConflictError && /terminal/.test(e.message),
      );
      await assert.rejects(store.setLifecycle("ghost", "active", "apikey:x", 3000), NotFoundError);
      assert.equal((await store.setLifecycle("web-01", "decommissioned", "apikey:x", 4000)).changed, false);
    });

    it("lists machines by ALL and ANY tags, lifecycle and page", async (t) => {
      const store = await fresh(t);
      await store.recordReport(report("a", { tags: ["web", "eu"] }), 1);
      await store.recordReport(report("b", { tags: ["web", "us"] }), 2);
      await store.recordReport(report("c", { tags: ["db", "eu"] }), 3);
      await store.setLifecycle("c", "maintenance", "x", 4);
      const ids = async (f: Partial<Parameters<KyselyFleetStore["listMachines"]>[0]>) =>
        (
          await store.listMachines({
            tags: [],
            match: "all",
            lifecycle: null,
            afterId: null,
            limit: 100,
            ...f,
          })
        ).map((m) => m.id);
      assert.deepEqual(await ids({ tags: ["web", "eu"] }), ["a"]);
      assert.deepEqual(await ids({ tags: ["web", "eu"], match: "any" }), ["a", "b", "c"]);
      assert.deepEqual(await ids({ tags: ["eu", "eu"] }), ["a", "c"]);
      assert.deepEqual(await ids({ lifecycle: "maintenance" }), ["c"]);
      assert.deepEqual(await ids({ afterId: "a", limit: 1 }), ["b"]);
    });

    it("status rows and target candidates say what the machine records say", async (t) => {
      const store = await fresh(t);
      await store.recordReport(report("a", { tags: ["web", "eu"] }), 1);
      await store.recordReport(report("b", { tags: ["web", "us"] }), 2);
      await store.recordReport(report("c", { tags: ["db", "eu"] }), 3);
      await store.setDesired({ machineId: "a", storePath: storePath("a", 2), cacheUrl: "https://c" }, "x", 4);
      await store.setLifecycle("c", "maintenance", "x", 5);
      const all = await store.listMachines({
        tags: [],
        match: "all",
        lifecycle: null,
        afterId: null,
        limit: 100,
      });
      const rows = await store.machineStatusRows({ tags: [], match: "all", lifecycle: null });
      assert.deepEqual(
        rows.map((r) => [r.id, r.lastSeen, r.registeredAt]),
        all.map((m) => [m.id, m.lastSeen, m.registeredAt]),
      );
      const full = await store.machineStatuses(["c", "a", "b"]);
      assert.deepEqual(
        full.map((s) => s.machine),
        all,
      );
      assert.deepEqual(
        full.map((s) => s.version),
        rows.map((r) => r.version),
      );
      const eu = await store.machineStatusRows({ tags: ["eu"], match: "all", lifecycle: null });
      assert.deepEqual(
        eu.map((r) => r.id),
        ["a", "c"],
      );
      // The version stays while nothing is written, and moves with a write to that machine only.
      const same = await store.machineStatusRows({ tags: [], match: "all", lifecycle: null });
      assert.deepEqual(
        same.map((r) => r.version),
        rows.map((r) => r.version),
      );
      const before = rows.find((r) => r.id === "b")!.version;
      await store.setDesired({ machineId: "b", storePath: storePath("b", 2), cacheUrl: "" }, "x", 11);
      const changed = await store.machineStatusRows({ tags: [], match: "all", lifecycle: null });
      assert.notEqual(changed.find((r) => r.id === "b")!.version, before);
      assert.equal(changed.find((r) => r.id === "a")!.version, rows.find((r) => r.id === "a")!.version);
      assert.deepEqual(
        await store.targetCandidates({ tags: ["eu"] }),
        all
          .filter((m) => m.tags.includes("eu"))
          .map((m) => ({ id: m.id, lifecycle: m.lifecycle, activeRollout: null })),
      );
      assert.deepEqual(
        (await store.targetCandidates({ hosts: ["c", "ghost", "a"] })).map((m) => m.id),
        ["a", "c"],
      );
    });
  });

  suite("releases, rollouts and keys", () => {
    async function fleet(store: KyselyFleetStore, ...ids: string[]) {
      for (const id of ids) await store.recordReport(report(id), 1);
      const release = await store.createRelease(
        {
          id: "rel-1",
          entries: ids.map((h) => ({
            hostname: h,
            storePath: storePath(h, 2),
            platform: "x86_64-linux",
            tags: [],
          })),
          cacheUrl: "",
          flakeRef: "",
          flakeRev: "",
        },
        "apikey:ci",
        2,
      );
      return release;
    }

    it("a release referenced by a rollout cannot be deleted; an unreferenced one can", async (t) => {
      const store = await fresh(t);
      await fleet(store, "a");
      await store.createRollout(rollout("r-1", "rel-1", [[["a", storePath("a", 2)]]]), "apikey:x", 3);
      await assert.rejects(
        store.deleteRelease("rel-1", "x", 4),
        (e: Error) => e instanceof ConflictError && /referenced by rollout r-1/.test(e.message),
      );
      await store.createRelease(
        {
          id: "rel-2",
          entries: [{ hostname: "a", storePath: storePath("a"), platform: "", tags: [] }],
          cacheUrl: "",
          flakeRef: "",
          flakeRev: "",
        },
        "x",
        5,
      );
      await store.deleteRelease("rel-2", "x", 6);
      assert.equal(await store.getRelease("rel-2"), undefined);
      assert.deepEqual(
        await store.kysely
          .selectFrom("release_entries")
          .select("hostname")
          .where("release_id", "=", "rel-2")
          .execute(),
        [],
      );
      await assert.rejects(store.deleteRelease("rel-2", "x", 7), NotFoundError);
    });

    it("a release write that fails half-way leaves nothing behind", async (t) => {
      const store = await fresh(t);
      const entry = { hostname: "a", storePath: storePath("a"), platform: "", tags: [] };
      await assert.rejects(
        store.createRelease(
          { id: "rel-dup", entries: [entry, entry], cacheUrl: "", flakeRef: "", flakeRev: "" },
          "x",
          1,
        ),
      );
      assert.equal(await store.getRelease("rel-dup"), undefined);
      assert.equal(await count(store, "audit_events"), 0);
    });

    it("one active rollout per machine: a second is refused and nothing of it is stored", async (t) => {
      const store = await fresh(t);
      await fleet(store, "a", "b");
      await store.createRollout(rollout("r-1", "rel-1", [[["a", storePath("a", 2)]]]), "x", 3);
      await assert.rejects(
        store.createRollout(
          rollout("r-2", "rel-1", [
            [
              ["b", storePath("b", 2)],
              ["a", storePath("a", 2)],
            ],
          ]),
          "x",
          4,
        ),
        (e: Error) =>
          e instanceof ConflictError &&
          /machine a is already in active rollout r-1 \(running\)/.test(e.message),
      );
      assert.equal(await store.getRollout("r-2"), undefined);
      // The unique index is the backstop even if a caller skipped the check.
      await assert.rejects(
        store.kysely
          .insertInto("rollout_machines")
          .values({
            rollout_id: "r-1",
            machine_id: "a",
            batch_index: 0,
            position: 1,
            target_generation: "x",
            active: 1,
          })
          .execute(),
      );
      // Once the first ends, the machine is free again.
      await store.endRollout(
        "r-1",
        { status: "cancelled", revert: false, reason: "test", actor: "x", from: ["running", "paused"] },
        5,
      );
      await store.createRollout(rollout("r-3", "rel-1", [[["a", storePath("a", 2)]]]), "x", 6);
    });

    it("startBatch returns the rollout as it now reads, without re-reading it (first start and re-start)", async (t) => {
      const store = await fresh(t);
      await fleet(store, "a", "b", "c");
      await store.setDesired({ machineId: "a", storePath: storePath("a", 1), cacheUrl: "" }, "x", 3);
      await store.createRollout(
        rollout("r-1", "rel-1", [
          [
            ["a", storePath("a", 2)],
            ["b", storePath("b", 2)],
          ],
          [["c", storePath("c", 2)]],
        ]),
        "x",
        4,
      );
      const first = (await store.startBatch("r-1", 0, 5))!;
      assert.deepEqual(first.rollout, await store.getRollout("r-1"));
      assert.equal(first.rollout.batches[0]!.machines[0]!.previousGeneration, storePath("a", 1));
      // Gate states recorded, the batch failed and resumed: the re-start resets the gate states
      // and keeps the previous generations recorded the first time.
      const startedSeq = first.rollout.batches[0]!.startedSeq!;
      await store.recordGate(
        "r-1",
        0,
        startedSeq,
        [
          { machineId: "a", state: "healthy", reason: "" },
          { machineId: "b", state: "unhealthy", reason: "check nginx failed" },
        ],
        6,
      );
      await store.finishBatch("r-1", 0, startedSeq, { passed: false, message: "b failed" }, 7);
      await store.resumeRollout("r-1", "apikey:ops", 8);
      const again = (await store.startBatch("r-1", 0, 9))!;
      assert.deepEqual(again.rollout, await store.getRollout("r-1"));
      assert.deepEqual(
        again.rollout.batches[0]!.machines.map((m) => [m.machineId, m.gateState, m.previousGeneration]),
        [
          ["a", "pending", storePath("a", 1)],
          ["b", "pending", null],
        ],
      );
      assert.equal(again.rollout.batches[1]!.machines[0]!.previousRecorded, false);
    });

    it("a report or health report says which running rollout its machine is in, without reading the machine back", async (t) => {
      const store = await fresh(t);
      await fleet(store, "a", "b");
      await store.createRollout(rollout("r-1", "rel-1", [[["a", storePath("a", 2)]]]), "x", 3);
      const health = (id: string) => ({
        machineId: id,
        generation: storePath(id, 0),
        allPassed: true,
        results: [],
        postApply: false,
        deploymentId: "",
        agentTime: null,
      });
      assert.equal((await store.recordReport(report("a"), 4)).runningRolloutId, "r-1");
      assert.equal((await store.recordHealth(health("a"), 4)).runningRolloutId, "r-1");
      assert.equal((await store.recordReport(report("b"), 4)).runningRolloutId, null);
      await store.pauseRollout("r-1", "ops", "apikey:ops", 5);
      assert.equal((await store.recordReport(report("a"), 6)).runningRolloutId, null);
      await store.resumeRollout("r-1", "apikey:ops", 7);
      assert.equal((await store.recordHealth(health("a"), 8)).runningRolloutId, "r-1");
      // First contact: registered, in no rollout.
      assert.deepEqual(await store.recordHealth(health("c"), 9), {
        machineId: "c",
        registered: true,
        runningRolloutId: null,
      });
    });

    it("records previous desired generations once; revert restores them (clearing where there were none)", async (t) => {
      const store = await fresh(t);
      await fleet(store, "a", "b");
      const g1 = storePath("a", 1);
      await store.setDesired({ machineId: "a", storePath: g1, cacheUrl: "https://old.example" }, "x", 3);
      await store.createRollout(
        rollout("r-1", "rel-1", [[["a", storePath("a", 2)]], [["b", storePath("b", 2)]]]),
        "x",
        4,
      );
      const start0 = (await store.startBatch("r-1", 0, 5))!;
      assert.deepEqual(
        start0.changes.map((c) => [c.machineId, c.desired?.storePath]),
        [["a", storePath("a", 2)]],
      );
      assert.equal(await store.startBatch("r-1", 0, 6), null, "a deploying batch is not started twice");
      // SetDesiredGeneration is refused while the machine is in the rollout.
      await assert.rejects(
        store.setDesired({ machineId: "a", storePath: g1, cacheUrl: "" }, "x", 7),
        /in active rollout r-1/,
      );
      await assert.rejects(store.clearDesired("a", "x", 7), /in active rollout r-1/);
      assert.ok(
        await store.finishBatch(
          "r-1",
          0,
          start0.rollout.batches[0]!.startedSeq!,
          { passed: true, message: "ok" },
          8,
        ),
      );
      const start1 = (await store.startBatch("r-1", 1, 9))!;
      // Batch 2 fails and pauses; resume re-deploys it and must keep the recorded previous.
      await store.finishBatch(
        "r-1",
        1,
        start1.rollout.batches[1]!.startedSeq!,
        { passed: false, message: "b failed" },
        10,
      );
      assert.equal((await store.getRollout("r-1"))?.status, "paused");
      await store.resumeRollout("r-1", "apikey:ops", 11);
      const again = (await store.startBatch("r-1", 1, 12))!;
      assert.ok(
        again.changes[0]!.desired!.revision > start0.changes[0]!.desired!.revision,
        "a re-deploy gets a new revision",
      );
      const r = (await store.getRollout("r-1"))!;
      assert.equal(r.batches[1]!.machines[0]!.previousGeneration, null, "b had nothing before the rollout");
      const ended = await store.endRollout(
        "r-1",
        {
          status: "cancelled",
          revert: true,
          reason: "test",
          actor: "apikey:ops",
          from: ["running", "paused"],
        },
        13,
      );
      assert.deepEqual(
        ended.changes.map((c) => [c.machineId, c.desired?.storePath ?? null, c.desired?.cacheUrl ?? null]),
        [
          ["a", g1, "https://old.example"],
          ["b", null, null],
        ],
      );
      assert.equal((await store.desiredFor("a")).desired?.storePath, g1);
      assert.equal((await store.desiredFor("b")).desired, null);
      assert.equal((await store.desiredFor("a")).inActiveRollout, false);
      assert.deepEqual(
        (await store.getRollout("r-1"))!.batches.map((b) => b.status),
        ["succeeded", "cancelled"],
      );
    });

    it("API keys: unique live names, immediate revocation, last use recorded, no self-revocation", async (t) => {
      const store = await fresh(t);
      const k = await store.createApiKey(
        { id: "key-1", name: "ci", role: "deploy", hash: "h1" },
        "local:root",
        1,
      );
      assert.equal(k.lastUsedAt, null);
      await assert.rejects(
        store.createApiKey({ id: "key-2", name: "ci", role: "admin", hash: "h2" }, "x", 2),
        AlreadyExistsError,
      );
      assert.equal((await store.authenticateApiKey("h1", 3))?.lastUsedAt, 3);
      assert.equal((await store.listApiKeys(false))[0]?.lastUsedAt, 3);
      await assert.rejects(store.revokeApiKey("ci", "key-1", "apikey:ci", 4), /cannot revoke itself/);
      await store.revokeApiKey("ci", null, "local:root", 5);
      assert.equal(await store.authenticateApiKey("h1", 6), undefined);
      await assert.rejects(store.revokeApiKey("key-1", null, "x", 7), /already revoked/);
      await assert.rejects(store.revokeApiKey("nope", null, "x", 7), NotFoundError);
      // The name is free again once revoked.
      await store.createApiKey({ id: "key-3", name: "ci", role: "readonly", hash: "h3" }, "x", 8);
      assert.deepEqual(
        (await store.listApiKeys(true)).map((x) => [x.id, x.revokedAt !== null]),
        [
          ["key-1", true],
          ["key-3", false],
        ],
      );
    });

    it("prunes old reports but keeps what a deploying batch still needs", async (t) => {
      const store = await fresh(t);
      await fleet(store, "a");
      for (const at of [10, 20, 30, 40]) await store.recordReport(report("a"), at);
      await store.recordHealth(
        {
          machineId: "a",
          generation: storePath("a"),
          allPassed: true,
          results: [],
          postApply: false,
          deploymentId: "",
          agentTime: null,
        },
        15,
      );
      const none = await store.prune(12);
      assert.ok(none.reports >= 1, "reports before the cutoff are gone");
      await store.createRollout(rollout("r-1", "rel-1", [[["a", storePath("a", 2)]]]), "x", 50);
      await store.startBatch("r-1", 0, 25);
      const kept = await store.prune(1000);
      const left = await store.kysely
        .selectFrom("reports")
        .select("received_at")
        .orderBy("received_at")
        .execute();
      assert.deepEqual(
        left.map((r) => r.received_at),
        [30, 40],
        "reports after the batch start survive",
      );
      assert.equal(kept.healthReports, 1);
    });
  });
}
