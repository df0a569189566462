/**
 * WatchFleet against a real control plane: the snapshot, then changes as they land (reports,
 * health, desired generations, agent streams connecting and going away, staleness), resuming,
 * and a watcher that stops reading being resynced instead of buffered.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  ApiKeyRole,
  FleetChangeKind,
  RolloutStrategy,
  SnapshotReason,
  TagMatch,
  type WatchFleetResponse,
} from "../../src/gen/nixfleet/v1/fleet_pb.js";
import { Outcome } from "../../src/gen/nixfleet/v1/types_pb.js";
import { createPki, type Pki } from "../fixtures/pki.js";
import { makeTempDir, removeTempDir } from "../fixtures/tmp.js";
import { Harness } from "./harness.js";
import { Inbox, storePath, waitFor } from "./helpers.js";

type Msg = WatchFleetResponse;

const change = (kind: FleetChangeKind, machineId: string) => (m: Msg) =>
  m.message.case === "change" && m.message.value.kind === kind && m.message.value.machineId === machineId;
const snapshotEnd = (reason: SnapshotReason) => (m: Msg) =>
  m.message.case === "snapshot" && m.message.value.last && m.message.value.reason === reason;

describe("WatchFleet", () => {
  const dir = makeTempDir();
  let pki: Pki;
  let h: Harness;
  before(async () => {
    pki = createPki(join(dir, "pki"));
    h = await Harness.start(pki, { staleAfterSeconds: 2, watchFleetQueueLimit: 5 });
  });
  after(async () => {
    await h.close();
    removeTempDir(dir);
  });

  const report = (id: string, tags: string[], outcome = Outcome.UP_TO_DATE) =>
    h.agent(id).report({ machineId: id, currentGeneration: storePath(`sys-${id}`, 1), outcome, tags });

  function watch(req: Parameters<ReturnType<Harness["fleet"]>["watchFleet"]>[0] = {}) {
    const abort = new AbortController();
    const inbox = new Inbox<Msg>(h.fleet("readonly").watchFleet(req, { signal: abort.signal }));
    return { inbox, stop: () => abort.abort() };
  }

  it("sends the fleet in snapshot pages, then each report, health report and desired change", async () => {
    for (const id of ["wf-01", "wf-02", "wf-03"]) await report(id, ["wf"]);
    const { inbox, stop } = watch({ tags: ["wf"], snapshotPageSize: 2 });
    await inbox.next("snapshot", snapshotEnd(SnapshotReason.INITIAL));
    const pages = inbox.messages.filter((m) => m.message.case === "snapshot");
    assert.equal(pages.length, 2);
    const ids = pages
      .flatMap((m) => (m.message.case === "snapshot" ? m.message.value.machines : []))
      .map((s) => s.machineId);
    assert.deepEqual(ids, ["wf-01", "wf-02", "wf-03"]);
    assert.equal(pages[0]!.message.case === "snapshot" && pages[0]!.message.value.first, true);

    let from = inbox.messages.length;
    await report("wf-02", ["wf"], Outcome.APPLY_FAILED);
    const reported = await inbox.next("report change", change(FleetChangeKind.REPORT, "wf-02"), from);
    assert.equal(
      reported.message.case === "change" && reported.message.value.machine?.lastOutcome,
      Outcome.APPLY_FAILED,
    );
    assert.ok(reported.revision > pages[0]!.revision);

    from = inbox.messages.length;
    await h.agent("wf-01").reportHealth({
      machineId: "wf-01",
      currentGeneration: storePath("sys-wf-01", 1),
      allPassed: false,
      results: [{ name: "nginx", passed: false }],
    });
    const health = await inbox.next("health change", change(FleetChangeKind.HEALTH, "wf-01"), from);
    assert.deepEqual(
      health.message.case === "change" && health.message.value.machine?.health?.failingChecks,
      ["nginx"],
    );

    from = inbox.messages.length;
    const p = storePath("sys-wf-03", 2);
    await h.fleet("deploy").setDesiredGeneration({ machineId: "wf-03", storePath: p });
    const desired = await inbox.next("desired change", change(FleetChangeKind.DESIRED, "wf-03"), from);
    assert.equal(desired.message.case === "change" && desired.message.value.machine?.desiredGeneration, p);

    // A machine outside the filter is not sent; one that leaves the filter is removed.
    from = inbox.messages.length;
    await report("other-01", ["other"]);
    await report("wf-03", ["elsewhere"]);
    await inbox.next("removal", change(FleetChangeKind.REMOVED, "wf-03"), from);
    assert.ok(
      !inbox.messages
        .slice(from)
        .some((m) => m.message.case === "change" && m.message.value.machineId === "other-01"),
    );
    stop();
    await inbox.finished;
  });

  it("tells of desired generations a rollout sets, and of machines leaving it when it is cancelled", async () => {
    for (const id of ["wo-01", "wo-02"]) await report(id, ["wo"]);
    const { inbox, stop } = watch({ tags: ["wo"] });
    await inbox.next("snapshot", snapshotEnd(SnapshotReason.INITIAL));
    let from = inbox.messages.length;
    const { release } = await h.fleet("deploy").createRelease({
      entries: ["wo-01", "wo-02"].map((hostname) => ({
        hostname,
        storePath: storePath(`sys-${hostname}`, 5),
      })),
    });
    const { rollout } = await h.fleet("deploy").createRollout({
      releaseId: release!.id,
      target: { tags: ["wo"] },
      strategy: RolloutStrategy.ALL_AT_ONCE,
    });
    for (const id of ["wo-01", "wo-02"]) {
      const m = await inbox.next(`${id} assigned`, change(FleetChangeKind.DESIRED, id), from);
      assert.equal(m.message.case === "change" && m.message.value.machine?.activeRolloutId, rollout!.id);
    }
    from = inbox.messages.length;
    await h.fleet("deploy").cancelRollout({ rolloutId: rollout!.id });
    await waitFor("both machines out of the rollout", () =>
      ["wo-01", "wo-02"].every((id) =>
        inbox.messages
          .slice(from)
          .some(
            (m) =>
              m.message.case === "change" &&
              m.message.value.machineId === id &&
              m.message.value.machine?.activeRolloutId === "",
          ),
      ),
    );
    stop();
    await inbox.finished;
  });

  it("tells of agent streams connecting and closing, and of machines going stale", async () => {
    await report("wc-01", ["wc"]);
    const { inbox, stop } = watch({ tags: ["wc"], match: TagMatch.ANY });
    await inbox.next("snapshot", snapshotEnd(SnapshotReason.INITIAL));
    const from = inbox.messages.length;
    const abort = new AbortController();
    const agentWatch = new Inbox(
      h.agent("wc-01").watch({ machineId: "wc-01", tags: ["wc"] }, { signal: abort.signal }),
    );
    const connected = await inbox.next("connected", change(FleetChangeKind.CONNECTED, "wc-01"), from);
    assert.equal(connected.message.case === "change" && connected.message.value.machine?.connected, true);
    abort.abort();
    await agentWatch.finished;
    await inbox.next("disconnected", change(FleetChangeKind.DISCONNECTED, "wc-01"), from);
    // stale_after is 2 s in this suite: the machine goes quiet, then reports again.
    const stale = await inbox.next("stale", change(FleetChangeKind.STALE, "wc-01"), from, 30_000);
    assert.equal(stale.message.case === "change" && stale.message.value.machine?.stale, true);
    const again = inbox.messages.length;
    await report("wc-01", ["wc"]);
    const back = await inbox.next("report after stale", change(FleetChangeKind.REPORT, "wc-01"), again);
    assert.equal(back.message.case === "change" && back.message.value.machine?.stale, false);
    stop();
    await inbox.finished;
  });

  it("resumes from epoch and revision without a snapshot, and resyncs from an unknown epoch", async () => {
    await report("wr-01", ["wr"]);
    const first = watch({ tags: ["wr"] });
    await first.inbox.next("snapshot", snapshotEnd(SnapshotReason.INITIAL));
    // A second watcher keeps the feed recording while the first is away.
    const keeper = watch({ tags: ["wr"] });
    await keeper.inbox.next("snapshot", snapshotEnd(SnapshotReason.INITIAL));
    const last = first.inbox.messages[first.inbox.messages.length - 1]!;
    first.stop();
    await first.inbox.finished;
    await report("wr-01", ["wr"], Outcome.DEPLOYED);
    await keeper.inbox.next("the report", change(FleetChangeKind.REPORT, "wr-01"));

    const resumed = watch({ tags: ["wr"], resumeEpoch: last.epoch, resumeRevision: last.revision });
    await resumed.inbox.next("the missed report", change(FleetChangeKind.REPORT, "wr-01"));
    assert.ok(!resumed.inbox.messages.some((m) => m.message.case === "snapshot"));

    const gap = watch({ tags: ["wr"], resumeEpoch: "another-process", resumeRevision: 7n });
    await gap.inbox.next("resync", snapshotEnd(SnapshotReason.RESUME_GAP));
    for (const w of [keeper, resumed, gap]) {
      w.stop();
      await w.inbox.finished;
    }
  });

  it("resyncs a watcher that stopped reading instead of queueing without bound", async () => {
    // A control plane of its own, and machines registered long stale: the queue may overflow
    // only because the watcher stopped reading, never because one flush handed it more changes
    // than it holds (machines of other tests, or these, crossing the stale threshold together).
    const own = await Harness.start(pki, { watchFleetQueueLimit: 5 });
    try {
      await resyncsSlowWatcher(own);
    } finally {
      await own.close();
    }
  });

  /** Proves the resync on `own`, whose queue limit is 5 and whose fleet is empty. */
  async function resyncsSlowWatcher(own: Harness) {
    // A snapshot in many pages, far more bytes than the HTTP/2 window and the stream buffers on
    // both sides hold, so the server blocks writing it to a watcher that stopped reading.
    const padding = [1, 2, 3, 4, 5].map((n) => `${n}-${"t".repeat(56)}`);
    const longAgo = Date.now() - 3_600_000;
    for (let i = 0; i < 600; i++)
      await own.cp.store.registerMachine(
        { id: `ws-${String(i).padStart(3, "0")}`, tags: ["ws", ...padding], lifecycle: null },
        "local:test",
        longAgo,
      );
    const abort = new AbortController();
    const stream = own
      .fleet("readonly")
      .watchFleet({ tags: ["ws"], snapshotPageSize: 10 }, { signal: abort.signal })
      [Symbol.asyncIterator]();
    const firstPage = await stream.next();
    assert.equal(firstPage.value?.message.case, "snapshot");
    // The watcher reads nothing more while changes land, one report at a time; its queue holds
    // five. Report until it overflowed: no wait on time, and should the buffers ever take the
    // whole snapshot, the reports' own bytes fill them (a bound keeps a failure from looping).
    const late = own.agent("ws-late");
    let generation = 0;
    while (own.cp.feed.slowWatcherResyncs === 0) {
      assert.ok(generation < 2000, "the queue of a watcher not reading never overflowed");
      generation++;
      await late.report({
        machineId: "ws-late",
        currentGeneration: storePath("sys-ws-late", generation),
        outcome: Outcome.UP_TO_DATE,
        tags: ["ws"],
      });
    }
    // Reading again: the rest of the first snapshot, then a resync snapshot (the changes the
    // watcher missed were dropped, not queued), after which it holds the whole fleet. (The first
    // snapshot's last page may already show the last report: its pages are read as they are
    // sent.)
    const held = new Map<string, string>();
    /** The next message, applied to what the watcher holds. */
    const read = async (): Promise<Msg["message"]> => {
      const next = await stream.next();
      assert.ok(!next.done, "the stream ended");
      const m = next.value.message;
      if (m.case === "snapshot") {
        if (m.value.first) held.clear();
        for (const s of m.value.machines) held.set(s.machineId, s.currentGeneration);
      } else if (m.case === "change" && m.value.machine)
        held.set(m.value.machineId, m.value.machine.currentGeneration);
      return m;
    };
    for (let resynced = false; !resynced; ) {
      const m = await read();
      resynced = m.case === "snapshot" && m.value.reason === SnapshotReason.SLOW_CONSUMER && m.value.last;
    }
    assert.equal(held.size, 601);
    // The overflow may have been noticed while a change before the last report was delivered (the
    // feed runs apart from the report's acknowledgement, as on PostgreSQL): the resync snapshot
    // then predates the last report, which follows it as a change. Nothing is lost either way.
    const last = storePath("sys-ws-late", generation);
    for (let after = 0; held.get("ws-late") !== last; after++) {
      assert.ok(after < 5, `ws-late's last report never reached the watcher (holds ${held.get("ws-late")})`);
      await read();
    }
    assert.equal(held.size, 601);
    abort.abort();
    await stream.return?.();
  }

  it("ends a watch whose API key is revoked", async () => {
    const temp = await h.fleet("admin").createApiKey({ name: "watch-temp", role: ApiKeyRole.READONLY });
    const abort = new AbortController();
    const inbox = new Inbox<Msg>(h.fleet(temp.secret).watchFleet({}, { signal: abort.signal }));
    await inbox.next("snapshot", snapshotEnd(SnapshotReason.INITIAL));
    await h.fleet("admin").revokeApiKey({ key: "watch-temp" });
    await inbox.finished;
    assert.equal(Code[ConnectError.from(inbox.error).code], Code[Code.Unauthenticated]);
  });

  it("rejects bad request fields with INVALID_ARGUMENT naming the field", async () => {
    const cases: [Parameters<ReturnType<Harness["fleet"]>["watchFleet"]>[0], RegExp][] = [
      [{ tags: ["bad tag"] }, /^tags\[0\]/],
      [{ match: 7 as TagMatch }, /^match/],
      [{ snapshotPageSize: 5001 }, /^snapshot_page_size/],
      [{ resumeRevision: 3n }, /^resume_epoch/],
      [{ resumeEpoch: "x".repeat(65), resumeRevision: 3n }, /^resume_epoch/],
    ];
    for (const [req, message] of cases) {
      const { inbox } = watch(req);
      await inbox.finished;
      const err = ConnectError.from(inbox.error);
      assert.equal(Code[err.code], Code[Code.InvalidArgument], err.rawMessage);
      assert.match(err.rawMessage, message);
    }
  });
});
