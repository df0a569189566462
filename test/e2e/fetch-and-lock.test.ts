/**
 * End-to-end, scenarios 6 and 12: a closure missing from the cache, a bad signature and a cache
 * that is down each give FETCH_FAILED with the host untouched and a retry every retryInterval,
 * then a deploy once the cause is fixed; a switch lock held by someone else (a manual
 * nixos-rebuild) makes the agent wait instead of stacking a second switch.
 */
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { after, before, describe, it } from "node:test";
import { Outcome } from "../../src/gen/nixfleet/v1/types_pb.js";
import type { CacheServer } from "../fixtures/cache.js";
import { Fleet, waitFor } from "../fixtures/fleet.js";
import { makeTempDir, removeTempDir } from "../fixtures/tmp.js";

describe("e2e: fetch failures and a held switch lock", () => {
  const dir = makeTempDir("nixfleet-e2e-fetch-");
  let fleet: Fleet;
  let secondServer: CacheServer;
  const machine = async (name: string) => (await fleet.status()).machines.find((m) => m.machineId === name)!;

  before(async () => {
    fleet = await Fleet.create({
      dir,
      hosts: ["missing-01", "badsig-01", "down-01", "lock-01"].map((name) => ({ name, tags: ["e2e"] })),
      systems: [{ label: "v2" }],
      agentConfig: { retryInterval: 1 },
    });
    // down-01 fetches from its own server (same files), which this test takes down.
    secondServer = await fleet.cache.serve();
    fleet.startAgents();
    await waitFor(
      "four connected machines",
      async () => (await fleet.status()).machines.filter((m) => m.connected).length === 4,
      60_000,
    );
  });

  after(async () => {
    await secondServer?.stop();
    await fleet?.close();
    removeTempDir(dir);
  });

  /** Waits for FETCH_FAILED on `name`, checks nothing changed on the host, returns the message. */
  async function fetchFails(name: string, why: RegExp): Promise<void> {
    const h = fleet.host(name);
    const base = h.systems["base"]!.path;
    const m = await waitFor(
      `${name} to report FETCH_FAILED`,
      async () => {
        const x = await machine(name);
        return x.lastOutcome === Outcome.FETCH_FAILED ? x : undefined;
      },
      60_000,
      250,
    );
    assert.match(m.lastMessage, why, `${name}'s reason`);
    assert.equal(h.host.current(), base, `${name}: the running system was not touched`);
    assert.equal(h.host.profile(), base, `${name}: the profile was not touched`);
    assert.deepEqual(h.host.switchLog(), [], `${name}: no switch ran`);
  }

  async function deploysAfterFix(name: string): Promise<void> {
    const v2 = fleet.host(name).systems["v2"]!.path;
    await waitFor(
      `${name} to deploy once fixed`,
      async () => {
        const x = await machine(name);
        // DEPLOYED, or UP_TO_DATE once re-confirmed on a later check.
        return [Outcome.DEPLOYED, Outcome.UP_TO_DATE].includes(x.lastOutcome) && x.currentGeneration === v2;
      },
      60_000,
      250,
    );
    assert.equal(fleet.host(name).host.current(), v2);
    assert.equal(fleet.journal(name).at(-1)?.outcome, "DEPLOYED");
  }

  it(
    "scenario 6a: a path missing from the cache fails to fetch, is retried, and deploys once pushed",
    { timeout: 180_000 },
    () =>
      fleet.explain(async () => {
        const v2 = fleet.host("missing-01").systems["v2"]!.path;
        const narinfo = new RegExp(`${v2.slice(11, 43)}\\.narinfo$`);
        fleet.cache.hide(v2);
        await fleet.cliOk(["machines", "set-desired", "missing-01", v2, "--cache-url", fleet.cacheUrl]);
        await fetchFails("missing-01", /not in|does not have|not found|missing|no such/i);
        const asked = fleet.cacheServer.count(narinfo);
        await waitFor(
          "another attempt after retryInterval",
          () => fleet.cacheServer.count(narinfo) > asked,
          30_000,
        );
        fleet.cache.unhide(v2);
        await deploysAfterFix("missing-01");
      }),
  );

  it(
    "scenario 6b: a closure whose signature does not verify is refused, and deploys once re-signed",
    { timeout: 180_000 },
    () =>
      fleet.explain(async () => {
        const v2 = fleet.host("badsig-01").systems["v2"]!.path;
        const file = fleet.cache.narinfoFile(v2);
        const good = readFileSync(file);
        fleet.cache.corruptSignature(v2);
        await fleet.cliOk(["machines", "set-desired", "badsig-01", v2, "--cache-url", fleet.cacheUrl]);
        await fetchFails("badsig-01", /signature|signed|trusted/i);
        writeFileSync(file, good);
        await deploysAfterFix("badsig-01");
      }),
  );

  it(
    "scenario 6c: a cache that is down fails the fetch without touching the host, and deploys once it is back",
    { timeout: 180_000 },
    () =>
      fleet.explain(async () => {
        const v2 = fleet.host("down-01").systems["v2"]!.path;
        await secondServer.stop();
        await fleet.cliOk(["machines", "set-desired", "down-01", v2, "--cache-url", secondServer.url]);
        await fetchFails("down-01", /unreachable|connect|refused|unable to download|cannot|couldn't/i);
        await secondServer.start();
        await deploysAfterFix("down-01");
      }),
  );

  it(
    "scenario 12: a switch lock held by another process makes the agent wait, not stack a second switch",
    { timeout: 180_000 },
    () =>
      fleet.explain(async () => {
        const h = fleet.host("lock-01");
        const v2 = h.systems["v2"]!.path;
        const lock = await h.host.holdSwitchLock();
        try {
          await fleet.cliOk(["machines", "set-desired", "lock-01", v2, "--cache-url", fleet.cacheUrl]);
          const m = await waitFor(
            "lock-01 to report SWITCH_LOCKED",
            async () => {
              const x = await machine("lock-01");
              return x.lastOutcome === Outcome.SWITCH_LOCKED ? x : undefined;
            },
            60_000,
            250,
          );
          assert.match(m.lastMessage, new RegExp(String(lock.pid)), "names the process holding the lock");
          assert.deepEqual(h.host.switchLog(), [], "no switch was started while the lock is held");
          assert.equal(h.host.current(), h.systems["base"]!.path);
          // It keeps waiting (retrying) rather than giving up or forcing its way in.
          const attempts = fleet.journal("lock-01").length;
          await waitFor("another attempt", () => fleet.journal("lock-01").length > attempts, 30_000);
          assert.deepEqual(h.host.switchLog(), []);
        } finally {
          await lock.release();
        }
        await deploysAfterFix("lock-01");
        assert.equal(
          h.host.switchLog().filter((e) => e.event === "start").length,
          1,
          "exactly one switch, after the lock was released",
        );
      }),
  );
});
