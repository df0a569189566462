/**
 * The watch on a switch's status file: a wait ends when the wrapper writes the file, not at the
 * fallback timer (the timers here are an hour: a missed wake-up fails the test by timing out),
 * a write that lands between two waits is not lost, and without a directory to watch the timer
 * alone still ends the wait.
 */
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { watchFile } from "../../src/agent/switch-watch.js";
import { Parked } from "../../src/agent/wait.js";
import { tempDir } from "../fixtures/tmp.js";

const HOUR = 3_600_000;

describe("switch status watch", () => {
  it("wakes a wait when the status file is written", async (t) => {
    const file = join(tempDir(t), "dep-switch.status");
    const watch = watchFile(file);
    t.after(() => watch.close());
    const waiting = watch.changed(HOUR, new AbortController().signal, "switching");
    setTimeout(() => writeFileSync(file, "0\n"), 20);
    await waiting;
  });

  it("keeps a write that happened while nobody waited for the next wait", async (t) => {
    const file = join(tempDir(t), "dep-switch.status");
    const watch = watchFile(file);
    t.after(() => watch.close());
    writeFileSync(file, "0\n");
    // Let the inotify event arrive before anyone waits.
    await new Promise((r) => setTimeout(r, 100));
    await watch.changed(HOUR, new AbortController().signal, "switching");
  });

  it("ignores other files in the directory", async (t) => {
    const dir = tempDir(t);
    const watch = watchFile(join(dir, "a.status"));
    t.after(() => watch.close());
    const woke = await Promise.race([
      watch.changed(300, new AbortController().signal, "switching").then(() => "timer-or-change"),
      new Promise((r) => setTimeout(() => r("other"), 0)).then(() => {
        writeFileSync(join(dir, "b.status"), "0\n");
        return new Promise((r) => setTimeout(() => r("still waiting"), 100));
      }),
    ]);
    assert.equal(woke, "still waiting");
  });

  it("falls back to the timer when there is nothing to watch", async (t) => {
    const watch = watchFile(join(tempDir(t), "missing-dir", "x.status"));
    t.after(() => watch.close());
    await watch.changed(10, new AbortController().signal, "switching");
  });

  it("parks a wait when the agent stops", async (t) => {
    const watch = watchFile(join(tempDir(t), "x.status"));
    t.after(() => watch.close());
    const stop = new AbortController();
    const waiting = watch.changed(HOUR, stop.signal, "switching");
    stop.abort();
    await assert.rejects(waiting, Parked);
  });
});
