import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { FleetView } from "../../src/common/fleet-view.js";
import {
  FleetChangeKind,
  HealthState,
  SnapshotReason,
  WatchFleetResponseSchema,
} from "../../src/gen/nixfleet/v1/fleet_pb.js";

const msg = (revision: number, message: MessageInitShape<typeof WatchFleetResponseSchema>["message"]) =>
  create(WatchFleetResponseSchema, { epoch: "e1", revision: BigInt(revision), message });
const page = (revision: number, ids: string[], first: boolean, last: boolean) =>
  msg(revision, {
    case: "snapshot",
    value: {
      machines: ids.map((machineId) => ({ machineId, inSync: true, health: { state: HealthState.HEALTHY } })),
      first,
      last,
      reason: SnapshotReason.INITIAL,
      staleAfterSeconds: 300,
    },
  });

describe("FleetView", () => {
  it("shows a snapshot once its last page arrived, then applies changes and removals", () => {
    const view = new FleetView();
    assert.equal(view.apply(page(3, ["b", "a"], true, false)), false);
    assert.deepEqual(view.resumePoint(), { resumeEpoch: "", resumeRevision: 0n }, "mid-snapshot: no resume");
    assert.equal(view.apply(page(3, ["c"], false, true)), true);
    assert.deepEqual(
      view.list().map((m) => m.machineId),
      ["a", "b", "c"],
    );
    assert.deepEqual(view.summary(), { total: 3, inSync: 3, stale: 0, healthy: 3 });
    assert.equal(
      view.apply(
        msg(5, {
          case: "change",
          value: { kind: FleetChangeKind.STALE, machineId: "b", machine: { machineId: "b", stale: true } },
        }),
      ),
      true,
    );
    view.apply(msg(6, { case: "change", value: { kind: FleetChangeKind.REMOVED, machineId: "a" } }));
    assert.deepEqual(
      view.list().map((m) => [m.machineId, m.stale]),
      [
        ["b", true],
        ["c", false],
      ],
    );
    assert.deepEqual(view.resumePoint(), { resumeEpoch: "e1", resumeRevision: 6n });
    // A resync replaces everything held.
    view.apply(page(9, ["z"], true, true));
    assert.deepEqual(
      view.list().map((m) => m.machineId),
      ["z"],
    );
  });
});
