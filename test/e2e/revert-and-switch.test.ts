/**
 * End-to-end, scenarios 4 and 5: on_failure = REVERT gives every machine the rollout touched —
 * the failed batch included — its previous generation back and fails the rollout; a switch that
 * exits non-zero, and one that hangs past activationTimeout, are rolled back to the exact
 * previous generation.
 */
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { after, before, describe, it } from "node:test";
import {
  GetRolloutResponseSchema,
  RolloutEventType,
  RolloutStatus,
} from "../../src/gen/nixfleet/v1/fleet_pb.js";
import { Outcome } from "../../src/gen/nixfleet/v1/types_pb.js";
import { Fleet, waitFor } from "../fixtures/fleet.js";
import { makeTempDir, removeTempDir } from "../fixtures/tmp.js";

/** Processes whose command line mentions `needle` (e.g. a store path's switch script). */
function processesRunning(needle: string): number[] {
  return readdirSync("/proc")
    .filter((p) => /^\d+$/.test(p))
    .filter((p) => {
      try {
        return readFileSync(`/proc/${p}/cmdline`, "utf8").includes(needle);
      } catch {
        return false;
      }
    })
    .map(Number);
}

describe("e2e: revert, failing and hanging switches", () => {
  const dir = makeTempDir("nixfleet-e2e-revert-");
  let fleet: Fleet;
  const outcomeOf = async (name: string) =>
    (await fleet.status()).machines.find((m) => m.machineId === name)!;

  before(async () => {
    fleet = await Fleet.create({
      dir,
      hosts: ["web-01", "web-02", "web-03"].map((name) => ({ name, tags: ["web"] })),
      systems: [
        { label: "v2" },
        { label: "v3" },
        { label: "broken", switch: "fail", exitCode: 3 },
        { label: "hung", switch: "hang" },
      ],
      agentConfig: { activationTimeout: 4 },
    });
    fleet.startAgents();
    await waitFor(
      "three connected machines",
      async () => (await fleet.status()).machines.filter((m) => m.connected).length === 3,
      60_000,
    );
    const v2 = await fleet.release("v2");
    const r = await fleet.cli(
      [
        "rollout",
        "start",
        "--release",
        v2,
        "--tags",
        "web",
        "--strategy",
        "all-at-once",
        "--wait",
        "--wait-timeout",
        "120s",
      ],
      {
        human: true,
      },
    );
    assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
  });

  after(async () => {
    await fleet?.close();
    removeTempDir(dir);
  });

  it(
    "scenario 4: REVERT restores earlier batches and the failed batch, and fails the rollout",
    {
      timeout: 180_000,
    },
    () =>
      fleet.explain(async () => {
        fleet.breakHealth("web-02");
        const v3 = await fleet.release("v3");
        const r = await fleet.cli(
          [
            "rollout",
            "start",
            "--release",
            v3,
            "--tags",
            "web",
            "--batch-size",
            "1,1,1",
            "--on-failure",
            "revert",
            "--wait",
            "--wait-timeout",
            "120s",
          ],
          { human: true },
        );
        assert.equal(r.code, 1, `${r.stdout}\n${r.stderr}`);
        const id = /rollout (r-[0-9a-f-]+) FAILED/.exec(r.stderr)?.[1];
        assert.ok(id, r.stderr);
        assert.match(r.stderr, /previous generations back/);

        // web-01 (batch 1) went to v3 and is sent back to v2; web-02 (batch 2, failed) rolled
        // itself back and keeps v2 as desired; web-03 (batch 3) was never touched.
        for (const name of ["web-01", "web-02", "web-03"]) {
          const v2 = fleet.host(name).systems["v2"]!.path;
          await waitFor(
            `${name} back on v2`,
            async () => {
              const m = await outcomeOf(name);
              return (
                m.currentGeneration === v2 &&
                m.desiredGeneration === v2 &&
                fleet.host(name).host.current() === v2
              );
            },
            60_000,
            250,
          );
        }
        const web01 = fleet.journal("web-01");
        assert.equal(
          web01.at(-1)?.desired,
          fleet.host("web-01").systems["v2"]!.path,
          "the revert is a deploy of v2",
        );
        assert.equal(web01.at(-1)?.previous, fleet.host("web-01").systems["v3"]!.path);
        assert.equal(web01.at(-1)?.outcome, "DEPLOYED");
        assert.equal(fleet.journal("web-02").at(-1)?.outcome, "ROLLED_BACK");
        assert.ok(
          !fleet
            .host("web-03")
            .host.switchLog()
            .some((e) => e.path === fleet.host("web-03").systems["v3"]!.path),
          "batch 3 never started",
        );

        const rollout = await fleet.cliAs(GetRolloutResponseSchema, ["rollout", "status", id!]);
        assert.equal(rollout.rollout?.status, RolloutStatus.FAILED);
        const reverted = rollout.events.filter((e) => e.type === RolloutEventType.REVERTED);
        assert.equal(reverted.length, 1);
        assert.match(
          reverted[0]!.message,
          /restored the previous desired generation of 2 machines: web-01, web-02/,
        );
        fleet.fixHealth("web-02");
      }),
  );

  it(
    "scenario 5a: a switch that exits non-zero is rolled back through the previous generation's own script",
    {
      timeout: 180_000,
    },
    () =>
      fleet.explain(async () => {
        const host = fleet.host("web-03");
        const v2 = host.systems["v2"]!.path;
        const broken = host.systems["broken"]!.path;
        await fleet.cliOk(["machines", "set-desired", "web-03", broken, "--cache-url", fleet.cacheUrl]);
        await waitFor(
          "web-03 to roll back",
          async () => {
            const m = await outcomeOf("web-03");
            return (
              [Outcome.ROLLED_BACK, Outcome.QUARANTINED].includes(m.lastOutcome) && m.currentGeneration === v2
            );
          },
          60_000,
          250,
        );
        assert.equal(host.host.current(), v2);
        assert.equal(host.host.profile(), v2);
        const starts = host.host.switchLog().filter((e) => e.event === "start");
        const i = starts.findIndex((e) => e.path === broken);
        assert.ok(i >= 0);
        assert.equal(starts[i + 1]?.path, v2, "rolled back with v2's own switch-to-configuration");
        const last = fleet.journal("web-03").at(-1)!;
        assert.equal(last.outcome, "ROLLED_BACK");
        assert.equal(last.previous, v2);
        assert.match(last.message ?? "", /exit(ed)? (code )?3/, "the reason carries the switch's exit code");
      }),
  );

  it(
    "scenario 5b: a switch that hangs past activationTimeout is stopped and rolled back",
    {
      timeout: 180_000,
    },
    () =>
      fleet.explain(async () => {
        const host = fleet.host("web-01");
        const v2 = host.systems["v2"]!.path;
        const hung = host.systems["hung"]!.path;
        await fleet.cliOk(["machines", "set-desired", "web-01", hung, "--cache-url", fleet.cacheUrl]);
        await waitFor(
          "the hung switch to start",
          () => host.host.switchLog().some((e) => e.path === hung && e.event === "hang"),
          60_000,
        );
        await waitFor(
          "web-01 to roll back",
          async () => {
            const m = await outcomeOf("web-01");
            return (
              [Outcome.ROLLED_BACK, Outcome.QUARANTINED].includes(m.lastOutcome) && m.currentGeneration === v2
            );
          },
          60_000,
          250,
        );
        assert.equal(host.host.current(), v2);
        const last = fleet.journal("web-01").at(-1)!;
        assert.equal(last.desired, hung);
        assert.equal(last.outcome, "ROLLED_BACK");
        assert.match(
          last.message ?? "",
          /4(\.0)? ?s|timed out|timeout/i,
          "the reason says the switch ran out of time",
        );
        await waitFor(
          "the hung switch's processes to be gone",
          () => processesRunning(`${hung}/bin/switch-to-configuration`).length === 0,
          10_000,
        );
      }),
  );
});
