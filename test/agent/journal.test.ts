import assert from "node:assert/strict";
import { existsSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import Database from "better-sqlite3";
import type { ActivationHandle } from "../../src/agent/activation.js";
import { MIGRATIONS } from "../../src/agent/journal/db.js";
import { Journal, RETENTION } from "../../src/agent/journal/journal.js";
import { tempDir } from "../fixtures/tmp.js";

const A = "/nix/store/0c8vxs2ja1k5f5v0r4zm0h4y3hs7a0fj-nixos-system-web-01-a";
const B = "/nix/store/1c8vxs2ja1k5f5v0r4zm0h4y3hs7a0fj-nixos-system-web-01-b";

function clock(start = 1_000_000) {
  let t = start;
  return { now: () => t, advance: (ms: number) => (t += ms) };
}

describe("journal (real SQLite file)", () => {
  it("creates the schema with WAL, versioned, and reopens without re-running migrations", (t) => {
    const path = join(tempDir(t), "state", "state.db");
    const { journal } = Journal.open(path);
    journal.close();
    const db = new Database(path, { readonly: true });
    assert.equal(db.pragma("journal_mode", { simple: true }), "wal");
    assert.equal(db.pragma("user_version", { simple: true }), MIGRATIONS.length);
    const tables = (
      db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").all() as Array<{
        name: string;
      }>
    ).map((r) => r.name);
    for (const name of [
      "deployments",
      "deployment_phases",
      "quarantine",
      "last_reports",
      "health_history",
      "outbox",
    ]) {
      assert.ok(tables.includes(name), name);
    }
    db.close();
    const again = Journal.open(path);
    assert.equal(again.movedAside, undefined);
    again.journal.close();
  });

  it("records a deployment's phases with timestamps, the exact previous path and the outcome", (t) => {
    const c = clock();
    const { journal } = Journal.open(join(tempDir(t), "s.db"), c.now);
    journal.createDeployment({
      id: "d1",
      desired: B,
      desiredRevision: 2n ** 63n + 5n,
      rolloutId: "r-1",
      cacheUrl: "https://c",
    });
    c.advance(100);
    journal.beginApply("d1", A, 7);
    c.advance(50);
    const handle: ActivationHandle = {
      mode: "direct",
      role: "switch",
      path: B,
      statusFile: "/s",
      logFile: "/l",
      startedAt: c.now(),
    };
    journal.setPhase("d1", "switching", { activation: handle });
    journal.recordActivation("d1", "activation", { ...handle, pid: 42 });
    c.advance(200);
    journal.setPhase("d1", "verifying");
    c.advance(300);
    assert.deepEqual(
      journal.unfinished().map((d) => d.id),
      ["d1"],
    );
    journal.finish("d1", "DEPLOYED", "ok");
    const d = journal.get("d1")!;
    assert.equal(d.previous, A, "the exact previous store path");
    assert.equal(d.previousProfileGeneration, 7);
    assert.equal(d.desiredRevision, 2n ** 63n + 5n, "uint64 revisions survive the round trip");
    assert.equal(d.activation?.pid, 42);
    assert.equal(d.outcome, "DEPLOYED");
    assert.equal(d.phase, "done");
    assert.deepEqual(
      journal.phases("d1").map((p) => [p.phase, p.endedAt !== null ? p.endedAt - p.startedAt : null]),
      [
        ["fetching", 100],
        ["applying", 50],
        ["switching", 200],
        ["verifying", 300],
      ],
    );
    assert.deepEqual(journal.unfinished(), []);
    assert.equal(journal.lastDeployedAt(), c.now());
    journal.close();
  });

  it("survives the process dying between steps: a reopened journal shows the unfinished phase", (t) => {
    const path = join(tempDir(t), "s.db");
    const first = Journal.open(path).journal;
    first.createDeployment({ id: "d1", desired: B, desiredRevision: 1n, rolloutId: "", cacheUrl: null });
    first.beginApply("d1", A, null);
    first.setPhase("d1", "switching");
    // No close(): like a kill -9. WAL keeps committed transactions.
    const second = Journal.open(path).journal;
    const [d] = second.unfinished();
    assert.equal(d?.phase, "switching");
    assert.equal(d?.previous, A);
    second.close();
    first.close();
  });

  it("keeps the quarantine keyed by path with the failed revision", (t) => {
    const { journal } = Journal.open(join(tempDir(t), "s.db"));
    assert.equal(journal.quarantineEntry(B), undefined);
    journal.quarantine({
      path: B,
      revision: 3n,
      deploymentId: "d1",
      outcome: "ROLLED_BACK",
      reason: "health",
    });
    journal.quarantine({
      path: B,
      revision: 4n,
      deploymentId: "d2",
      outcome: "ROLLED_BACK",
      reason: "again",
    });
    assert.equal(journal.quarantineCount(), 1);
    assert.equal(journal.quarantineEntry(B)?.revision, 4n);
    assert.equal(journal.quarantineEntry(B)?.reason, "again");
    journal.clearQuarantine(B);
    assert.equal(journal.quarantineCount(), 0);
    journal.close();
  });

  it("queues reports in order, bounded, and remembers steady reports", (t) => {
    const { journal } = Journal.open(join(tempDir(t), "s.db"));
    for (let i = 0; i < RETENTION.outboxItems + 10; i++) {
      journal.enqueue({
        kind: "report",
        outcome: "UP_TO_DATE",
        deploymentId: "",
        payload: new Uint8Array([i % 256]),
        class: "status",
        coalesceKey: `UP_TO_DATE|${i}`,
      });
    }
    const items = journal.outbox();
    assert.equal(items.length, RETENTION.outboxItems, "the oldest are dropped");
    assert.ok(items[0]!.id < items[1]!.id);
    journal.markOutboxAttempt(items[0]!.id, "UNAVAILABLE");
    assert.equal(journal.outbox()[0]!.attempts, 1);
    journal.removeFromOutbox([items[0]!.id]);
    assert.equal(journal.outboxCount(), RETENTION.outboxItems - 1);

    assert.equal(journal.lastReport("steady"), undefined);
    journal.recordReport("steady", "k1", "UP_TO_DATE", 5);
    journal.recordReport("steady", "k2", "QUARANTINED", 6);
    assert.deepEqual(journal.lastReport("steady"), { key: "k2", outcome: "QUARANTINED", sentAt: 6 });
    journal.close();
  });

  it("never evicts an outcome before delivery: status reports coalesce and only they are bounded", (t) => {
    const { journal } = Journal.open(join(tempDir(t), "s.db"));
    const row = (outcome: string, cls: "outcome" | "status", key?: string) => ({
      kind: "report" as const,
      outcome,
      deploymentId: cls === "outcome" ? "d1" : "",
      payload: new Uint8Array([1]),
      class: cls,
      ...(key !== undefined ? { coalesceKey: key } : {}),
    });
    journal.enqueue(row("ROLLED_BACK", "outcome"));
    // A long control-plane outage: the same alarm over and over, and many distinct statuses.
    for (let i = 0; i < 3 * RETENTION.outboxItems; i++) {
      journal.enqueue(row("ROLLBACK_FAILED", "status", `ROLLBACK_FAILED|${B}`));
      journal.enqueue(row("UP_TO_DATE", "status", `UP_TO_DATE|${i}`));
    }
    const items = journal.outbox();
    assert.equal(items[0]!.outcome, "ROLLED_BACK", "the outcome is still first in line");
    assert.equal(
      items.filter((i) => i.outcome === "ROLLBACK_FAILED").length,
      1,
      "repeated status reports replace each other",
    );
    assert.equal(items.length, RETENTION.outboxItems + 1, "the bound counts status rows only");
    assert.deepEqual(journal.outboxBacklog(), { outcome: 1, status: RETENTION.outboxItems, health: 0 });
    journal.close();
  });

  it("commits an outcome with its quarantine entry and reports, or none of them", (t) => {
    const { journal } = Journal.open(join(tempDir(t), "s.db"));
    journal.createDeployment({ id: "d1", desired: B, desiredRevision: 3n, rolloutId: "", cacheUrl: null });
    const applying = journal.beginApply("d1", A, 1);
    assert.equal(applying.phase, "applying", "journal writes return the updated row");
    assert.equal(applying.previous, A);
    const bad = {
      kind: "report" as const,
      outcome: "ROLLED_BACK",
      deploymentId: "d1",
      payload: new Uint8Array(),
      class: "nonsense" as "outcome",
    };
    // A row the database refuses (class is NOT NULL) aborts the whole settlement.
    assert.throws(() =>
      journal.finish("d1", "ROLLED_BACK", "m", {
        quarantine: { path: B, revision: 3n, outcome: "ROLLED_BACK", reason: "r" },
        reports: [{ ...bad, class: null as unknown as "outcome" }],
      }),
    );
    assert.equal(journal.get("d1")?.phase, "applying", "no outcome without its report");
    assert.equal(journal.quarantineEntry(B), undefined, "no quarantine without its outcome");
    const done = journal.finish("d1", "ROLLED_BACK", "m", {
      quarantine: { path: B, revision: 3n, outcome: "ROLLED_BACK", reason: "r" },
      reports: [{ ...bad, class: "outcome" }],
    });
    assert.equal(done.outcome, "ROLLED_BACK");
    assert.equal(journal.quarantineEntry(B)?.deploymentId, "d1");
    assert.equal(journal.outbox().length, 1);
    journal.close();
  });

  it("prunes health history by age and count, and old finished deployments but never unfinished ones", (t) => {
    const c = clock(10 * RETENTION.healthAgeMs);
    const { journal } = Journal.open(join(tempDir(t), "s.db"), c.now);
    journal.recordHealth({
      generation: A,
      allPassed: true,
      postApply: false,
      deploymentId: "",
      results: [],
      at: c.now() - RETENTION.healthAgeMs - 1,
    });
    journal.recordHealth({
      generation: A,
      allPassed: false,
      postApply: true,
      deploymentId: "d",
      results: [{ name: "x" }],
      at: c.now(),
    });
    const history = journal.healthHistory();
    assert.equal(history.length, 1, "the week-old row is gone");
    assert.deepEqual(history[0]!.results, [{ name: "x" }]);

    journal.createDeployment({ id: "open", desired: B, desiredRevision: 1n, rolloutId: "", cacheUrl: null });
    for (let i = 0; i < RETENTION.deployments + 5; i++) {
      c.advance(1);
      journal.createDeployment({
        id: `d${i}`,
        desired: B,
        desiredRevision: 1n,
        rolloutId: "",
        cacheUrl: null,
      });
      journal.finish(`d${i}`, "FETCH_FAILED", "x");
    }
    assert.equal(journal.get("d0"), undefined, "oldest finished deployment pruned");
    assert.ok(journal.get(`d${RETENTION.deployments + 4}`));
    assert.equal(journal.get("open")?.phase, "fetching", "an unfinished deployment is never pruned");
    journal.close();
  });

  it("moves a corrupt file aside and starts fresh instead of failing forever", (t) => {
    const dir = tempDir(t);
    const path = join(dir, "state.db");
    writeFileSync(path, "this is not a database, just garbage from a torn write ".repeat(100));
    const { journal, movedAside } = Journal.open(path);
    assert.ok(movedAside && existsSync(movedAside), "the bad file is kept for inspection");
    assert.deepEqual(journal.unfinished(), []);
    journal.close();
    assert.ok(readdirSync(dir).some((f) => f.startsWith("state.db.corrupt-")));
  });

  it("refuses a journal written by a newer agent", (t) => {
    const path = join(tempDir(t), "s.db");
    const db = new Database(path);
    db.pragma(`user_version = ${MIGRATIONS.length + 1}`);
    db.close();
    assert.throws(() => Journal.open(path), /newer agent/);
  });
});
