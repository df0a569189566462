/**
 * Group commit of agent evidence (store/group-commit.ts): reports that arrive together share one
 * transaction, yet each is acknowledged only once its group committed, and one that fails does
 * not take the others with it. On both backends, plus a SIGKILL test on SQLite.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { describe, it } from "node:test";
import Database from "better-sqlite3";
import { Kysely, PostgresDialect, SqliteDialect } from "kysely";
import { insertEvidence } from "../../src/control-plane/store/evidence.js";
import { GroupCommit } from "../../src/control-plane/store/group-commit.js";
import type { KyselyFleetStore } from "../../src/control-plane/store/kysely-store.js";
import { recordReport } from "../../src/control-plane/store/machines.js";
import type { PostgresFleetStore } from "../../src/control-plane/store/postgres-store.js";
import type { HealthInput, ReportInput } from "../../src/control-plane/store/records.js";
import { SqliteFleetStore } from "../../src/control-plane/store/sqlite-store.js";
import type { Tables } from "../../src/control-plane/store/tables.js";
import { Outcome } from "../../src/gen/nixfleet/v1/types_pb.js";
import { tempDir } from "../fixtures/tmp.js";
import { storePath } from "./helpers.js";
import { BACKENDS, count } from "./store-backends.js";

function report(machineId: string, over: Partial<ReportInput> = {}): ReportInput {
  return {
    machineId,
    currentGeneration: storePath(machineId, 0),
    desiredGeneration: "",
    desiredRevision: 0,
    outcome: Outcome.UP_TO_DATE,
    success: true,
    message: `from ${machineId}`,
    deploymentId: "",
    tags: ["web"],
    agentVersion: "1.0",
    uptimeSeconds: 5,
    agentTime: null,
    ...over,
  };
}

/**
 * A group commit over the store's database whose statements (other than BEGIN and COMMIT) are
 * written down. Not closed: it shares the store's connection or pool.
 */
function loggedGroupCommit(store: KyselyFleetStore, kind: "sqlite" | "postgres") {
  const statements: string[] = [];
  const dialect =
    kind === "sqlite"
      ? new SqliteDialect({ database: (store as SqliteFleetStore).db })
      : new PostgresDialect({ pool: (store as PostgresFleetStore).pool });
  const kysely = new Kysely<Tables>({
    dialect,
    log: (e) => {
      if (e.level === "query" && !/^(begin|commit)$/i.test(e.query.sql)) statements.push(e.query.sql);
    },
  });
  const group = new GroupCommit({
    transaction: (fn) => kysely.transaction().execute((q) => fn({ q, kind })),
    flush: insertEvidence,
  });
  return { group, statements };
}

function health(machineId: string): HealthInput {
  return {
    machineId,
    generation: storePath(machineId, 0),
    allPassed: true,
    results: [],
    postApply: false,
    deploymentId: "",
    agentTime: null,
  };
}

for (const backend of BACKENDS) {
  describe(`group commit (${backend.name})`, { skip: backend.skip }, () => {
    it("a group of reports of known machines costs one statement each and two for the group, and no savepoint when none fails", async (t) => {
      const store = await backend.open(t, await backend.location(t));
      const ids = Array.from({ length: 8 }, (_, i) => `web-0${i}`);
      for (const id of ids) await store.recordReport(report(id), 1000);
      const { group, statements } = loggedGroupCommit(store, backend.name);
      await Promise.all(ids.map((id) => group.submit((c) => recordReport(c, report(id), 2000))));
      assert.deepEqual(group.stats, { groups: 1, writes: 8, isolatedReruns: 0 });
      assert.deepEqual(
        statements.filter((s) => /savepoint/i.test(s)),
        [],
      );
      // Each machine row's UPDATE (returning what the contact needs); the sequence and the rows.
      assert.equal(statements.length, ids.length + 2, statements.join("\n"));
      for (const id of ids) assert.equal((await store.machineReports(id, 10)).length, 2);
    });

    it("a group's reports and health reports take consecutive sequence positions in the order they were sent", async (t) => {
      const store = await backend.open(t, await backend.location(t));
      await store.recordReport(report("web-00"), 1000);
      const before = store.evidence.stats.groups;
      await Promise.all([
        store.recordReport(report("web-01", { message: "first" }), 2000),
        store.recordHealth(health("web-02"), 2000),
        store.recordReport(report("web-01", { message: "third" }), 2000),
        store.recordHealth(health("web-01"), 2000),
      ]);
      assert.equal(store.evidence.stats.groups - before, 1);
      const reports = await store.kysely
        .selectFrom("reports")
        .select(["seq", "message"])
        .orderBy("seq")
        .execute();
      const healths = await store.kysely
        .selectFrom("health_reports")
        .select(["seq", "machine_id"])
        .orderBy("seq")
        .execute();
      const order = [
        ...reports.map((r) => [Number(r.seq), `report ${r.message}`] as const),
        ...healths.map((h) => [Number(h.seq), `health ${h.machine_id}`] as const),
      ].sort((a, b) => a[0] - b[0]);
      const first = order[0]![0];
      assert.deepEqual(order, [
        [first, "report from web-00"],
        [first + 1, "report first"],
        [first + 2, "health web-02"],
        [first + 3, "report third"],
        [first + 4, "health web-01"],
      ]);
    });

    it("commits reports sent together in one transaction, and each is stored", async (t) => {
      const store = await backend.open(t, await backend.location(t));
      const before = { ...store.evidence.stats };
      const ids = Array.from({ length: 20 }, (_, i) => `web-${String(i).padStart(2, "0")}`);
      const results = await Promise.all(ids.map((id) => store.recordReport(report(id), 1000)));
      assert.deepEqual(
        results.map((r) => [r.machineId, r.registered]),
        ids.map((id) => [id, true]),
      );
      const stored = await store.getMachines(ids);
      assert.deepEqual(
        stored.map((m) => m.lastMessage),
        ids.map((id) => `from ${id}`),
      );
      assert.equal(store.evidence.stats.writes - before.writes, 20);
      assert.ok(
        store.evidence.stats.groups - before.groups < 20,
        `20 reports sent together took ${store.evidence.stats.groups - before.groups} transactions`,
      );
      assert.equal(await count(store, "reports"), 20);
      for (const id of ids) assert.equal((await store.machineReports(id, 10)).length, 1);
    });

    it("a report that fails in a group fails alone: the others are stored and resolve", async (t) => {
      const store = await backend.open(t, await backend.location(t));
      const before = store.evidence.stats.groups;
      const reruns = store.evidence.stats.isolatedReruns;
      const settled = await Promise.allSettled([
        store.recordReport(report("web-01"), 1000),
        // NULL where the schema says NOT NULL: the database refuses this one report's rows.
        store.recordReport(report("web-02", { message: null as unknown as string }), 1000),
        store.recordHealth(health("web-03"), 1000),
        store.recordReport(report("web-04"), 1000),
        // Without an outcome the machine row keeps its message, so only this report's evidence
        // row is refused, where the group writes all of them at once.
        store.recordReport(
          report("web-05", { outcome: Outcome.UNSPECIFIED, message: null as unknown as string }),
          1000,
        ),
      ]);
      assert.deepEqual(
        settled.map((s) => s.status),
        ["fulfilled", "rejected", "fulfilled", "fulfilled", "rejected"],
      );
      assert.equal(store.evidence.stats.groups - before, 1, "the five shared one transaction");
      // The group ran as it was, a write failed, and it ran once more with savepoints.
      assert.equal(store.evidence.stats.isolatedReruns - reruns, 1);
      // Nothing of the failed ones is left (their machine rows were rolled back with them) …
      for (const id of ["web-02", "web-05"]) {
        assert.equal(await store.getMachine(id), undefined);
        assert.equal((await store.machineReports(id, 10)).length, 0);
      }
      // … and everything of the others is there.
      assert.equal((await store.machineReports("web-01", 10)).length, 1);
      assert.equal((await store.machineReports("web-04", 10)).length, 1);
      assert.notEqual((await store.latestHealthReport("web-03"))?.generation, undefined);
      assert.equal(await count(store, "reports"), 2);
      assert.equal(await count(store, "health_reports"), 1);
    });
  });
}

describe("group commit durability (sqlite)", () => {
  it("every report acknowledged before a SIGKILL is in the database afterwards", async (t) => {
    const db = join(tempDir(t), "state.db");
    const child = spawn(
      process.execPath,
      ["--import", "tsx", join(import.meta.dirname, "report-writer.ts"), db],
      {
        stdio: ["ignore", "pipe", "inherit"],
      },
    );
    t.after(() => child.kill("SIGKILL"));
    const acked: string[] = [];
    const exited = new Promise((resolve) => child.on("exit", resolve));
    for await (const line of createInterface({ input: child.stdout! })) {
      if (!line.startsWith("acked ")) continue;
      acked.push(line.slice("acked ".length));
      // Killed mid-stream: groups are being committed and acknowledged as this happens.
      if (acked.length === 500) child.kill("SIGKILL");
    }
    await exited;
    assert.ok(acked.length >= 500);
    const check = new Database(db, { readonly: true });
    t.after(() => check.close());
    const stored = new Set(
      (check.prepare("SELECT message FROM reports").all() as { message: string }[]).map((r) => r.message),
    );
    const lost = acked.filter((m) => !stored.has(m));
    assert.deepEqual(lost, [], `${lost.length} of ${acked.length} acknowledged reports were lost`);
    // And it is still a database the control plane opens.
    const { store } = await SqliteFleetStore.open({ path: db });
    await store.close();
  });
});
