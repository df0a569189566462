/**
 * End-to-end, scenarios 1, 2, 3 and 13 of the catalogue: a fresh fleet registers itself; a canary
 * rollout completes on push alone; a failing health check rolls the canary back to exactly its
 * previous generation (through that generation's own switch script), quarantines the bad one
 * and pauses the rollout; resuming after the fix redeploys; every documented metric is exposed.
 * Real control plane, real agents, real Nix, driven through the real CLI.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { after, before, describe, it } from "node:test";
import { BatchStatus, MachineGateState, RolloutStatus } from "../../src/gen/nixfleet/v1/fleet_pb.js";
import { MachineLifecycle, Outcome } from "../../src/gen/nixfleet/v1/types_pb.js";
import { Fleet, waitFor } from "../fixtures/fleet.js";
import { makeTempDir, removeTempDir } from "../fixtures/tmp.js";

const HOSTS = [
  { name: "web-01", tags: ["web", "eu"] },
  { name: "web-02", tags: ["web", "us"] },
  { name: "db-01", tags: ["db", "eu"] },
];

describe("e2e: registration, canary rollout over push, health-gated rollback, metrics", () => {
  const dir = makeTempDir("nixfleet-e2e-rollouts-");
  let fleet: Fleet;

  before(async () => {
    fleet = await Fleet.create({
      dir,
      hosts: HOSTS,
      systems: [{ label: "v2" }, { label: "v3" }],
      // Polls so rare that only a push can deliver a rollout within these tests.
      agentConfig: { pollInterval: 3600 },
    });
    fleet.startAgents();
  });

  after(async () => {
    await fleet?.close();
    removeTempDir(dir);
  });

  it(
    "scenario 1: three agents register themselves with their tags and show up idle",
    {
      timeout: 180_000,
    },
    () =>
      fleet.explain(async () => {
        const status = await waitFor(
          "three connected machines",
          async () => {
            const s = await fleet.status();
            return s.machines.length === 3 && s.machines.every((m) => m.connected && m.health?.generation)
              ? s
              : undefined;
          },
          60_000,
        );
        for (const spec of HOSTS) {
          const m = status.machines.find((x) => x.machineId === spec.name)!;
          assert.deepEqual(m.tags, [...spec.tags].sort(), `${spec.name} tags synced from its agent`);
          assert.equal(m.lifecycle, MachineLifecycle.ACTIVE, "auto-registered machines are active");
          assert.equal(m.currentGeneration, fleet.host(spec.name).systems["base"]!.path);
          assert.equal(m.desiredGeneration, "", "nothing assigned yet: idle");
          assert.equal(m.inSync, false);
        }
        const list = await fleet.cli(["machines", "list", "--tags", "eu"], { human: true });
        assert.match(list.stdout, /db-01\s+active/);
        assert.match(list.stdout, /web-01\s+active/);
        assert.doesNotMatch(list.stdout, /web-02/);
      }),
  );

  it(
    "scenario 2: a canary rollout to the web hosts completes, delivered by push",
    {
      timeout: 180_000,
    },
    () =>
      fleet.explain(async () => {
        const release = await fleet.release("v2", ["web-01", "web-02"]);
        const r = await fleet.cli(
          [
            "rollout",
            "start",
            "--release",
            release,
            "--tags",
            "web",
            "--strategy",
            "canary",
            "--wait",
            "--wait-timeout",
            "90s",
          ],
          { human: true },
        );
        assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
        assert.match(r.stdout, /completed: 2 machines healthy/);
        const rollouts = await fleet.cli(["rollout", "list", "--status", "completed"], { human: true });
        assert.match(rollouts.stdout, /completed\s+canary\s+2\/2/);

        const status = await fleet.status();
        for (const name of ["web-01", "web-02"]) {
          const m = status.machines.find((x) => x.machineId === name)!;
          const v2 = fleet.host(name).systems["v2"]!.path;
          assert.equal(m.currentGeneration, v2);
          assert.equal(m.desiredGeneration, v2);
          assert.ok(m.inSync);
          // DEPLOYED, or UP_TO_DATE once the agent has re-confirmed it on a later check.
          assert.ok([Outcome.DEPLOYED, Outcome.UP_TO_DATE].includes(m.lastOutcome), Outcome[m.lastOutcome]);
          assert.equal(fleet.host(name).host.current(), v2, `${name}'s current-system`);
          assert.equal(fleet.host(name).host.profile(), v2, `${name}'s system profile`);
          const journal = fleet.journal(name);
          assert.equal(journal.at(-1)?.outcome, "DEPLOYED");
          assert.equal(journal.at(-1)?.previous, fleet.host(name).systems["base"]!.path);
        }
        assert.equal(
          status.machines.find((m) => m.machineId === "db-01")!.currentGeneration,
          fleet.host("db-01").systems["base"]!.path,
        );

        // The rollout is on the audit trail under the key that made it.
        const audit = await fleet.cli(["audit", "--action", "rollout.create"], { human: true });
        assert.match(audit.stdout, /apikey:admin\s+rollout\.create/);
        // pollInterval is an hour, so the agents can only have learned of their batch by push:
        // each logged the pushed assignment of its own v2.
        for (const name of ["web-01", "web-02"]) {
          const v2 = fleet.host(name).systems["v2"]!.path;
          assert.ok(
            fleet.host(name).agent!.find((l) => l["event"] === "pushed" && l["desired"] === v2).length > 0,
            `${name} logged the push of ${v2}:\n${fleet.host(name).agent!.tail(20)}`,
          );
        }
      }),
  );

  it(
    "scenario 3: a failing health check rolls the canary back to exactly its previous generation and pauses; resume after the fix redeploys",
    {
      timeout: 180_000,
    },
    () =>
      fleet.explain(async () => {
        fleet.breakHealth("web-01");
        const release = await fleet.release("v3", ["web-01", "web-02"]);
        const started = await fleet.cli(
          [
            "rollout",
            "start",
            "--release",
            release,
            "--hosts",
            "web-01,web-02",
            "--strategy",
            "canary",
            "--wait",
            "--wait-timeout",
            "120s",
            "--health-timeout",
            "120",
          ],
          { human: true },
        );
        assert.equal(started.code, 1, "a paused rollout is a failure for --wait");
        const id = /rollout (r-[0-9a-f-]+) is PAUSED/.exec(started.stderr)?.[1];
        assert.ok(id, started.stderr);
        assert.match(started.stderr, /web-01/);
        assert.match(started.stderr, new RegExp(`nixfleet rollout resume ${id} --wait`));

        const web01 = fleet.host("web-01");
        const v2 = web01.systems["v2"]!.path;
        const v3 = web01.systems["v3"]!.path;
        // The failing health report (sent once verifyTimeout ran out) pauses the rollout while the
        // agent is still rolling back; its ROLLED_BACK report follows (then QUARANTINED on later checks).
        const outcomeOf = async (name: string) =>
          (await fleet.status()).machines.find((x) => x.machineId === name)!.lastOutcome;
        await waitFor(
          "web-01 to report ROLLED_BACK",
          async () => [Outcome.ROLLED_BACK, Outcome.QUARANTINED].includes(await outcomeOf("web-01")),
          30_000,
          200,
        );
        assert.equal(web01.host.current(), v2, "rolled back to exactly the previous generation");
        assert.equal(web01.host.profile(), v2, "the profile points at the previous generation again");
        const switches = web01.host.switchLog().filter((e) => e.event === "start");
        const toV3 = switches.findIndex((e) => e.path === v3);
        assert.ok(toV3 >= 0, "the canary switched to v3");
        assert.equal(switches[toV3 + 1]?.path, v2, "the rollback ran v2's own switch-to-configuration");
        assert.equal(
          fleet.host("web-02").host.current(),
          fleet.host("web-02").systems["v2"]!.path,
          "batch 2 never started",
        );

        const journal = fleet.journal("web-01");
        assert.equal(journal.at(-1)?.desired, v3);
        assert.equal(journal.at(-1)?.previous, v2);
        assert.equal(journal.at(-1)?.outcome, "ROLLED_BACK");
        assert.match(
          journal.at(-1)?.message ?? "",
          /generation-healthy/,
          "the reason names the failing check",
        );
        const events = await fleet.cli(["rollout", "status", id!], { human: true });
        assert.match(events.stdout, /web-01 UNHEALTHY: .*generation-healthy/);

        // Quarantine: the desired generation is still v3 and the agent keeps checking (every second
        // during a rollout); it reports QUARANTINED instead of trying v3 again.
        await waitFor(
          "web-01 to report QUARANTINED on a later check",
          async () => (await outcomeOf("web-01")) === Outcome.QUARANTINED,
          30_000,
          250,
        );
        assert.equal(
          web01.host.switchLog().filter((e) => e.event === "start" && e.path === v3).length,
          1,
          "a quarantined generation is not applied again",
        );

        // Fix the cause, resume: the batch is deployed again (a new revision lifts the quarantine).
        fleet.fixHealth("web-01");
        const resumed = await fleet.cli(["rollout", "resume", id!, "--wait", "--wait-timeout", "90s"], {
          human: true,
        });
        assert.equal(resumed.code, 0, `${resumed.stdout}\n${resumed.stderr}`);
        assert.equal(web01.host.current(), v3);
        assert.equal(fleet.host("web-02").host.current(), fleet.host("web-02").systems["v3"]!.path);
        const final = await fleet.waitForRollout(
          id!,
          (r) => r.status === RolloutStatus.COMPLETED,
          "completed",
        );
        assert.ok(final.batches.every((b) => b.status === BatchStatus.SUCCEEDED));
        assert.ok(
          final.batches.flatMap((b) => b.machines).every((x) => x.state === MachineGateState.HEALTHY),
        );
      }),
  );

  it(
    "scenario 13: every documented agent and control-plane metric is exposed with sane values",
    {
      timeout: 180_000,
    },
    () =>
      fleet.explain(async () => {
        const agent = fleet.host("web-01").agent!;
        const port = (await agent.waitForLog({ event: "metrics_listening" }))["port"];
        const agentMetrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
        for (const name of [
          "nixfleet_agent_state",
          "nixfleet_agent_poll_duration_seconds",
          "nixfleet_agent_last_poll_timestamp_seconds",
          "nixfleet_agent_health_check_duration_seconds",
          "nixfleet_agent_health_check_status",
          "nixfleet_agent_generation_info",
        ]) {
          assert.match(agentMetrics, new RegExp(`^${name}`, "m"), `${name} missing`);
        }
        const states = [...agentMetrics.matchAll(/^nixfleet_agent_state\{state="(\w+)"\} (\d+)/gm)];
        assert.equal(states.filter((s) => s[2] === "1").length, 1, "agent_state is one-hot");
        const generations = [
          ...agentMetrics.matchAll(/^nixfleet_agent_generation_info\{generation="([^"]+)"\} 1/gm),
        ];
        assert.deepEqual(
          generations.map((g) => g[1]),
          [fleet.host("web-01").systems["v3"]!.path],
          "generation_info carries only the current generation",
        );
        assert.match(
          agentMetrics,
          /^nixfleet_agent_health_check_status\{check_name="generation-healthy"\} 1/m,
        );
        const lastPoll = Number(/^nixfleet_agent_last_poll_timestamp_seconds (\S+)/m.exec(agentMetrics)?.[1]);
        assert.ok(
          lastPoll > Date.now() / 1000 - 3600 && lastPoll <= Date.now() / 1000 + 5,
          "last poll is a recent unix time",
        );

        await fleet.cliOk(["status"]); // a FleetService call, so the RPC metrics have a sample
        // The control plane's certificate is from the test CA, which curl is told to trust.
        const text = execFileSync("curl", [
          "-sS",
          "--fail",
          "--cacert",
          fleet.pki.ca,
          `${fleet.cp.url}/metrics`,
        ]).toString();
        for (const name of [
          "nixfleet_fleet_size 3",
          'nixfleet_machines_by_lifecycle{lifecycle="active"} 3',
          "nixfleet_machines_in_sync",
          "nixfleet_machines_stale 0",
          "nixfleet_agent_sessions 3",
          "nixfleet_rpc_requests_total",
          "nixfleet_rpc_duration_seconds",
          "nixfleet_rollouts_active 0",
          'nixfleet_rollouts_total{status="completed"}',
          "nixfleet_push_latency_seconds_count",
        ]) {
          assert.ok(text.includes(name), `control-plane metric ${name} missing`);
        }
        assert.doesNotMatch(text, /machine_id="/, "no machine ids in labels");
      }),
  );
});
