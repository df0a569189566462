/**
 * Activation in `direct` mode, for real: test closures' switch-to-configuration run detached,
 * their exit status captured in a file, found again by a different process after the starter
 * was killed, stopped (whole process group) on timeout, and told apart from a switch that
 * vanished without a status (reboot).
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { type ActivationHandle, type ActivationStatus, DirectActivator } from "../../src/agent/activation.js";
import { createHost, type TestHost, waitFor } from "../fixtures/host.js";
import type { SystemClosure } from "../fixtures/nix.js";
import { makeTempDir, removeTempDir } from "../fixtures/tmp.js";

const REPO = join(import.meta.dirname, "../..");

async function settle(
  activator: DirectActivator,
  handle: ActivationHandle,
  what: string,
): Promise<ActivationStatus> {
  return waitFor(what, async () => {
    const s = await activator.status(handle);
    return s.state === "running" ? undefined : s;
  });
}

describe("direct activation (real processes)", () => {
  const dir = makeTempDir("nixfleet-activation-");
  let host: TestHost;
  let systems: Record<string, SystemClosure>;
  let activator: DirectActivator;

  before(async () => {
    host = createHost(join(dir, "host"), "act-01");
    systems = await host.buildSystems([
      { label: "gen1" },
      { label: "ok" },
      { label: "slow", delaySeconds: 2 },
      { label: "fail", switch: "fail", exitCode: 3 },
      { label: "exit4", switch: "exit4" },
      { label: "hang", switch: "hang" },
      { label: "stuck", switch: "hang", ignoreTerm: true },
      { label: "gated", gate: true },
      { label: "gated-fail", gate: true, switch: "fail" },
      { label: "gated-vanish", gate: true },
    ]);
    await host.install(systems["gen1"]!.path);
    activator = new DirectActivator(join(dir, "activations"));
  });

  after(async () => {
    await host.cleanup();
    removeTempDir(dir);
  });

  it("runs the closure's own switch-to-configuration and records exit 0", async () => {
    const path = systems["ok"]!.path;
    const handle = await activator.start(activator.plan({ deploymentId: "d-ok", role: "switch", path }));
    assert.ok(handle.pid && handle.pid > 0);
    assert.deepEqual(await settle(activator, handle, "switch to end"), { state: "exited", code: 0 });
    assert.equal(host.current(), path);
    assert.equal(readFileSync(handle.statusFile, "utf8"), "0\n");
    assert.match(await activator.outputTail(handle), /activating the configuration ok \(switch\)/);
    const ran = host.switchLog().filter((e) => e.event === "start");
    assert.equal(ran.at(-1)?.path, path, "the script of exactly that closure ran");
  });

  it("reports a switch that takes its time as running until it ends", async () => {
    const handle = await activator.start(
      activator.plan({ deploymentId: "d-slow", role: "switch", path: systems["slow"]!.path }),
    );
    assert.deepEqual(await activator.status(handle), { state: "running" });
    assert.deepEqual(await settle(activator, handle, "slow switch"), { state: "exited", code: 0 });
    assert.equal(host.current(), systems["slow"]!.path);
  });

  it("records non-zero exit codes, including 4, with the switch's stderr", async () => {
    const fail = await activator.start(
      activator.plan({ deploymentId: "d-fail", role: "switch", path: systems["fail"]!.path }),
    );
    assert.deepEqual(await settle(activator, fail, "failing switch"), { state: "exited", code: 3 });
    assert.match(await activator.outputTail(fail), /error: activation of fail failed \(exit 3\)/);
    const four = await activator.start(
      activator.plan({ deploymentId: "d-4", role: "switch", path: systems["exit4"]!.path }),
    );
    assert.deepEqual(await settle(activator, four, "exit-4 switch"), { state: "exited", code: 4 });
  });

  it("plans deterministic names and clears a stale status file when starting", async () => {
    const request = { deploymentId: "d-plan", role: "rollback-1", path: systems["ok"]!.path };
    const a = activator.plan(request);
    const b = activator.plan(request);
    assert.equal(a.statusFile, b.statusFile);
    assert.equal(a.logFile, b.logFile);
    assert.match(a.statusFile, /d-plan-rollback-1\.status$/);
    const first = await activator.start(a);
    await settle(activator, first, "first run");
    // Starting the same plan again must not read the old run's status as its own.
    const gated = activator.plan({
      deploymentId: "d-plan",
      role: "rollback-1",
      path: systems["gated"]!.path,
    });
    const second = await activator.start(gated);
    assert.deepEqual(await activator.status(second), { state: "running" });
    host.releaseGate("gated");
    assert.deepEqual(await settle(activator, second, "gated run"), { state: "exited", code: 0 });
  });

  it("the switch outlives the process that started it, and its outcome is learnable afterwards", async () => {
    {
      const label = "gated-fail";
      const expected = 1;
      const starter = spawn(
        process.execPath,
        [
          "--import",
          "tsx",
          join(REPO, "test/agent/harness/start-activation.ts"),
          join(dir, "activations"),
          `d-${label}`,
          systems[label]!.path,
        ],
        { cwd: REPO, stdio: ["ignore", "pipe", "inherit"] },
      );
      const [line] = (await once(starter.stdout!, "data")) as [Buffer];
      const handle = JSON.parse(line.toString().trim()) as ActivationHandle;
      starter.kill("SIGKILL");
      await once(starter, "exit");
      // The starter is gone; the switch (its own session and process group) still runs.
      assert.deepEqual(await activator.status(handle), { state: "running" });
      host.releaseGate(label);
      assert.deepEqual(await settle(activator, handle, "orphaned switch"), {
        state: "exited",
        code: expected,
      });
    }
  });

  it("tells a switch that vanished without a status (killed, rebooted) from one that ended", async () => {
    const handle = await activator.start(
      activator.plan({ deploymentId: "d-vanish", role: "switch", path: systems["gated-vanish"]!.path }),
    );
    assert.deepEqual(await activator.status(handle), { state: "running" });
    process.kill(-handle.pid!, "SIGKILL");
    assert.deepEqual(await settle(activator, handle, "killed switch"), { state: "vanished" });
    assert.equal(existsSync(handle.statusFile), false);
    // A handle recorded before the pid was known is still found by its status file.
    const { pid: _pid, ...withoutPid } = handle;
    assert.deepEqual(await activator.status(withoutPid), { state: "vanished" });
  });

  it("stop() kills a hanging switch's whole process group, escalating to SIGKILL if it ignores SIGTERM", async () => {
    const handle = await activator.start(
      activator.plan({ deploymentId: "d-hang", role: "switch", path: systems["hang"]!.path }),
    );
    await waitFor("the hanging switch to flip the link", () =>
      host.switchLog().some((e) => e.event === "hang"),
    );
    assert.deepEqual(await activator.status(handle), { state: "running" });
    await activator.stop(handle);
    // SIGTERM to the group: the switch dies, the wrapper records how (128 + 15).
    assert.deepEqual(await activator.status(handle), { state: "exited", code: 143 });
    const leftovers = host.strayProcesses().filter((pid) => {
      try {
        return readFileSync(`/proc/${pid}/cmdline`, "utf8").includes("d-hang");
      } catch {
        return false; // exited while we looked
      }
    });
    assert.deepEqual(leftovers, []);
    // One that ignores SIGTERM is SIGKILLed: no status, nothing left.
    const stuck = await activator.start(
      activator.plan({ deploymentId: "d-stuck", role: "switch", path: systems["stuck"]!.path }),
    );
    await waitFor("the stuck switch to hang", () =>
      host.switchLog().some((e) => e.event === "hang" && e.label === "stuck"),
    );
    await activator.stop(stuck);
    assert.deepEqual(await activator.status(stuck), { state: "vanished" });
    // The killed switches released the switch lock: another switch can run.
    const next = await activator.start(
      activator.plan({ deploymentId: "d-after-hang", role: "switch", path: systems["ok"]!.path }),
    );
    assert.deepEqual(await settle(activator, next, "switch after the killed one"), {
      state: "exited",
      code: 0,
    });
  });
});
