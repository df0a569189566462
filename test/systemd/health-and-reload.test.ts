/**
 * The agent's systemd health checks against real units of a real systemd — active, failed,
 * flapping (crash-looping, caught in auto-restart), and a unit that does not exist — and the
 * built-in check on a `degraded` system; then `systemctl reload nixfleet-agent` in the middle of
 * a deployment, as switch-to-configuration does when a generation changes the agent
 * (reloadIfChanged): the agent parks, exits cleanly, systemd starts it on the new unit and
 * configuration, and the deployment completes exactly once.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { HealthState } from "../../src/gen/nixfleet/v1/fleet_pb.js";
import { AGENT_UNIT, AgentMachine } from "../fixtures/agent-machine.js";
import { Fleet, waitFor } from "../fixtures/fleet.js";
import { makeTempDir, removeTempDir } from "../fixtures/tmp.js";
import { tier } from "./tier.js";

const UNITS: Record<string, string> = {
  "app-ok.service": "[Service]\nExecStart=/bin/sleep infinity\n",
  "app-failed.service": "[Service]\nType=oneshot\nExecStart=/bin/false\n",
  // A crash loop: it spends its life in auto-restart, which `is-active` reports as "activating".
  "app-flapping.service": "[Service]\nExecStart=/bin/false\nRestart=always\nRestartSec=1h\n",
};
const CHECKED = [...Object.keys(UNITS), "app-missing.service"];

describe("systemd tier: health checks on real units, and systemctl reload", tier, () => {
  const dir = makeTempDir("nixfleet-systemd-health-");
  const cleanups: Array<() => Promise<void>> = [];
  let fleet: Fleet;
  let am: AgentMachine;

  const machineStatus = () => am.machineStatus();

  before(async () => {
    fleet = await Fleet.create({ dir, hosts: [] });
    am = await AgentMachine.start(
      fleet,
      { after: (fn) => cleanups.push(fn) },
      {
        name: "sd-health",
        tags: ["health"],
        stateDir: join(dir, "sd-health"),
        systems: [{ label: "v2", gate: true }],
        units: UNITS,
        settings: {
          healthChecks: { systemd: CHECKED.map((u) => ({ units: [u], timeout: 5, interval: 1 })) },
        },
      },
    );
    // Started after the agent: the health test waits for a report that saw them.
    await am.machine.container.exec(["systemctl", "start", ...Object.keys(UNITS)]);
  });

  after(async () => {
    for (const fn of cleanups.reverse()) await fn();
    await fleet?.close();
    removeTempDir(dir);
  });

  it("reports failed, flapping and missing units as failing, and an active one as passing", () =>
    am.explain(async () => {
      const m = am.machine;
      assert.equal(await m.isActive("app-ok.service"), "active");
      assert.equal(await m.isActive("app-failed.service"), "failed");
      assert.equal(await m.isActive("app-flapping.service"), "activating");
      assert.equal(await m.isActive("app-missing.service"), "inactive");
      // Reports made before the units were started may differ; one after must be exactly this.
      const expected = ["app-failed.service", "app-flapping.service", "app-missing.service"];
      const status = await waitFor(
        `a health report failing exactly ${expected.join(", ")}`,
        async () => {
          const s = await machineStatus();
          const failing = [...(s?.health?.failingChecks ?? [])].sort();
          return JSON.stringify(failing) === JSON.stringify(expected) ? s : undefined;
        },
        60_000,
        250,
      );
      assert.equal(status.health!.state, HealthState.UNHEALTHY);
    }));

  it("`systemctl reload` mid-deployment: the agent parks, restarts on the new config, and finishes the deployment once", () =>
    am.explain(async () => {
      const m = am.machine;
      const v2 = am.path("v2");
      // No checks at all: the built-in check, `is-system-running` running or degraded.
      await am.configure({ healthChecks: {} });
      const pidBefore = await am.mainPid();
      const deploying = am.deploy("v2");
      await waitFor("v2's switch to start", () => m.activations(v2).length > 0, 90_000);
      await m.systemctl("reload", AGENT_UNIT);
      const pidAfter = await waitFor(
        "systemd to start the agent again",
        async () => {
          const pid = await am.mainPid();
          return pid !== 0 && pid !== pidBefore ? pid : undefined;
        },
        60_000,
        250,
      );
      const cmdline = await m.container.run(["cat", `/proc/${pidAfter}/cmdline`]);
      assert.match(cmdline.replace(/\0/g, " "), /--config \/var\/lib\/nixfleet-test\/agent-2\.json/);
      const log = await am.log();
      const hup = log.findIndex((l) => l["event"] === "signal" && l["signal"] === "SIGHUP");
      assert.ok(hup >= 0, "the reload reached the agent as SIGHUP");
      assert.ok(
        log.slice(hup).some((l) => l["event"] === "stopped"),
        "the agent stopped cleanly (not killed)",
      );
      const restarted = await m.waitForLog(
        AGENT_UNIT,
        (l) => l["event"] === "agent_started" && !(l["checks"] as string[]).some((c) => c.includes("app-")),
        "agent_started on the new configuration",
      );
      assert.deepEqual(restarted["checks"], ["systemd:systemd-system"]);

      m.releaseGate("v2");
      const r = await deploying;
      assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
      assert.deepEqual([await m.currentSystem(), m.profile(), m.bootDefault()], [v2, v2, v2]);
      assert.equal(m.activations(v2).length, 1);

      // The system is degraded (app-failed), which the built-in check accepts.
      assert.equal((await m.container.exec(["systemctl", "is-system-running"])).stdout.trim(), "degraded");
      await waitFor(
        "a healthy report from the built-in check",
        async () => {
          const s = await machineStatus();
          return s?.health?.state === HealthState.HEALTHY && s.health?.generation === v2 ? s : undefined;
        },
        60_000,
        250,
      );
    }));
});
