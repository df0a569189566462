/**
 * Reading the host: current-system and profile links, switch scripts, and the switch lock held
 * by a real other process (flock), as a manual nixos-rebuild would hold it.
 */
import assert from "node:assert/strict";
import { chmodSync, mkdirSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import {
  checkSwitchLock,
  describeLock,
  profileGeneration,
  profileGenerationPath,
  readSystemLink,
  switchScriptProblem,
} from "../../src/agent/host.js";
import { createHost } from "../fixtures/host.js";
import { tempDir } from "../fixtures/tmp.js";

const A = "/nix/store/0c8vxs2ja1k5f5v0r4zm0h4y3hs7a0fj-nixos-system-web-01-a";
const B = "/nix/store/1c8vxs2ja1k5f5v0r4zm0h4y3hs7a0fj-nixos-system-web-01-b";

describe("host links", () => {
  it("reads current-system and profile links down to the store path, never inside it", (t) => {
    const dir = tempDir(t);
    symlinkSync(A, join(dir, "current-system"));
    assert.equal(readSystemLink(join(dir, "current-system")), A);
    symlinkSync(A, join(dir, "system-1-link"));
    symlinkSync(B, join(dir, "system-2-link"));
    symlinkSync("system-2-link", join(dir, "system"));
    assert.equal(readSystemLink(join(dir, "system")), B);
    assert.equal(profileGeneration(join(dir, "system")), 2);
    assert.equal(profileGenerationPath(join(dir, "system"), 1), A);
    assert.equal(profileGenerationPath(join(dir, "system"), 9), null);
    assert.equal(readSystemLink(join(dir, "missing")), null);
    assert.equal(profileGeneration(join(dir, "missing")), null);
    writeFileSync(join(dir, "plain"), "x");
    assert.equal(readSystemLink(join(dir, "plain")), null, "a regular file is not a system link");
  });

  it("checks that a closure can be switched to", (t) => {
    const dir = tempDir(t);
    assert.match(switchScriptProblem(dir) ?? "", /does not exist/);
    mkdirSync(join(dir, "bin"));
    writeFileSync(join(dir, "bin", "switch-to-configuration"), "#!/bin/sh\n");
    chmodSync(join(dir, "bin", "switch-to-configuration"), 0o644);
    if (process.getuid?.() !== 0) {
      assert.match(switchScriptProblem(dir) ?? "", /not executable/);
    }
    chmodSync(join(dir, "bin", "switch-to-configuration"), 0o755);
    assert.equal(switchScriptProblem(dir), undefined);
  });
});

describe("switch lock", () => {
  it("is free when the file does not exist or nobody holds it", async (t) => {
    const dir = tempDir(t);
    const lock = join(dir, "switch-to-configuration.lock");
    assert.deepEqual(await checkSwitchLock(lock), { held: false });
    writeFileSync(lock, "");
    assert.deepEqual(await checkSwitchLock(lock), { held: false });
  });

  it("judges a free lock from /proc/locks, without running flock", async (t) => {
    const host = createHost(join(tempDir(t), "host"));
    t.after(() => host.cleanup());
    const holder = await host.holdSwitchLock();
    await holder.release();
    // No flock on PATH: a check that needed the program would throw "could not be started".
    const path = process.env.PATH;
    process.env.PATH = tempDir(t);
    t.after(() => {
      process.env.PATH = path;
    });
    assert.deepEqual(await checkSwitchLock(host.paths.switchLock), { held: false });
  });

  it("sees a lock held by another process, names the holder, and sees it released", async (t) => {
    const host = createHost(join(tempDir(t), "host"));
    t.after(() => host.cleanup());
    const holder = await host.holdSwitchLock();
    const state = await checkSwitchLock(host.paths.switchLock);
    assert.equal(state.held, true);
    assert.ok(state.held && state.holder, "the holder is found in /proc/locks");
    if (state.held && state.holder) {
      assert.equal(state.holder.pid, holder.pid);
      assert.match(state.holder.command ?? "", /^flock /);
    }
    assert.match(describeLock(host.paths.switchLock, state), /is held by pid \d+/);
    // Checking does not take the lock away from its holder: still held on a second look.
    assert.equal((await checkSwitchLock(host.paths.switchLock)).held, true);
    await holder.release();
    assert.deepEqual(await checkSwitchLock(host.paths.switchLock), { held: false });
  });
});
