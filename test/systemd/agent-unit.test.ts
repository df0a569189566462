/**
 * The agent as a real systemd unit — the one the NixOS module renders — on a container machine,
 * deploying from a control plane on the host. The switch runs through `systemd-run` as a
 * transient unit, so it survives `systemctl restart nixfleet-agent` and
 * `systemctl kill -s KILL nixfleet-agent` (systemd restarts the agent: Restart=always), and the
 * restarted agent completes the deployment exactly once.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { AGENT_UNIT, AgentMachine } from "../fixtures/agent-machine.js";
import { Fleet, waitFor } from "../fixtures/fleet.js";
import { makeTempDir, removeTempDir } from "../fixtures/tmp.js";
import { tier } from "./tier.js";

describe("systemd tier: the agent unit", tier, () => {
  const dir = makeTempDir("nixfleet-systemd-agent-");
  const cleanups: Array<() => Promise<void>> = [];
  let fleet: Fleet;
  let am: AgentMachine;

  before(async () => {
    fleet = await Fleet.create({ dir, hosts: [] });
    am = await AgentMachine.start(
      fleet,
      { after: (fn) => cleanups.push(fn) },
      {
        name: "sd-01",
        tags: ["systemd"],
        stateDir: join(dir, "sd-01"),
        systems: [
          { label: "v2", gate: true },
          { label: "v3", gate: true },
        ],
      },
    );
  });

  after(async () => {
    for (const fn of cleanups.reverse()) await fn();
    await fleet?.close();
    removeTempDir(dir);
  });

  it("runs the module's unit: started by systemctl, Restart=always, reload by SIGHUP, and registers", () =>
    am.explain(async () => {
      const m = am.machine;
      assert.equal(await m.isActive(AGENT_UNIT), "active");
      const show = await m.systemctl("show", "-p", "Restart,KillMode,Type,ExecReload", AGENT_UNIT);
      assert.match(show, /^Restart=always$/m);
      assert.match(
        show,
        /^KillMode=mixed$/m,
        "activation = systemd-run: SIGTERM to the agent alone, its children die after it",
      );
      assert.match(show, /path=\/usr\/bin\/kill ; argv\[\]=\/usr\/bin\/kill -HUP \$MAINPID/);
      const started = await m.waitForLog(AGENT_UNIT, (l) => l["event"] === "agent_started", "agent_started");
      assert.equal(started["machineId"], "sd-01");
      assert.equal(started["activation"], "systemd-run");
      const machine = await waitFor(
        "sd-01 to register with the control plane",
        async () => {
          const s = await am.machineStatus();
          return s?.connected ? s : undefined;
        },
        60_000,
        250,
      );
      assert.equal(machine.currentGeneration, am.path("base"));
    }));

  // `restart` runs three times: with the module's old KillMode=control-group, systemd SIGTERMed
  // the agent's in-flight `systemctl is-active nixfleet-switch-…` too, the agent read its death
  // as a vanished switch and rolled back — nearly every time. KillMode=mixed fixed it.
  for (const [label, interrupt, how, times] of [
    ["v2", "restart", ["restart", AGENT_UNIT], 3],
    ["v3", "kill -s KILL", ["kill", "-s", "KILL", AGENT_UNIT], 1],
  ] as const) {
    it(`runs the switch as a transient unit that survives \`systemctl ${interrupt} nixfleet-agent\``, () =>
      am.explain(async () => {
        const m = am.machine;
        const target = am.path(label);
        const pidBefore = await am.mainPid();
        // revert: should this test fail, its rollout ends instead of pausing and holding the machine.
        const deploying = am.deploy(label, "90s", "revert");
        await waitFor(`${label}'s switch to start`, () => m.activations(target).length > 0, 90_000);
        const [unit] = await waitFor("the transient switch unit", async () => {
          const units = await am.switchUnits();
          return units.length > 0 ? units : undefined;
        });
        assert.equal(await m.isActive(unit!), "active");

        let pid = pidBefore;
        for (let i = 0; i < times; i++) {
          const before = pid;
          await m.systemctl(...how);
          // systemd brings the agent back (Restart=always); the switch never stopped.
          pid = await waitFor(
            "systemd to restart the agent",
            async () => {
              const p = await am.mainPid();
              return p !== 0 && p !== before ? p : undefined;
            },
            60_000,
            250,
          );
          assert.equal(await m.isActive(unit!), "active", `the switch outlived the agent (${i + 1}×)`);
        }

        m.releaseGate(label);
        const r = await deploying;
        assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
        assert.equal(await m.currentSystem(), target);
        assert.equal(m.profile(), target);
        assert.equal(m.bootDefault(), target);
        const starts = m.activations(target);
        assert.equal(starts.length, 1, "the restarted agent did not switch a second time");
        assert.equal(await m.isActive(AGENT_UNIT), "active");
        assert.deepEqual(await am.switchUnits(), [], "--collect: the finished switch unit is gone");
      }));
  }
});
