/**
 * The SQLite store checkpoints its WAL on a timer a second after a write, not inside the COMMIT:
 * SQLite's automatic checkpoint copies the pages of a large transaction (a 10,000-machine batch
 * start) into the database file as part of its commit, and a push waits for that commit.
 */
import assert from "node:assert/strict";
import { statSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { SqliteFleetStore } from "../../src/control-plane/store/sqlite-store.js";
import { tempDir } from "../fixtures/tmp.js";
import { storePath } from "./helpers.js";

describe("SQLite WAL checkpoints", () => {
  it("a commit far past SQLite's auto-checkpoint size leaves the database file alone; a checkpoint follows", async (t) => {
    const file = join(tempDir(t), "state.db");
    const { store } = await SqliteFleetStore.open({ path: file });
    t.after(() => store.close());
    const before = statSync(file).size;
    // Well over 1000 pages (SQLite's default auto-checkpoint threshold) in one transaction.
    const hosts = Array.from({ length: 30_000 }, (_, i) => `host-${String(i).padStart(6, "0")}`);
    await store.createRelease(
      {
        id: "rel-big",
        entries: hosts.map((hostname) => ({
          hostname,
          storePath: storePath(hostname, 1),
          platform: "x86_64-linux",
          tags: ["a-fairly-long-tag-to-fill-pages"],
        })),
        cacheUrl: "",
        flakeRef: "test",
        flakeRev: "",
      },
      "x",
      1,
    );
    assert.ok(statSync(`${file}-wal`).size > 1000 * 4096, "the transaction is past the threshold");
    assert.equal(statSync(file).size, before, "the commit did not copy its pages into the database file");
    // The deferred checkpoint copies them (polled, no timing asserted).
    for (let i = 0; i < 500 && statSync(file).size === before; i++) await sleep(20);
    assert.ok(statSync(file).size > before, "the pages reached the database file after the commit");
    assert.equal((await store.getRelease("rel-big"))?.entries.length, hosts.length);
  });
});
