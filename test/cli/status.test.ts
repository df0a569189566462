import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { statusFooter, statusJson, statusRows } from "../../src/cli/commands/status.js";
import { GetFleetStatusResponseSchema } from "../../src/gen/nixfleet/v1/fleet_pb.js";
import { MachineLifecycle } from "../../src/gen/nixfleet/v1/types_pb.js";

const G = (n: number) =>
  `/nix/store/${String(n).padStart(2, "0")}c8vxs2ja1k5f5v0r4zm0h4y3hs7a0f-nixos-system-x`;

const fleet = create(GetFleetStatusResponseSchema, {
  machines: [
    {
      machineId: "web-01",
      lifecycle: MachineLifecycle.ACTIVE,
      desiredGeneration: G(1),
      currentGeneration: G(1),
      inSync: true,
      activeRolloutId: "r-1",
      activeBatch: 0,
    },
    {
      machineId: "web-02",
      lifecycle: MachineLifecycle.ACTIVE,
      desiredGeneration: G(2),
      currentGeneration: G(1),
      inSync: false,
      activeRolloutId: "r-1",
      activeBatch: 1,
    },
    { machineId: "web-03", lifecycle: MachineLifecycle.ACTIVE },
    { machineId: "old-01", lifecycle: MachineLifecycle.DECOMMISSIONED, desiredGeneration: G(1) },
  ],
});

describe("nixfleet status", () => {
  it("the footer counts only hosts with something assigned; the others are said apart", () => {
    assert.equal(
      statusFooter(fleet),
      "1/2 hosts in sync (1 with nothing assigned, 1 decommissioned not counted)",
    );
  });

  it("--json: activeBatch is 1-based like the table's b1, present for the first batch, absent without a rollout", () => {
    const json = statusJson(fleet) as { machines: { machineId: string; activeBatch?: number }[] };
    const rows = statusRows(fleet.machines);
    assert.deepEqual(
      json.machines.map((m) => [m.machineId, m.activeBatch]),
      [
        ["web-01", 1],
        ["web-02", 2],
        ["web-03", undefined],
        ["old-01", undefined],
      ],
    );
    assert.equal(rows[0]!.at(-1), "r-1 b1");
    assert.equal(rows[1]!.at(-1), "r-1 b2");
  });
});
