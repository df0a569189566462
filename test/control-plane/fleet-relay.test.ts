/**
 * WatchFleet across replicas on one PostgreSQL database: a stream open on replica A tells of
 * changes made on replica B (an agent's report B received, an operator's desired generation set
 * through B), relayed over the cluster bus; and B's agent streams opening and closing, learnt from
 * shared presence.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { AgentMessage, ControlMessage } from "../../src/gen/nixfleet/v1/agent_pb.js";
import {
  FleetChangeKind,
  SnapshotReason,
  type WatchFleetResponse,
} from "../../src/gen/nixfleet/v1/fleet_pb.js";
import { Outcome } from "../../src/gen/nixfleet/v1/types_pb.js";
import { postgresUnavailable } from "../fixtures/postgres.js";
import { type Harness, replicasOnPostgres } from "./harness.js";
import { Feed, Inbox, storePath } from "./helpers.js";

type Msg = WatchFleetResponse;

const change = (kind: FleetChangeKind, machineId: string) => (m: Msg) =>
  m.message.case === "change" && m.message.value.kind === kind && m.message.value.machineId === machineId;

describe("WatchFleet across replicas", { skip: postgresUnavailable() }, () => {
  const replicas = replicasOnPostgres("fleet-relay");

  it("a stream on A receives a report B received and a desired generation set through B", async () => {
    const { a, b } = replicas;
    const report = (h: Harness, outcome: Outcome) =>
      h.agent("fr-01").report({
        machineId: "fr-01",
        currentGeneration: storePath("sys-fr-01", 1),
        outcome,
        tags: ["relay"],
      });
    await report(a, Outcome.UP_TO_DATE);
    const abort = new AbortController();
    const inbox = new Inbox<Msg>(
      a.fleet("readonly").watchFleet({ tags: ["relay"] }, { signal: abort.signal }),
    );
    const snapshot = await inbox.next(
      "snapshot",
      (m) =>
        m.message.case === "snapshot" &&
        m.message.value.last &&
        m.message.value.reason === SnapshotReason.INITIAL,
    );
    assert.deepEqual(
      snapshot.message.case === "snapshot" && snapshot.message.value.machines.map((s) => s.machineId),
      ["fr-01"],
    );

    let from = inbox.messages.length;
    await report(b, Outcome.APPLY_FAILED);
    const reported = await inbox.next("B's report on A", change(FleetChangeKind.REPORT, "fr-01"), from);
    assert.equal(
      reported.message.case === "change" && reported.message.value.machine?.lastOutcome,
      Outcome.APPLY_FAILED,
    );

    from = inbox.messages.length;
    const target = storePath("sys-fr-01", 2);
    await b.fleet("deploy").setDesiredGeneration({ machineId: "fr-01", storePath: target });
    const desired = await inbox.next(
      "B's desired change on A",
      change(FleetChangeKind.DESIRED, "fr-01"),
      from,
    );
    assert.equal(
      desired.message.case === "change" && desired.message.value.machine?.desiredGeneration,
      target,
    );

    // A Session stream B holds: A's watchers learn it from shared presence, agreeing with it.
    from = inbox.messages.length;
    const feed = new Feed<Partial<AgentMessage>>();
    feed.push({
      message: {
        case: "hello",
        value: { machineId: "fr-01", currentGeneration: storePath("sys-fr-01", 1), tags: ["relay"] } as never,
      },
    });
    const session = new Inbox<ControlMessage>(b.agent("fr-01").session(feed as AsyncIterable<never>));
    const connected = await inbox.next("B's stream on A", change(FleetChangeKind.CONNECTED, "fr-01"), from);
    assert.equal(connected.message.case === "change" && connected.message.value.machine?.connected, true);
    from = inbox.messages.length;
    feed.end();
    await session.finished;
    const gone = await inbox.next(
      "B's stream gone, on A",
      change(FleetChangeKind.DISCONNECTED, "fr-01"),
      from,
    );
    assert.equal(gone.message.case === "change" && gone.message.value.machine?.connected, false);

    abort.abort();
    await inbox.finished;
  });
});
