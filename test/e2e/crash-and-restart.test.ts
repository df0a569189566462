/**
 * End-to-end, scenarios 7, 8, 9 and 10: an agent killed with SIGKILL in the middle of its switch
 * settles the journaled deployment truthfully on restart (commit, or roll back); a control plane
 * restarted mid-rollout finishes the rollout, agents reconnect and `--wait` rides it out; an
 * agent started while the control plane is down registers once it is up; a machine that never
 * reports fails its batch at the health timeout.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import {
  CreateReleaseResponseSchema,
  GetRolloutResponseSchema,
  MachineGateState,
  RolloutStatus,
} from "../../src/gen/nixfleet/v1/fleet_pb.js";
import { Outcome } from "../../src/gen/nixfleet/v1/types_pb.js";
import { Fleet, waitFor } from "../fixtures/fleet.js";
import { makeTempDir, removeTempDir } from "../fixtures/tmp.js";

describe("e2e: crashes, restarts and silence", () => {
  const dir = makeTempDir("nixfleet-e2e-crash-");
  let fleet: Fleet;
  const machine = async (name: string) => (await fleet.status()).machines.find((m) => m.machineId === name);

  before(async () => {
    fleet = await Fleet.create({
      dir,
      hosts: [
        { name: "crash-01", tags: ["crash"] },
        { name: "crash-02", tags: ["crash"] },
        { name: "restart-01", tags: ["restart"] },
        { name: "restart-02", tags: ["restart"] },
        { name: "late-01", tags: ["late"] },
      ],
      systems: [
        { label: "gated-good", gate: true },
        { label: "gated-bad", gate: true, healthy: false },
        { label: "slow", delaySeconds: 2 },
      ],
    });
    for (const name of ["crash-01", "crash-02", "restart-01", "restart-02"]) fleet.startAgent(name);
    await waitFor(
      "four connected machines",
      async () => (await fleet.status()).machines.filter((m) => m.connected).length === 4,
      60_000,
    );
  });

  after(async () => {
    await fleet?.close();
    removeTempDir(dir);
  });

  it(
    "scenario 7a: SIGKILL mid-switch, the switch finishes after the restart: the agent waits for it and commits",
    { timeout: 180_000 },
    () =>
      fleet.explain(async () => {
        const h = fleet.host("crash-01");
        const good = h.systems["gated-good"]!.path;
        await fleet.cliOk(["machines", "set-desired", "crash-01", good, "--cache-url", fleet.cacheUrl]);
        await waitFor(
          "the switch to start",
          () => h.host.switchLog().some((e) => e.path === good && e.event === "start"),
          60_000,
        );
        await h.agent!.kill9();
        const deployment = fleet.journal("crash-01").at(-1)!;
        assert.equal(deployment.desired, good);
        assert.notEqual(deployment.phase, "done", "killed mid-deployment: the journal holds the intent");

        const restarted = fleet.startAgent("crash-01");
        // The detached switch is still running: the new agent must wait for it, not start another.
        await restarted.waitForLog(
          (l) => l["event"] === "recovery" || String(l.msg ?? "").includes("recover"),
          60_000,
        );
        h.host.releaseGate("gated-good");
        await waitFor(
          "crash-01 to report DEPLOYED",
          async () => {
            const m = await machine("crash-01");
            // DEPLOYED, or UP_TO_DATE once re-confirmed on a later check (the journal says which).
            return (
              [Outcome.DEPLOYED, Outcome.UP_TO_DATE].includes(m!.lastOutcome) && m!.currentGeneration === good
            );
          },
          60_000,
          250,
        );
        assert.equal(h.host.current(), good);
        const settled = fleet.journal("crash-01").find((r) => r.id === deployment.id)!;
        assert.equal(settled.outcome, "DEPLOYED", "the same journaled deployment was settled");
        assert.equal(
          h.host.switchLog().filter((e) => e.event === "start" && e.path === good).length,
          1,
          "no second switch was stacked on the running one",
        );
      }),
  );

  it(
    "scenario 7b: SIGKILL mid-switch to an unhealthy generation: on restart it verifies, rolls back and says so",
    { timeout: 180_000 },
    () =>
      fleet.explain(async () => {
        const h = fleet.host("crash-02");
        const base = h.systems["base"]!.path;
        const bad = h.systems["gated-bad"]!.path;
        await fleet.cliOk(["machines", "set-desired", "crash-02", bad, "--cache-url", fleet.cacheUrl]);
        await waitFor(
          "the switch to start",
          () => h.host.switchLog().some((e) => e.path === bad && e.event === "start"),
          60_000,
        );
        await h.agent!.kill9();
        const deployment = fleet.journal("crash-02").at(-1)!;
        // The switch completes while no agent runs.
        h.host.releaseGate("gated-bad");
        await waitFor("the switch to flip current-system", () => h.host.current() === bad, 30_000);

        fleet.startAgent("crash-02");
        await waitFor(
          "crash-02 to report ROLLED_BACK",
          async () =>
            [Outcome.ROLLED_BACK, Outcome.QUARANTINED].includes((await machine("crash-02"))!.lastOutcome),
          60_000,
          250,
        );
        assert.equal(h.host.current(), base, "back on exactly the previous generation");
        assert.equal(h.host.profile(), base);
        const settled = fleet.journal("crash-02").find((r) => r.id === deployment.id)!;
        assert.equal(settled.outcome, "ROLLED_BACK");
        assert.match(settled.message ?? "", /generation-healthy/);
      }),
  );

  it(
    "scenario 8: a control plane restarted mid-rollout finishes it; agents reconnect; --wait rides it out",
    { timeout: 180_000 },
    () =>
      fleet.explain(async () => {
        const release = await fleet.release("slow", ["restart-01", "restart-02"]);
        const waiting = fleet.cli(
          [
            "rollout",
            "start",
            "--release",
            release,
            "--tags",
            "restart",
            "--strategy",
            "canary",
            "--wait",
            "--wait-timeout",
            "150s",
          ],
          { human: true },
        );
        const canary = fleet.host("restart-01");
        await waitFor(
          "the canary's switch to start",
          () => canary.host.switchLog().some((e) => e.event === "start"),
          60_000,
        );
        await fleet.cp.restart();
        const r = await waiting;
        assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
        assert.match(r.stdout, /completed: 2 machines healthy/);
        assert.match(r.stderr, /lost the control plane .*reconnecting/);
        for (const name of ["restart-01", "restart-02"]) {
          assert.equal(fleet.host(name).host.current(), fleet.host(name).systems["slow"]!.path);
        }
        await waitFor(
          "both agents' push streams back",
          async () =>
            (await fleet.status()).machines.filter((m) => m.machineId.startsWith("restart-") && m.connected)
              .length === 2,
          60_000,
          250,
        );
      }),
  );

  it(
    "scenario 9: an agent started while the control plane is down retries and registers once it is up",
    { timeout: 180_000 },
    () =>
      fleet.explain(async () => {
        const listen = fleet.cp.listenAddress;
        await fleet.cp.stop();
        const agent = fleet.startAgent("late-01");
        const first = await agent.waitForLog(
          (l) => l.level === "warn" && /retry/i.test(String(l.msg ?? "")),
          60_000,
        );
        const firstIndex = agent.lines.indexOf(first);
        await agent.waitForLog(
          (l) => l.level === "warn" && /retry/i.test(String(l.msg ?? "")),
          60_000,
          firstIndex + 1,
        );
        assert.ok(agent.running, "a control plane that is down is not fatal");
        await fleet.cp.start(listen);
        const m = await waitFor(
          "late-01 to register",
          async () => {
            const x = await machine("late-01");
            return x?.connected ? x : undefined;
          },
          60_000,
          250,
        );
        assert.deepEqual(m.tags, ["late"]);
        assert.equal(m.currentGeneration, fleet.host("late-01").systems["base"]!.path);
      }),
  );

  it(
    "scenario 10: a machine that never reports fails its batch at the health timeout",
    { timeout: 180_000 },
    () =>
      fleet.explain(async () => {
        await fleet.cliOk(["machines", "register", "silent-01", "--tags", "silent", "--lifecycle", "active"]);
        // Any valid store path will do: nothing will ever fetch it.
        const rel = await fleet.cliAs(CreateReleaseResponseSchema, [
          "release",
          "create",
          "--entry",
          `silent-01=${fleet.host("late-01").systems["slow"]!.path}`,
        ]);
        const releaseId = rel.release!.id;
        const r = await fleet.cli(
          [
            "rollout",
            "start",
            "--release",
            releaseId,
            "--hosts",
            "silent-01",
            "--health-timeout",
            "3",
            "--wait",
            "--wait-timeout",
            "60s",
          ],
          { human: true },
        );
        assert.equal(r.code, 1);
        assert.match(r.stderr, /PAUSED/);
        const id = /rollout (r-[0-9a-f-]+) is PAUSED/.exec(r.stderr)![1]!;
        const rollout = await fleet.cliAs(GetRolloutResponseSchema, ["rollout", "status", id]);
        assert.equal(rollout.rollout?.status, RolloutStatus.PAUSED);
        const gate = rollout.rollout!.batches[0]!.machines[0]!;
        assert.equal(gate.state, MachineGateState.UNHEALTHY);
        assert.match(gate.reason, /health timeout/);
        await fleet.cliOk(["rollout", "cancel", id]);
      }),
  );
});
