/**
 * The systemd tier's machine itself: a container boots a real systemd, keeps exactly its state
 * dir across a clean poweroff and a power cut, and boots like NixOS — the boot loader's default
 * generation runs after a reboot, and the closures' switch-to-configuration verbs `test`, `boot`,
 * `switch` and `dry-activate` do what NixOS's do.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { NixosMachine, TEST_DIR } from "../fixtures/nixos-machine.js";
import { tempDir } from "../fixtures/tmp.js";
import { tier } from "./tier.js";

// The two tests boot machines of their own (own state dirs, containers and closures): they run
// side by side, which halves the file's time and lets the tier's next file start sooner.
describe("systemd tier: the container machine", { ...tier, concurrency: true }, () => {
  it("keeps its state dir, and only that, across a poweroff and a power cut", async (t) => {
    const machine = new NixosMachine({ name: "m-state", stateDir: tempDir(t, "nixfleet-systemd-") });
    await machine.start(t);
    const c = machine.container;
    assert.match(await c.sh("systemctl is-system-running"), /^(running|degraded)\n$/);
    await c.sh(`echo kept > ${TEST_DIR}/kept && echo lost > /root/lost`);
    await c.run(["systemd-run", "--unit=long-job", "--collect", "sleep", "100000"]);
    assert.equal(await machine.isActive("long-job.service"), "active");

    await c.poweroff();
    assert.equal(c.running, false);
    await c.boot();
    assert.equal(await c.sh(`cat ${TEST_DIR}/kept`), "kept\n");
    assert.notEqual((await c.exec(["cat", "/root/lost"])).code, 0, "the root file system is a fresh tmpfs");
    assert.equal(await machine.isActive("long-job.service"), "inactive");

    await c.run(["systemd-run", "--unit=long-job", "--collect", "sleep", "100000"]);
    await c.powerCut();
    assert.equal(c.running, false);
    assert.equal(existsSync(join(machine.dirs.test, "kept")), true);
    await c.boot();
    assert.equal(await machine.isActive("long-job.service"), "inactive", "a power cut ends every process");
    assert.equal(c.boots, 3);
  });

  it("boots the boot loader's default; test, boot, switch and dry-activate act the NixOS way", async (t) => {
    const machine = new NixosMachine({ name: "m-boot", stateDir: tempDir(t, "nixfleet-systemd-") });
    const systems = await machine.buildSystems([{ label: "base" }, { label: "v2" }, { label: "v3" }]);
    const [base, v2, v3] = [systems["base"]!.path, systems["v2"]!.path, systems["v3"]!.path];
    await machine.install(base);
    await machine.start(t);
    const c = machine.container;
    const stc = (path: string, verb: string) => c.run([`${path}/bin/switch-to-configuration`, verb]);
    assert.equal(await machine.currentSystem(), base, "stage 2 ran the boot loader's default");

    await stc(v2, "test");
    assert.equal(await machine.currentSystem(), v2, "test activates");
    assert.equal(machine.bootDefault(), base, "test leaves the boot loader alone");
    await c.poweroff();
    await c.boot();
    assert.equal(await machine.currentSystem(), base, "after a reboot, a generation only tested is gone");

    await stc(v3, "boot");
    assert.equal(await machine.currentSystem(), base, "boot does not activate");
    assert.equal(machine.bootDefault(), v3, "boot makes it the boot default");
    await c.powerCut();
    await c.boot();
    assert.equal(await machine.currentSystem(), v3, "the next boot, even after a power cut, runs it");

    await stc(v2, "dry-activate");
    assert.deepEqual(
      [await machine.currentSystem(), machine.bootDefault()],
      [v3, v3],
      "dry-activate changes nothing",
    );
    await stc(v2, "switch");
    assert.deepEqual(
      [await machine.currentSystem(), machine.bootDefault()],
      [v2, v2],
      "switch = boot + test",
    );
    const bad = await c.exec([`${v3}/bin/switch-to-configuration`, "bogus"]);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /Usage/);
    // The switch log shows the real order: the boot loader is installed before activation.
    const switchEvents = machine.switchLog().filter((e) => e.path === v2 && /switch/.test(e.detail));
    assert.deepEqual(
      switchEvents.map((e) => e.event),
      ["start", "boot", "flipped"],
    );
  });
});
